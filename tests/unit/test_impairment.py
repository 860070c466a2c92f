"""Impairments as a config, the CLI and the programs' map see them: pure, no root."""

from __future__ import annotations

from typing import Any

import pytest

from cni_yogurt.cli import _parser
from cni_yogurt.cni import netconf
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.version import SUPPORTED_VERSIONS
from cni_yogurt.line.impairment import MIN_BURST_BYTES, Impairment, ImpairmentError


def test_parse_takes_percentages_and_a_rate_in_kbit() -> None:
    got = Impairment.parse({"loss": 10, "corruption": 0.5, "duplicate": 1, "rate": 100000})
    assert got == Impairment(loss=10.0, corruption=0.5, duplicate=1.0, rate=100000)
    assert got.spec() == "loss=10 corruption=0.5 duplicate=1 rate=100000"
    assert Impairment.from_spec(got.spec()) == got


def test_none_is_empty_and_false() -> None:
    assert Impairment.parse({}) == Impairment() and not Impairment()
    assert Impairment().spec() == "" and Impairment.from_spec("") == Impairment()
    assert Impairment.parse({"loss": 0, "rate": 0}).spec() == ""


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"loss": 101}, "loss"),
        ({"loss": -1}, "loss"),
        ({"corruption": "5"}, "corruption"),
        ({"duplicate": True}, "duplicate"),
        ({"rate": 1.5}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": 10**12}, "rate"),
        ({"delay": 10}, "delay"),
        ({"jitter": 2}, "jitter"),
        ({"reorder": 5}, "reorder"),
    ],
)
def test_parse_refuses_what_it_cannot_do_and_names_it(given: dict[str, Any], named: str) -> None:
    with pytest.raises(ImpairmentError, match=named):
        Impairment.parse(given)


def test_a_zero_delay_is_no_delay() -> None:
    assert Impairment.parse({"delay": 0, "loss": 1}) == Impairment(loss=1.0)


def test_thresholds_are_fractions_of_2_to_32_and_picoseconds_per_byte() -> None:
    loss, corrupt, duplicate, ps_per_byte, burst_ns = Impairment(
        loss=10, duplicate=100, rate=100_000
    ).thresholds()
    assert loss == round(0.1 * 2**32) and corrupt == 0
    assert duplicate == 2**32 - 1  # 100 %: every draw but one in 2^32
    assert ps_per_byte == 80_000  # 100 Mbit/s: 12.5 MB/s, 80 ns a byte
    assert burst_ns == 200_000_000  # 200 ms at the rate (2.5 MB, more than the floor)


def test_a_slow_rate_still_holds_two_large_packets() -> None:
    *_, ps_per_byte, burst_ns = Impairment(rate=1000).thresholds()  # 1 Mbit/s
    assert ps_per_byte == 8_000_000
    assert burst_ns * 1000 // ps_per_byte >= MIN_BURST_BYTES


def test_no_rate_means_no_bucket() -> None:
    assert Impairment(loss=1).thresholds()[3:] == (0, 0)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_config_and_args_cni_name_the_impairments(version: str) -> None:
    base = {"cniVersion": version, "name": "lab", "type": "yogurt"}
    conf = netconf.parse({**base, "impairments": {"loss": 5, "rate": 1000}})
    assert conf.impairment_spec() == "loss=5 rate=1000"
    # args.cni.impairments replaces the network's whole, as Multus passes a pod's cni-args.
    per_pod = netconf.parse(
        {**base, "impairments": {"loss": 5}, "args": {"cni": {"impairments": {"duplicate": 2}}}}
    )
    assert per_pod.impairment_spec() == "duplicate=2"
    assert netconf.parse(base).impairment_spec() == ""


@pytest.mark.parametrize(
    "extra",
    [
        {"impairments": {"loss": 200}},
        {"impairments": {"delay": 5}},
        {"args": {"cni": {"impairments": {"loss": "x"}}}},
        {"args": {"cni": {"impairments": []}}},
    ],
)
def test_bad_impairments_are_an_invalid_config(extra: dict[str, Any]) -> None:
    conf = netconf.parse({"cniVersion": "1.1.0", "name": "lab", "type": "yogurt", **extra})
    with pytest.raises(CNIError) as exc:
        conf.impairment_spec()
    assert exc.value.code == Code.INVALID_CONFIG and "impairments" in exc.value.msg


def test_impairments_not_an_object_fail_at_parse() -> None:
    with pytest.raises(CNIError) as exc:
        netconf.parse({"cniVersion": "1.1.0", "name": "lab", "type": "yogurt", "impairments": 5})
    assert exc.value.code == Code.INVALID_CONFIG


def test_the_cli_takes_containerlabs_netem_flags() -> None:
    args = _parser().parse_args(["impair", "set", "--line", "l1", "--loss", "10", "--rate", "100000"])
    assert (args.action, args.line, args.loss, args.rate, args.corruption) == (
        "set",
        "l1",
        10.0,
        100000,
        None,
    )
