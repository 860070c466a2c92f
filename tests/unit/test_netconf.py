"""The network configuration on stdin (SPEC section 1) and our own keys."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cni_yogurt.cni import netconf
from cni_yogurt.cni import version as versions
from cni_yogurt.cni.env import parse_env
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.result import Result
from cni_yogurt.cni.version import LATEST, SUPPORTED_VERSIONS


def conf(cni_version: Any = LATEST, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": cni_version, "name": "net1", "type": "yogurt", **extra}


def parse_error(obj: dict[str, Any]) -> CNIError:
    with pytest.raises(CNIError) as exc:
        netconf.parse(obj)
    return exc.value


def env_with_args(raw: str = "") -> Any:
    return parse_env(
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": "/x",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": raw,
        }
    )


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_minimal_config_and_defaults(ver: str) -> None:
    nc = netconf.parse(conf(ver))
    assert (nc.cni_version, nc.name, nc.type) == (ver, "net1", "yogurt")
    assert nc.ipam is None
    assert nc.prev_result is None
    assert nc.cni_versions == ()
    assert (nc.dns, nc.args, nc.runtime_config) == ({}, {}, {})
    assert nc.line == ""
    assert nc.bpffs_dir == "/sys/fs/bpf/cni-yogurt"
    assert nc.state_dir == "/run/cni-yogurt"
    assert nc.log_file == "/var/log/cni-yogurt.log"
    assert nc.mtu is None
    assert (nc.mode, nc.veth_attach) == ("auto", "auto")
    assert nc.valid_attachments is None


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_our_keys(ver: str) -> None:
    nc = netconf.parse(
        conf(ver, line="l1", bpffsDir="/tmp/b", stateDir="/tmp/s", logFile="/tmp/l.jsonl", mtu=1400)
    )
    assert (nc.line, nc.bpffs_dir, nc.state_dir, nc.log_file, nc.mtu) == (
        "l1",
        "/tmp/b",
        "/tmp/s",
        "/tmp/l.jsonl",
        1400,
    )


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("mode", ["auto", "netkit", "veth"])
@pytest.mark.parametrize("attach", ["auto", "tcx", "tc", "split"])
def test_backend_keys(ver: str, mode: str, attach: str) -> None:
    nc = netconf.parse(conf(ver, mode=mode, vethAttach=attach))
    assert (nc.mode, nc.veth_attach) == (mode, attach)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mode", "bridge"),
        ("mode", "NETKIT"),
        ("mode", ""),
        ("mode", 1),
        ("mode", None),
        ("vethAttach", "xdp"),
    ],
)
def test_bad_backend_keys(key: str, value: Any) -> None:
    err = parse_error(conf(**{key: value}))
    assert err.code == Code.INVALID_CONFIG and key in err.msg


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_standard_keys(ver: str) -> None:
    obj = conf(
        ver,
        ipam={"type": "host-local", "subnet": "10.1.0.0/24"},
        dns={"nameservers": ["10.1.0.1"]},
        args={"cni": {"ips": ["10.1.0.5"]}},
        runtimeConfig={"portMappings": []},
    )
    nc = netconf.parse(obj)
    assert nc.ipam is not None
    assert nc.ipam.type == "host-local"
    assert nc.ipam.raw == {"type": "host-local", "subnet": "10.1.0.0/24"}
    assert nc.dns == {"nameservers": ["10.1.0.1"]}
    assert nc.args == {"cni": {"ips": ["10.1.0.5"]}}
    assert nc.runtime_config == {"portMappings": []}
    assert nc.raw is obj


# -- cniVersion --------------------------------------------------------------


def test_cni_version_missing() -> None:
    obj = conf()
    del obj["cniVersion"]
    err = parse_error(obj)
    assert err.code == Code.INVALID_CONFIG
    assert "cniVersion" in err.msg


@pytest.mark.parametrize("value", [1, 1.0, None, True, ["1.0.0"], {"v": "1.0.0"}, ""])
def test_cni_version_wrong_type(value: Any) -> None:
    err = parse_error(conf(value))
    assert err.code == Code.INVALID_CONFIG
    assert "cniVersion" in err.msg


@pytest.mark.parametrize("value", ["0.1.0", "0.2.0", "1.2.0", "9.9.9", "1.0", "v1.0.0", "1.0.0-rc1"])
def test_cni_version_unsupported(value: str) -> None:
    err = parse_error(conf(value))
    assert err.code == Code.INCOMPATIBLE_VERSION
    assert value in err.details


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_cni_versions_list(ver: str) -> None:
    assert netconf.parse(conf(ver, cniVersions=["0.4.0", "1.0.0"])).cni_versions == ("0.4.0", "1.0.0")


@pytest.mark.parametrize("value", ["1.0.0", ["1.0.0", 1], {"1.0.0": True}])
def test_cni_versions_wrong_type(value: Any) -> None:
    err = parse_error(conf(cniVersions=value))
    assert err.code == Code.INVALID_CONFIG
    assert "cniVersions" in err.msg


# -- name and type -----------------------------------------------------------


@pytest.mark.parametrize("key", ["name", "type"])
@pytest.mark.parametrize("how", ["absent", "empty", "wrong type"])
def test_name_and_type_required(key: str, how: str) -> None:
    obj = conf()
    if how == "absent":
        del obj[key]
    else:
        obj[key] = "" if how == "empty" else 42
    err = parse_error(obj)
    assert err.code == Code.INVALID_CONFIG
    assert key in err.msg


def test_name_and_type_both_missing_are_named() -> None:
    err = parse_error({"cniVersion": LATEST})
    assert err.code == Code.INVALID_CONFIG
    assert "name" in err.msg and "type" in err.msg


# -- wrong types -------------------------------------------------------------

WRONG_TYPES = [
    ("ipam", "host-local"),
    ("ipam", ["host-local"]),
    ("dns", "10.0.0.1"),
    ("dns", ["10.0.0.1"]),
    ("args", "K=V"),
    ("args", []),
    ("runtimeConfig", "x"),
    ("runtimeConfig", [1]),
    ("mtu", "1500"),
    ("mtu", 1500.0),
    ("mtu", True),
    ("mtu", [1500]),
    ("line", 7),
    ("line", ["l1"]),
    ("line", None),
    ("bpffsDir", 1),
    ("stateDir", ["/run"]),
    ("logFile", False),
]


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
@pytest.mark.parametrize(("key", "value"), WRONG_TYPES)
def test_wrong_types(ver: str, key: str, value: Any) -> None:
    err = parse_error(conf(ver, **{key: value}))
    assert err.code == Code.INVALID_CONFIG
    assert key in err.msg


@pytest.mark.parametrize("mtu", [0, -1, 67, 65536, 2**40])
def test_mtu_out_of_range(mtu: int) -> None:
    err = parse_error(conf(mtu=mtu))
    assert err.code == Code.INVALID_CONFIG
    assert "mtu" in err.msg


@pytest.mark.parametrize("mtu", [68, 1500, 9000, 65535])
def test_mtu_in_range(mtu: int) -> None:
    assert netconf.parse(conf(mtu=mtu)).mtu == mtu


@pytest.mark.parametrize(
    "ipam",
    [
        {"subnet": "10.0.0.0/24"},
        {"type": ""},
        {"type": 5},
        {"type": "../../bin/sh"},
        {"type": "/usr/lib/cni/host-local"},
    ],
)
def test_bad_ipam_type(ipam: dict[str, Any]) -> None:
    err = parse_error(conf(ipam=ipam))
    assert err.code == Code.INVALID_CONFIG
    assert "ipam" in err.msg


# -- prevResult --------------------------------------------------------------


def prev_result_json(ver: str) -> dict[str, Any]:
    """A prevResult as an earlier plugin in the chain would send it in version `ver`."""
    legacy = ver in ("0.3.0", "0.3.1", "0.4.0")
    ips: list[dict[str, Any]] = [
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
        {"address": "fd01::5/64", "interface": 1},
    ]
    if legacy:
        ips[0]["version"], ips[1]["version"] = "4", "6"
    return {
        "cniVersion": ver,
        "interfaces": [
            {"name": "br0", "mac": "aa:bb:cc:dd:ee:00"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/var/run/netns/c1"},
        ],
        "ips": ips,
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
        "dns": {"nameservers": ["10.1.0.1"], "search": ["svc.local"]},
    }


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_prev_result(ver: str) -> None:
    prev = netconf.parse(conf(ver, prevResult=prev_result_json(ver))).prev_result
    assert isinstance(prev, Result)
    assert [i.name for i in prev.interfaces] == ["br0", "eth0"]
    assert prev.interfaces[1].sandbox == "/var/run/netns/c1"
    assert [ip.address for ip in prev.ips] == [
        ipaddress.ip_interface("10.1.0.5/24"),
        ipaddress.ip_interface("fd01::5/64"),
    ]
    assert [ip.interface for ip in prev.ips] == [1, 1]
    assert prev.ips[0].gateway == ipaddress.ip_address("10.1.0.1")
    assert prev.ips[1].gateway is None
    assert prev.routes[0].dst == ipaddress.ip_network("0.0.0.0/0")
    assert prev.dns.nameservers == ["10.1.0.1"]
    assert prev.dns.search == ["svc.local"]


@pytest.mark.parametrize(
    "prev",
    [
        "not an object",
        [],
        {"ips": [{"address": "not-an-ip"}]},
        {"ips": [{"gateway": "10.0.0.1"}]},
        {"ips": [{"address": "10.0.0.2/24", "interface": 0}]},  # no interface 0
        {"interfaces": [{"mac": "no name"}]},
        {"interfaces": ["eth0"]},
        {"routes": [{"dst": "nope"}]},
        {"dns": "10.0.0.1"},
        {"dns": {"nameservers": "10.0.0.1"}},
        {"interfaces": [{"name": "eth0", "mtu": "1500"}]},
    ],
)
def test_bad_prev_result(prev: Any) -> None:
    err = parse_error(conf(prevResult=prev))
    assert err.code == Code.DECODE_FAILURE
    assert "prevResult" in err.msg


# -- line --------------------------------------------------------------------


def test_line_from_cni_args_wins() -> None:
    nc = netconf.parse(conf(line="from-config"))
    assert nc.line_for(env_with_args("YOGURT_LINE=from-args")) == "from-args"


def test_line_from_config_over_name() -> None:
    nc = netconf.parse(conf(line="from-config"))
    assert nc.line_for(env_with_args("")) == "from-config"
    assert nc.line_for(env_with_args("IgnoreUnknown=1;K8S_POD_NAME=x")) == "from-config"


def test_line_defaults_to_network_name() -> None:
    assert netconf.parse(conf()).line_for(env_with_args("")) == "net1"


def test_empty_yogurt_line_falls_through() -> None:
    assert netconf.parse(conf(line="cfg")).line_for(env_with_args("YOGURT_LINE=")) == "cfg"


@pytest.mark.parametrize("line", ["a", "line-1", "L.2_x", "a" * 64])
def test_valid_line_names(line: str) -> None:
    assert netconf.parse(conf(line=line)).line_for(env_with_args("")) == line
    assert netconf.parse(conf()).line_for(env_with_args(f"YOGURT_LINE={line}")) == line


BAD_LINES = ["-x", ".x", "a/b", "../etc", "a b", "a:b", "a" * 65, "lïne"]


@pytest.mark.parametrize("line", BAD_LINES)
def test_invalid_line_in_config(line: str) -> None:
    nc = netconf.parse(conf(line=line))
    with pytest.raises(CNIError) as exc:
        nc.line_for(env_with_args(""))
    assert exc.value.code == Code.INVALID_CONFIG


@pytest.mark.parametrize("line", [b for b in BAD_LINES if " " not in b])
def test_invalid_line_in_cni_args(line: str) -> None:
    nc = netconf.parse(conf())
    with pytest.raises(CNIError) as exc:
        nc.line_for(env_with_args(f"YOGURT_LINE={line}"))
    assert exc.value.code == Code.INVALID_CONFIG


def test_invalid_network_name_as_line() -> None:
    nc = netconf.parse({"cniVersion": LATEST, "name": "n" * 65, "type": "yogurt"})
    with pytest.raises(CNIError) as exc:
        nc.line_for(env_with_args(""))
    assert exc.value.code == Code.INVALID_CONFIG


# -- GC: valid attachments ---------------------------------------------------

ATTACHMENTS = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_valid_attachments(key: str) -> None:
    nc = netconf.parse(conf(**{key: ATTACHMENTS}))
    assert nc.valid_attachments == (("c1", "eth0"), ("c2", "net1"))


def test_valid_attachments_empty_list_is_not_absent() -> None:
    assert netconf.parse(conf(**{"cni.dev/valid-attachments": []})).valid_attachments == ()


def test_valid_attachments_key_wins_over_alias() -> None:
    obj = conf(**{"cni.dev/valid-attachments": ATTACHMENTS[:1], "cni.dev/attachments": ATTACHMENTS})
    assert netconf.parse(obj).valid_attachments == (("c1", "eth0"),)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
@pytest.mark.parametrize(
    "value",
    [
        {"containerID": "c1", "ifname": "eth0"},
        ["c1"],
        [{"containerID": "c1"}],
        [{"ifname": "eth0"}],
        [{"containerID": 1, "ifname": "eth0"}],
        None,
    ],
)
def test_bad_valid_attachments(key: str, value: Any) -> None:
    err = parse_error(conf(**{key: value}))
    assert err.code == Code.INVALID_CONFIG
    assert key in err.msg


# -- decoding stdin ----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n",
        b"{",
        b'{"cniVersion": "1.0.0",}',
        b"[]",
        b'"string"',
        b"null",
        b"42",
        b"\xff\xfe{}",
        b"[" * 100_000,
    ],
)
def test_decode_failures(data: bytes) -> None:
    with pytest.raises(CNIError) as exc:
        netconf.decode(data)
    assert exc.value.code == Code.DECODE_FAILURE


def test_decode_object() -> None:
    assert netconf.decode(b' {"cniVersion": "1.0.0"}\n') == {"cniVersion": "1.0.0"}


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_peek_version(ver: str) -> None:
    assert versions.peek_version(f'{{"cniVersion": "{ver}", "name": 1}}'.encode()) == ver


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[]", b'{"cniVersion": 1}', b'{"cniVersion": "9.9.9"}', b"[" * 100_000]
)
def test_peek_version_unreadable(data: bytes) -> None:
    assert versions.peek_version(data) is None


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
@pytest.mark.parametrize(
    ("configured", "args", "down"),
    [
        (None, {}, False),
        ("up", {}, False),
        ("down", {}, True),
        ("down", {"cni": {"linkState": "up"}}, False),  # per attachment (Multus's cni-args) wins
        (None, {"cni": {"linkState": "down"}}, True),
    ],
)
def test_link_state_from_the_config_and_per_attachment(
    ver: str, configured: str | None, args: dict[str, Any], down: bool
) -> None:
    extra: dict[str, Any] = {"args": args}
    if configured is not None:
        extra["linkState"] = configured
    assert netconf.parse(conf(ver, **extra)).starts_down() is down


@pytest.mark.parametrize("value", ["Down", "", 0, True, None])
def test_a_bad_link_state_is_named(value: Any) -> None:
    err = parse_error(conf(linkState=value))
    assert err.code == Code.INVALID_CONFIG and "linkState" in err.msg
    nc = netconf.parse(conf(args={"cni": {"linkState": value}}))
    with pytest.raises(CNIError) as e:
        nc.starts_down()
    assert e.value.code == Code.INVALID_CONFIG and "linkState" in e.value.msg
