"""The ADD result rendered for every supported version, and parsed back."""

from __future__ import annotations

import dataclasses
import json
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest

from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.result import DNS, Interface, IPConfig, Result, Route, parse_result
from cni_yogurt.cni.version import SUPPORTED_VERSIONS

LEGACY = ("0.3.0", "0.3.1", "0.4.0")  # results carry ips[].version
IFACE_1_1 = {"mtu", "socketPath", "pciID"}
ROUTE_1_1 = {"mtu", "advmss", "priority", "table", "scope"}


def full_result() -> Result:
    """Every field set, including the 1.1.0-only ones (scope 0 is a real value)."""
    return Result(
        interfaces=[
            Interface("yg-host", mac="0a:00:00:00:00:01"),
            Interface(
                "eth0",
                mac="0a:00:00:00:00:02",
                sandbox="/var/run/netns/c1",
                mtu=1400,
                socket_path="/run/yogurt/c1.sock",
                pci_id="0000:00:1f.6",
            ),
        ],
        ips=[
            IPConfig(ip_interface("10.99.0.2/24"), ip_address("10.99.0.1"), 1),
            IPConfig(ip_interface("fd99::2/64"), None, 1),
            IPConfig(ip_interface("192.0.2.7/32")),
        ],
        routes=[
            Route(
                ip_network("0.0.0.0/0"),
                ip_address("10.99.0.1"),
                mtu=1400,
                advmss=1360,
                priority=10,
                table=100,
                scope=0,
            ),
            Route(ip_network("fd99:1::/64")),
        ],
        dns=DNS(["10.99.0.1", "fd99::1"], "example.test", ["example.test"], ["ndots:2"]),
    )


def without_1_1_fields(result: Result) -> Result:
    """What survives a round trip through a version older than 1.1.0."""
    return dataclasses.replace(
        result,
        interfaces=[dataclasses.replace(i, mtu=None, socket_path="", pci_id="") for i in result.interfaces],
        routes=[Route(r.dst, r.gw) for r in result.routes],
    )


def rendered(ver: str, result: Result | None = None) -> dict[str, Any]:
    # Through real JSON text, as the runtime would see it.
    out: dict[str, Any] = json.loads(json.dumps((result or full_result()).to_json(ver)))
    return out


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_cni_version_is_the_configs(ver: str) -> None:
    assert rendered(ver)["cniVersion"] == ver


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_ip_version_field(ver: str) -> None:
    ips = rendered(ver)["ips"]
    if ver in LEGACY:
        assert [ip["version"] for ip in ips] == ["4", "6", "4"]
    else:
        assert all("version" not in ip for ip in ips)


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_fields_of_every_version(ver: str) -> None:
    out = rendered(ver)
    assert out["interfaces"][0] == {"name": "yg-host", "mac": "0a:00:00:00:00:01"}
    assert {k: out["interfaces"][1][k] for k in ("name", "mac", "sandbox")} == {
        "name": "eth0",
        "mac": "0a:00:00:00:00:02",
        "sandbox": "/var/run/netns/c1",
    }
    assert [(ip["address"], ip.get("gateway"), ip.get("interface")) for ip in out["ips"]] == [
        ("10.99.0.2/24", "10.99.0.1", 1),
        ("fd99::2/64", None, 1),
        ("192.0.2.7/32", None, None),
    ]
    assert [(r["dst"], r.get("gw")) for r in out["routes"]] == [
        ("0.0.0.0/0", "10.99.0.1"),
        ("fd99:1::/64", None),
    ]
    assert out["dns"] == {
        "nameservers": ["10.99.0.1", "fd99::1"],
        "domain": "example.test",
        "search": ["example.test"],
        "options": ["ndots:2"],
    }


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_1_1_only_fields(ver: str) -> None:
    out = rendered(ver)
    iface_keys = set(out["interfaces"][1]) & IFACE_1_1
    route_keys = set(out["routes"][0]) & ROUTE_1_1
    if ver == "1.1.0":
        assert out["interfaces"][1]["mtu"] == 1400
        assert out["interfaces"][1]["socketPath"] == "/run/yogurt/c1.sock"
        assert out["interfaces"][1]["pciID"] == "0000:00:1f.6"
        assert {k: out["routes"][0][k] for k in ROUTE_1_1} == {
            "mtu": 1400,
            "advmss": 1360,
            "priority": 10,
            "table": 100,
            "scope": 0,
        }
    else:
        assert iface_keys == set()
        assert route_keys == set()
    # Unset optional fields are left out, not sent empty, in every version.
    assert set(out["interfaces"][0]) == {"name", "mac"}
    assert out["routes"][1] == {"dst": "fd99:1::/64"}


