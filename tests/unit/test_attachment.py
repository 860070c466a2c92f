"""What one attachment asks for (cni/attachment.py): line sources and their order, requested
addresses and MAC, the pod a CRI runtime names — as Multus, podman, containerd and cnitool send them."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cni_yogurt.cni import attachment, netconf
from cni_yogurt.cni.env import parse_env
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.version import LATEST


def env(cni_args: str = "") -> Any:
    return parse_env(
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": "/x",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": cni_args,
        }
    )


def conf(**extra: Any) -> netconf.NetConf:
    return netconf.parse({"cniVersion": LATEST, "name": "net1", "type": "yogurt", **extra})


def error(call: Any, *args: Any) -> CNIError:
    with pytest.raises(CNIError) as exc:
        call(*args)
    return exc.value


# -- the line: four sources, first found wins ---------------------------------

MULTUS = {"cni": {"line": "from-multus"}}  # a pod's cni-args, as Multus hands them to a delegate


@pytest.mark.parametrize(
    ("args", "cni_args", "line", "want", "source"),
    [
        (MULTUS, "YOGURT_LINE=from-env", "from-config", "from-multus", "args.cni.line"),
        ({}, "YOGURT_LINE=from-env", "from-config", "from-env", "CNI_ARGS YOGURT_LINE"),
        ({"cni": {"ips": []}}, "", "from-config", "from-config", "config line"),
        ({}, "IgnoreUnknown=1;K8S_POD_NAME=web", "", "net1", "network name"),
        ({"cni": {"line": ""}}, "YOGURT_LINE=", "", "net1", "network name"),  # empty: not named
    ],
)
def test_line_precedence(args: dict[str, Any], cni_args: str, line: str, want: str, source: str) -> None:
    nc = conf(args=args, line=line)
    assert attachment.line_for(nc.args, env(cni_args).args, nc.line, nc.name) == (want, source)
    assert nc.line_for(env(cni_args)) == want


@pytest.mark.parametrize(
    ("extra", "cni_args", "source"),
    [
        ({"args": {"cni": {"line": "a/b"}}}, "YOGURT_LINE=ok", "args.cni.line"),
        ({"line": "ok"}, "YOGURT_LINE=../etc", "CNI_ARGS YOGURT_LINE"),
        ({"line": "-x"}, "", "config line"),
        ({"name": "n" * 65}, "", "network name"),
    ],
)
def test_an_invalid_line_names_its_source(extra: dict[str, Any], cni_args: str, source: str) -> None:
    err = error(conf(**extra).line_for, env(cni_args))
    assert err.code == Code.INVALID_CONFIG
    assert source in err.msg


@pytest.mark.parametrize("bad", [7, ["l"], {"x": 1}])
def test_a_line_in_args_must_be_a_string(bad: Any) -> None:
    err = error(conf(args={"cni": {"line": bad}}).line_for, env())
    assert err.code == Code.INVALID_CONFIG and "args.cni.line" in err.msg


def test_args_cni_must_be_an_object() -> None:
    err = error(conf(args={"cni": "line=x"}).line_for, env())
    assert err.code == Code.INVALID_CONFIG and "args.cni" in err.msg


# -- requested addresses --------------------------------------------------------


def ips(args: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None) -> list[str]:
    return [str(a) for a in attachment.requested_ips(args or {}, runtime or {})]


def test_ips_capability_as_conventions_write_it() -> None:
    assert ips(runtime={"ips": ["10.42.0.9/24", "fd42::9/64"]}) == ["10.42.0.9/24", "fd42::9/64"]


def test_a_bare_address_is_a_host_address() -> None:
    assert ips(runtime={"ips": ["10.42.0.9"]}) == ["10.42.0.9/32"]


def test_ips_from_args_and_capability_are_one_request() -> None:
    """host-local assigns the union of both; so do we check for it."""
    got = ips({"cni": {"ips": ["10.42.0.9/24", "10.42.0.10/24"]}}, {"ips": ["10.42.0.9/24"]})
    assert got == ["10.42.0.9/24", "10.42.0.10/24"]


def test_no_ips_requested() -> None:
    assert ips() == [] and ips({"cni": {"line": "x"}}, {"portMappings": []}) == []


@pytest.mark.parametrize(
    ("args", "runtime", "source"),
    [
        ({}, {"ips": "10.42.0.9/24"}, "runtimeConfig.ips"),
        ({}, {"ips": [10]}, "runtimeConfig.ips"),
        ({}, {"ips": ["10.42.0.300/24"]}, "runtimeConfig.ips"),
        ({}, {"ips": ["224.0.0.1/24"]}, "runtimeConfig.ips"),
        ({}, {"ips": ["0.0.0.0/0"]}, "runtimeConfig.ips"),
        ({"cni": {"ips": ["nope"]}}, {}, "args.cni.ips"),
    ],
)
def test_invalid_requested_ips(args: dict[str, Any], runtime: dict[str, Any], source: str) -> None:
    err = error(attachment.requested_ips, args, runtime)
    assert err.code == Code.INVALID_CONFIG and source in err.msg


def test_missing_from_compares_addresses_not_prefixes() -> None:
    wanted = attachment.requested_ips({}, {"ips": ["10.42.0.9", "fd42::9/64"]})
    got = [ipaddress.ip_interface("10.42.0.9/24"), ipaddress.ip_interface("fd42::1/64")]
    assert attachment.missing_from(got, wanted) == ["fd42::9"]


# -- requested MAC ----------------------------------------------------------------


def test_mac_capability_wins_over_args() -> None:
    mac = attachment.requested_mac({"cni": {"mac": "02:00:00:00:00:02"}}, {"mac": "02:AA:BB:CC:DD:01"})
    assert mac == "02:aa:bb:cc:dd:01"
    assert attachment.requested_mac({"cni": {"mac": "02:00:00:00:00:02"}}, {}) == "02:00:00:00:00:02"
    assert attachment.requested_mac({}, {}) is None


@pytest.mark.parametrize(
    "bad",
    ["01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00", "02-00-00-00-00-01", 2, "zz:00:00:00:00:01"],
)
def test_invalid_mac(bad: Any) -> None:
    err = error(attachment.requested_mac, {}, {"mac": bad})
    assert err.code == Code.INVALID_CONFIG and "runtimeConfig.mac" in err.msg


def test_a_mac_on_netkit_is_refused_clearly() -> None:
    err = error(attachment.refuse_mac_on, "netkit", "02:00:00:00:00:01")
    assert err.code == Code.INVALID_CONFIG
    assert "netkit" in err.msg and "veth" in err.details
    attachment.refuse_mac_on("netkit", None)
    attachment.refuse_mac_on("veth", "02:00:00:00:00:01")


# -- the pod ------------------------------------------------------------------------


def test_pod_from_what_containerd_adds() -> None:
    raw = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c;"
    raw += "K8S_POD_UID=u-1"
    pod = attachment.pod_of(env(raw).args)
    assert pod == attachment.Pod("shop", "web-0", "u-1") and str(pod) == "shop/web-0"


def test_no_pod_without_a_pod_name() -> None:
    assert attachment.pod_of(env("").args) is None
    assert attachment.pod_of(env("K8S_POD_NAMESPACE=shop").args) is None


def test_podman_s_cni_args_ip_and_mac() -> None:
    """podman 4's CNI backend: --network net:ip=10.42.0.9,mac=... arrives as CNI_ARGS."""
    cni_args = env("IgnoreUnknown=1;K8S_POD_NAME=one;IP=10.42.0.9;MAC=02:42:0A:2A:00:09").args
    assert [str(a) for a in attachment.requested_ips({}, {}, cni_args)] == ["10.42.0.9/32"]
    assert attachment.requested_mac({}, {}, cni_args) == "02:42:0a:2a:00:09"
    assert attachment.requested_mac({}, {"mac": "02:00:00:00:00:01"}, cni_args) == "02:00:00:00:00:01"
    err = error(attachment.requested_mac, {}, {}, env("MAC=ff:ff:ff:ff:ff:ff").args)
    assert err.code == Code.INVALID_CONFIG and "CNI_ARGS MAC" in err.msg
    err = error(attachment.requested_ips, {}, {}, env("IP=10.0.0.1,x").args)
    assert err.code == Code.INVALID_CONFIG and "CNI_ARGS IP" in err.msg
