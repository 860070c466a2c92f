"""CNI_* environment parsing (SPEC section 2) and CNI_ARGS."""

from __future__ import annotations

import pytest

from cni_yogurt.cni.env import (
    VERBS,
    CniEnv,
    parse_cni_args,
    parse_env,
    validate_container_id,
    validate_ifname,
)
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.netconf import check_cni_args

# What each verb cannot do without, as the spec (and the brief) says: written
# out here rather than read from the module, so a change there shows up here.
REQUIRED: dict[str, set[str]] = {
    "ADD": {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"},
    "CHECK": {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"},
    "DEL": {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"},
    "GC": {"CNI_PATH"},
    "STATUS": set(),
    "VERSION": set(),
}
ALL_VARS = {
    "CNI_CONTAINERID": "ctr-1",
    "CNI_NETNS": "/var/run/netns/ctr-1",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin::/usr/lib/cni",
}


def env_error(environ: dict[str, str]) -> CNIError:
    with pytest.raises(CNIError) as exc:
        parse_env(environ)
    return exc.value


def test_verbs_are_the_specs() -> None:
    assert set(VERBS) == set(REQUIRED)


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_full_environment(command: str) -> None:
    env = parse_env({"CNI_COMMAND": command, **ALL_VARS, "CNI_ARGS": "A=1;B=two"})
    assert env.command == command
    assert env.container_id == "ctr-1"
    assert env.netns == "/var/run/netns/ctr-1"
    assert env.ifname == "eth0"
    assert env.path == ("/opt/cni/bin", "/usr/lib/cni")  # empty elements dropped
    assert dict(env.args) == {"A": "1", "B": "two"}
    assert env.raw_args == "A=1;B=two"


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_only_required_variables(command: str) -> None:
    environ = {"CNI_COMMAND": command} | {k: v for k, v in ALL_VARS.items() if k in REQUIRED[command]}
    env = parse_env(environ)
    assert env.command == command
    assert env.netns == ("/var/run/netns/ctr-1" if "CNI_NETNS" in REQUIRED[command] else "")
    assert dict(env.args) == {}


@pytest.mark.parametrize(
    ("command", "var"), [(cmd, var) for cmd, names in sorted(REQUIRED.items()) for var in sorted(names)]
)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_missing_required_variable(command: str, var: str, how: str) -> None:
    environ = {"CNI_COMMAND": command, **ALL_VARS}
    if how == "unset":
        del environ[var]
    else:
        environ[var] = ""
    err = env_error(environ)
    assert err.code == Code.INVALID_ENV
    assert var in err.msg


def test_all_missing_variables_are_named() -> None:
    err = env_error({"CNI_COMMAND": "ADD"})
    assert err.code == Code.INVALID_ENV
    for var in REQUIRED["ADD"]:
        assert var in err.msg


def test_del_without_netns() -> None:
    environ = {"CNI_COMMAND": "DEL", **ALL_VARS}
    del environ["CNI_NETNS"]
    assert parse_env(environ).netns == ""


@pytest.mark.parametrize("command", [None, "", "add", "FROB", "VERSION "])
def test_missing_or_unknown_command(command: str | None) -> None:
    environ = dict(ALL_VARS)
    if command is not None:
        environ["CNI_COMMAND"] = command
    err = env_error(environ)
    assert err.code == Code.INVALID_ENV
    assert "CNI_COMMAND" in err.msg


# -- CNI_CONTAINERID: [a-zA-Z0-9][a-zA-Z0-9_.\-]* --------------------------

GOOD_IDS = ["a", "0", "ctr-1", "abc.DEF_123-x", "9" * 64, "a" * 500]
BAD_IDS = ["", "-ctr", ".ctr", "_ctr", "ctr 1", "ctr/1", "ctr;1", "ctr:1", "ctr\n", "ctré", "ctr*"]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_valid_container_id(value: str) -> None:
    validate_container_id(value)
    assert parse_env({"CNI_COMMAND": "ADD", **ALL_VARS, "CNI_CONTAINERID": value}).container_id == value


@pytest.mark.parametrize("value", BAD_IDS)
def test_invalid_container_id(value: str) -> None:
    with pytest.raises(CNIError) as exc:
        validate_container_id(value)
    assert exc.value.code == Code.INVALID_ENV
    assert env_error({"CNI_COMMAND": "ADD", **ALL_VARS, "CNI_CONTAINERID": value}).code == 4


def test_invalid_container_id_rejected_where_optional() -> None:
    # GC does not need a container ID, but one that is given must still be valid.
    assert env_error({"CNI_COMMAND": "GC", **ALL_VARS, "CNI_CONTAINERID": "-x"}).code == 4


# -- CNI_IFNAME: the kernel's dev_valid_name() ------------------------------

GOOD_IFNAMES = ["eth0", "a", "x" * 15, "net1.100", "yg-0_a", "é" * 7, "a-b@c"]
BAD_IFNAMES = [
    "",
    "x" * 16,
    "é" * 8,  # 8 characters but 16 bytes
    ".",
    "..",
    "a/b",
    "a:b",
    "a b",
    " eth0",
    "eth0\n",
    "a\tb",
    "a\u00a0b",
]


@pytest.mark.parametrize("value", GOOD_IFNAMES)
def test_valid_ifname(value: str) -> None:
    validate_ifname(value)
    assert parse_env({"CNI_COMMAND": "ADD", **ALL_VARS, "CNI_IFNAME": value}).ifname == value


@pytest.mark.parametrize("value", BAD_IFNAMES)
def test_invalid_ifname(value: str) -> None:
    with pytest.raises(CNIError) as exc:
        validate_ifname(value)
    assert exc.value.code == Code.INVALID_ENV
    assert env_error({"CNI_COMMAND": "ADD", **ALL_VARS, "CNI_IFNAME": value}).code == 4


# -- CNI_ARGS ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("", {}),
        ("A=1", {"A": "1"}),
        ("A=1;B=2", {"A": "1", "B": "2"}),
        ("A=1;B=2;", {"A": "1", "B": "2"}),
        ("A=", {"A": ""}),
        (
            "IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default",
            {"IgnoreUnknown": "1", "K8S_POD_NAME": "web-0", "K8S_POD_NAMESPACE": "default"},
        ),
    ],
)
def test_cni_args(raw: str, parsed: dict[str, str]) -> None:
    assert parse_cni_args(raw) == parsed
    assert dict(parse_env({"CNI_COMMAND": "ADD", **ALL_VARS, "CNI_ARGS": raw}).args) == parsed


@pytest.mark.parametrize("raw", ["A", "A=1;B", "=1", "A=1;=2"])
def test_malformed_cni_args(raw: str) -> None:
    with pytest.raises(CNIError) as exc:
        parse_cni_args(raw)
    assert exc.value.code == Code.INVALID_ENV
    assert env_error({"CNI_COMMAND": "ADD", **ALL_VARS, "CNI_ARGS": raw}).code == 4


def args_env(raw: str) -> CniEnv:
    return parse_env({"CNI_COMMAND": "ADD", **ALL_VARS, "CNI_ARGS": raw})


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "YOGURT_LINE=l1",
        "IgnoreUnknown=1",
        "IgnoreUnknown=0",
        # What containerd and CRI-O add: read (the pod that holds an end), so known.
        "K8S_POD_NAME=web-0",
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=abc",
    ],
)
def test_known_cni_args_accepted(raw: str) -> None:
    check_cni_args(args_env(raw))


@pytest.mark.parametrize(
    ("raw", "unknown"),
    [
        ("K8S_POD_NAME=web-0;K8S_POD_FOO=1", "K8S_POD_FOO"),
        ("YOGURT_LINE=l1;FOO=bar", "FOO"),
        ("FOO=1;IgnoreUnknown=0", "FOO"),
        ("FOO=1;IgnoreUnknown=false", "FOO"),
        ("FOO=1;IgnoreUnknown=yes", "FOO"),
    ],
)
def test_unknown_cni_args_rejected(raw: str, unknown: str) -> None:
    with pytest.raises(CNIError) as exc:
        check_cni_args(args_env(raw))
    assert exc.value.code == Code.INVALID_ENV
    assert unknown in exc.value.details


@pytest.mark.parametrize("ignore", ["1", "true", "True", "TRUE"])
def test_unknown_cni_args_with_ignore_unknown(ignore: str) -> None:
    check_cni_args(args_env(f"IgnoreUnknown={ignore};K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default"))