def test_golden_0_4_0() -> None:
    result = Result(
        [Interface("eth0", sandbox="/var/run/netns/c1")],
        [IPConfig(ip_interface("10.99.0.2/24"), ip_address("10.99.0.1"), 0)],
        [Route(ip_network("10.0.0.0/8"), ip_address("10.99.0.1"), mtu=1300)],
    )
    assert rendered("0.4.0", result) == {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c1"}],
        "ips": [{"version": "4", "address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 0}],
        "routes": [{"dst": "10.0.0.0/8", "gw": "10.99.0.1"}],
        "dns": {},
    }


def test_golden_1_1_0() -> None:
    result = Result(
        [Interface("eth0", sandbox="/var/run/netns/c1", mtu=9000)],
        [IPConfig(ip_interface("fd99::2/64"), interface=0)],
        [Route(ip_network("::/0"), ip_address("fd99::1"), table=7)],
    )
    assert rendered("1.1.0", result) == {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mtu": 9000, "sandbox": "/var/run/netns/c1"}],
        "ips": [{"address": "fd99::2/64", "interface": 0}],
        "routes": [{"dst": "::/0", "gw": "fd99::1", "table": 7}],
        "dns": {},
    }


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_empty_result(ver: str) -> None:
    assert rendered(ver, Result()) == {"cniVersion": ver, "dns": {}}


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_round_trip(ver: str) -> None:
    expected = full_result() if ver == "1.1.0" else without_1_1_fields(full_result())
    assert parse_result(rendered(ver)) == expected
    assert parse_result(rendered(ver, expected)) == expected


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_round_trip_empty(ver: str) -> None:
    assert parse_result(rendered(ver, Result())) == Result()


# -- chaining ----------------------------------------------------------------


def prev() -> Result:
    return Result(
        interfaces=[Interface("br0"), Interface("veth1"), Interface("eth0", sandbox="/var/run/netns/c1")],
        ips=[IPConfig(ip_interface("10.1.0.5/24"), ip_address("10.1.0.1"), 2)],
        routes=[Route(ip_network("0.0.0.0/0"), ip_address("10.1.0.1"))],
        dns=DNS(nameservers=["10.1.0.1"]),
    )


def ours(dns: DNS | None = None) -> Result:
    return Result(
        interfaces=[Interface("yg0", sandbox="/var/run/netns/c1")],
        ips=[IPConfig(ip_interface("10.99.0.2/24"), None, 0), IPConfig(ip_interface("fd99::2/64"))],
        routes=[Route(ip_network("10.99.0.0/16"))],
        dns=dns or DNS(),
    )


def test_merged_after_offsets_interfaces() -> None:
    merged = ours().merged_after(prev())
    assert [i.name for i in merged.interfaces] == ["br0", "veth1", "eth0", "yg0"]
    assert [(str(ip.address), ip.interface) for ip in merged.ips] == [
        ("10.1.0.5/24", 2),
        ("10.99.0.2/24", 3),
        ("fd99::2/64", None),
    ]
    assert [str(r.dst) for r in merged.routes] == ["0.0.0.0/0", "10.99.0.0/16"]


def test_merged_after_keeps_previous_dns_unless_ours_is_set() -> None:
    assert ours().merged_after(prev()).dns == DNS(nameservers=["10.1.0.1"])
    assert ours(DNS(domain="yogurt.test")).merged_after(prev()).dns == DNS(domain="yogurt.test")


def test_merged_after_does_not_change_inputs() -> None:
    p, o = prev(), ours()
    o.merged_after(p)
    assert (p, o) == (prev(), ours())


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_merged_result_renders_valid_indexes(ver: str) -> None:
    merged = ours().merged_after(prev())
    out = rendered(ver, merged)
    assert [ip.get("interface") for ip in out["ips"]] == [2, 3, None]
    assert out["interfaces"][3]["name"] == "yg0"
    assert parse_result(out) == merged


def test_merged_after_empty_previous() -> None:
    assert ours().merged_after(Result()) == ours()


# -- parsing what other plugins send -----------------------------------------


def test_parse_legacy_result_ignores_ip_version() -> None:
    result = parse_result(
        {
            "cniVersion": "0.3.1",
            "ips": [
                {"version": "4", "address": "10.99.0.2/24", "gateway": "10.99.0.1"},
                {"version": "6", "address": "fd99::2/64", "gateway": "fd99::1"},
            ],
            "dns": {},
        }
    )
    assert [ip.address.version for ip in result.ips] == [4, 6]
    assert [str(ip.gateway) for ip in result.ips] == ["10.99.0.1", "fd99::1"]


@pytest.mark.parametrize(
    "obj",
    [
        None,
        "result",
        [],
        {"ips": [{"address": "10.0.0.300/24"}]},
        {"ips": [{"address": "10.0.0.2/24", "gateway": "gw"}]},
        {"ips": [{"address": "10.0.0.2/24", "interface": "0"}], "interfaces": [{"name": "a"}]},
        {"ips": [{"address": "10.0.0.2/24", "interface": -1}], "interfaces": [{"name": "a"}]},
        {"ips": [{"address": "10.0.0.2/24", "interface": 1}], "interfaces": [{"name": "a"}]},
        {"ips": "10.0.0.2/24"},
        {"interfaces": [{}]},
        {"interfaces": [{"name": "a", "mtu": True}]},
        {"routes": [{"gw": "10.0.0.1"}]},
        {"routes": [{"dst": "10.0.0.0/8", "table": "main"}]},
        {"dns": ["10.0.0.1"]},
        {"dns": {"search": [1]}},
    ],
)
def test_parse_bad_result(obj: Any) -> None:
    with pytest.raises(CNIError) as exc:
        parse_result(obj, "thing")
    assert exc.value.code == Code.DECODE_FAILURE
    assert "thing" in exc.value.msg


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_plugin_keys_are_rendered_at_the_top_level_in_every_version(ver: str) -> None:
    extra = {"yogurt": {"line": "l1", "backend": "veth", "attach": "tcx"}}
    out = Result(interfaces=[Interface("eth0")], extra=extra).to_json(ver)
    assert out["yogurt"] == extra["yogurt"] and out["cniVersion"] == ver
    assert parse_result(out).interfaces[0].name == "eth0"  # a runtime parsing it back ignores the key
