"""The `yogurt` executable as a runtime calls it: env + stdin in, JSON + exit code out.

Every case here fails (or answers) before a verb touches the kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt.cni.version import LATEST, SUPPORTED_VERSIONS

HEAVY = ("pyroute2", "structlog", "bcc")


def test_version_without_stdin(run_plugin: Callable[..., Any]) -> None:
    run = run_plugin({"CNI_COMMAND": "VERSION"}, None)
    assert run.rc == 0, run
    assert run.out == {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert run.stderr == ""


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_version_with_config(ver: str, run_plugin: Callable[..., Any], make_conf: Callable[..., Any]) -> None:
    run = run_plugin({"CNI_COMMAND": "VERSION"}, make_conf(ver))
    assert run.rc == 0, run
    assert run.out == {"cniVersion": ver, "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert run.stderr == ""


@pytest.mark.parametrize("stdin", ['{"cniVersion": "0.2.0"}', "{}", "not json", ""])
def test_version_with_odd_stdin_answers_latest(stdin: str, run_plugin: Callable[..., Any]) -> None:
    run = run_plugin({"CNI_COMMAND": "VERSION"}, stdin)
    assert run.rc == 0, run
    assert run.out == {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_version_with_all_env(run_plugin: Callable[..., Any], make_env: Callable[..., Any]) -> None:
    run = run_plugin(make_env("VERSION"), '{"cniVersion": "1.0.0"}')
    assert (run.rc, run.out["cniVersion"]) == (0, "1.0.0")


def test_version_does_not_import_heavy_modules(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from cni_yogurt.entry import main\n"
        "rc = main()\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"CNI_COMMAND": "VERSION"},
        input=b'{"cniVersion": "1.0.0"}',
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"
    heavy_line = [line for line in proc.stderr.decode().splitlines() if line.startswith("HEAVY=")]
    assert heavy_line == ["HEAVY=[]"], proc.stderr.decode()


def test_version_import_time_via_module(tmp_path: Path) -> None:
    """`python -X importtime -m cni_yogurt` lists every module imported: none of the heavy ones.

    VERSION does not even load the protocol layer (skel, netconf, results and
    their dataclasses): version.py and json answer it.
    """
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cni_yogurt"],
        env={"CNI_COMMAND": "VERSION"},
        input=b"",
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "cni_yogurt.cni.version" in imported  # the listing is real
    assert {m for m in imported if m.split(".")[0] in HEAVY} == set()
    assert {"cni_yogurt.cni.skel", "cni_yogurt.cni.netconf", "dataclasses", "typing"} & imported == set()


# -- bad inputs --------------------------------------------------------------

# (id, command, env overrides, config overrides or raw stdin, expected code)
CONF = object()  # marker: the default valid config
BAD_INPUTS: list[tuple[str, str, dict[str, str | None], Any, int]] = [
    ("malformed-json", "ADD", {}, b'{"cniVersion": "1.0.0", ', 6),
    ("empty-stdin", "ADD", {}, b"", 6),
    ("whitespace-stdin", "DEL", {}, b" \n", 6),
    ("json-array", "ADD", {}, b'[{"cniVersion": "1.0.0"}]', 6),
    ("json-string", "CHECK", {}, b'"config"', 6),
    ("not-utf8", "ADD", {}, b'{"name": "\xff"}', 6),
    ("deeply-nested", "ADD", {}, b"[" * 100_000, 6),
    ("no-cniVersion", "ADD", {}, {"cniVersion": None}, 7),
    ("cniVersion-number", "ADD", {}, {"cniVersion": 1.0}, 7),
    ("cniVersion-0.2.0", "ADD", {}, {"cniVersion": "0.2.0"}, 1),
    ("cniVersion-9.9.9", "DEL", {}, {"cniVersion": "9.9.9"}, 1),
    ("no-name", "ADD", {}, {"name": None}, 7),
    ("no-type", "DEL", {}, {"type": None}, 7),
    ("name-number", "ADD", {}, {"name": 5}, 7),
    ("mtu-string", "ADD", {}, {"mtu": "1500"}, 7),
    ("mtu-too-small", "ADD", {}, {"mtu": 10}, 7),
    ("ipam-string", "ADD", {}, {"ipam": "host-local"}, 7),
    ("ipam-no-type", "ADD", {}, {"ipam": {"subnet": "10.0.0.0/24"}}, 7),
    ("dns-list", "ADD", {}, {"dns": ["10.0.0.1"]}, 7),
    ("args-string", "CHECK", {}, {"args": "x"}, 7),
    ("runtimeConfig-list", "ADD", {}, {"runtimeConfig": []}, 7),
    ("line-number", "ADD", {}, {"line": 1}, 7),
    ("logFile-list", "ADD", {}, {"logFile": ["/tmp/x"]}, 7),
    ("prevResult-garbage", "ADD", {}, {"prevResult": {"ips": [{"address": "x"}]}}, 6),
    ("attachments-wrong", "GC", {}, {"cni.dev/valid-attachments": [{"containerID": 1}]}, 7),
    ("no-command", "ADD", {"CNI_COMMAND": ""}, CONF, 4),
    ("unknown-command", "FROB", {}, CONF, 4),
    ("lowercase-command", "add", {}, CONF, 4),
    ("add-no-containerid", "ADD", {"CNI_CONTAINERID": None}, CONF, 4),
    ("add-no-netns", "ADD", {"CNI_NETNS": None}, CONF, 4),
    ("add-no-ifname", "ADD", {"CNI_IFNAME": None}, CONF, 4),
    ("add-no-path", "ADD", {"CNI_PATH": None}, CONF, 4),
    ("check-no-netns", "CHECK", {"CNI_NETNS": None}, CONF, 4),
    ("del-no-containerid", "DEL", {"CNI_CONTAINERID": None}, CONF, 4),
    ("del-no-ifname", "DEL", {"CNI_IFNAME": None}, CONF, 4),
    ("gc-no-path", "GC", {"CNI_PATH": None}, CONF, 4),
    ("bad-containerid", "ADD", {"CNI_CONTAINERID": "-ctr"}, CONF, 4),
    ("containerid-slash", "DEL", {"CNI_CONTAINERID": "a/../b"}, CONF, 4),
    ("ifname-too-long", "ADD", {"CNI_IFNAME": "x" * 16}, CONF, 4),
    ("ifname-slash", "ADD", {"CNI_IFNAME": "eth/0"}, CONF, 4),
    ("ifname-dotdot", "DEL", {"CNI_IFNAME": ".."}, CONF, 4),
    ("cni-args-malformed", "ADD", {"CNI_ARGS": "NOVALUE"}, CONF, 4),
    ("cni-args-unknown", "ADD", {"CNI_ARGS": "K8S_POD_NAME=web-0;FOO=1"}, CONF, 4),
    ("cni-args-ignore-false", "DEL", {"CNI_ARGS": "IgnoreUnknown=false;FOO=1"}, CONF, 4),
    ("check-0.3.1", "CHECK", {}, {"cniVersion": "0.3.1"}, 1),
    ("check-0.3.0", "CHECK", {}, {"cniVersion": "0.3.0"}, 1),
    ("gc-1.0.0", "GC", {}, {"cniVersion": "1.0.0"}, 1),
    ("status-1.0.0", "STATUS", {}, {"cniVersion": "1.0.0"}, 1),
    ("gc-0.4.0", "GC", {}, {"cniVersion": "0.4.0"}, 1),
    ("status-0.3.1", "STATUS", {}, {"cniVersion": "0.3.1"}, 1),
]


@pytest.mark.parametrize(
    ("command", "env", "stdin", "code"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input(
    command: str,
    env: dict[str, str | None],
    stdin: Any,
    code: int,
    tmp_path: Path,
    run_plugin: Callable[..., Any],
    make_env: Callable[..., Any],
    make_conf: Callable[..., Any],
) -> None:
    if stdin is CONF:
        stdin = make_conf()
    elif isinstance(stdin, dict):
        stdin = make_conf(**stdin)  # a None value drops the key
    run = run_plugin(make_env(command, **env), stdin)
    run.assert_error(code)
    # Rejected before any verb ran: nothing logged, nothing created under tmp_path.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
@pytest.mark.parametrize(
    ("command", "env", "config", "code"),
    [
        ("ADD", {"CNI_NETNS": None}, {}, 4),
        ("DEL", {"CNI_IFNAME": "a:b"}, {}, 4),
        ("ADD", {"CNI_ARGS": "FOO=bar"}, {}, 4),
        ("ADD", {}, {"mtu": True}, 7),
        ("DEL", {}, {"name": ""}, 7),
        ("ADD", {}, {"prevResult": []}, 6),
    ],
    ids=["env", "ifname", "cni-args", "config", "name", "prevResult"],
)
def test_error_speaks_the_configs_version(
    ver: str,
    command: str,
    env: dict[str, str | None],
    config: dict[str, Any],
    code: int,
    run_plugin: Callable[..., Any],
    make_env: Callable[..., Any],
    make_conf: Callable[..., Any],
) -> None:
    run = run_plugin(make_env(command, **env), make_conf(ver, **config))
    run.assert_error(code)
    assert run.out["cniVersion"] == ver


def test_error_details_and_stderr(run_plugin: Callable[..., Any], make_env: Callable[..., Any]) -> None:
    run = run_plugin(make_env("ADD", CNI_IFNAME="x" * 20), {"cniVersion": "1.0.0"})
    run.assert_error(4)
    assert "CNI_IFNAME" in run.out["details"]
    assert "error 4" in run.stderr  # the operator sees it too
    assert run.stdout.count("\n") == 1  # exactly one JSON document


@pytest.mark.parametrize("ver", ["0.2.0", "9.9.9"])
def test_unsupported_version_error_names_what_we_support(
    ver: str, run_plugin: Callable[..., Any], make_env: Callable[..., Any], make_conf: Callable[..., Any]
) -> None:
    run = run_plugin(make_env("ADD"), make_conf(ver))
    run.assert_error(1)
    assert ver in run.out["details"]
    for supported in SUPPORTED_VERSIONS:
        assert supported in run.out["details"]


def test_admin_cli_whose_reader_left_exits_quietly() -> None:
    """`yogurt status | head`: a closed pipe is no reason for a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    proc = subprocess.run(
        [sys.executable, "-m", "cni_yogurt", "version"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
        timeout=60,
    )
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert b"Traceback" not in proc.stderr, proc.stderr
