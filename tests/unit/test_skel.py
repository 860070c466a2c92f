"""The dispatcher (cni/skel.py) in-process, with stand-in verbs: what reaches stdout, when."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt.cni import skel
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.result import Interface, IPConfig, Result
from cni_yogurt.cni.version import SUPPORTED_VERSIONS, at_least


@dataclass
class Verbs:
    """Records each call; `fail` is raised instead of answering."""

    fail: BaseException | None = None
    calls: list[tuple[str, skel.Invocation]] = field(default_factory=list)

    def _call(self, name: str, inv: skel.Invocation) -> None:
        self.calls.append((name, inv))
        if self.fail is not None:
            raise self.fail

    def add(self, inv: skel.Invocation) -> Result:
        self._call("add", inv)
        return Result(
            [Interface("yg0", sandbox=inv.env.netns)], [IPConfig(ip_interface("10.99.0.2/24"), interface=0)]
        )

    def delete(self, inv: skel.Invocation) -> None:
        self._call("delete", inv)

    def check(self, inv: skel.Invocation) -> None:
        self._call("check", inv)

    def status(self, inv: skel.Invocation) -> None:
        self._call("status", inv)

    def gc(self, inv: skel.Invocation) -> None:
        self._call("gc", inv)


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str

    @property
    def out(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def invoke(make_env: Callable[..., dict[str, str]]) -> Callable[..., Outcome]:
    def run(command: str, conf: dict[str, Any] | bytes, verbs: Verbs, **env: str | None) -> Outcome:
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        stdout, stderr = io.StringIO(), io.StringIO()
        rc = skel.run(make_env(command, **env), io.BytesIO(data), stdout, stderr, lambda: verbs)
        return Outcome(rc, stdout.getvalue(), stderr.getvalue())

    return run


def log_records(conf: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(conf["logFile"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_add_prints_result_in_config_version(
    ver: str, invoke: Callable[..., Outcome], make_conf: Callable[..., Any]
) -> None:
    conf = make_conf(ver)
    verbs = Verbs()
    done = invoke("ADD", conf, verbs)
    assert (done.rc, done.stderr) == (0, "")
    ips = [{"address": "10.99.0.2/24", "interface": 0}]
    if not at_least(ver, "1.0.0"):
        ips[0] = {"version": "4", **ips[0]}
    assert done.out == {
        "cniVersion": ver,
        "interfaces": [{"name": "yg0", "sandbox": "/var/run/netns/ctr-1"}],
        "ips": ips,
        "dns": {},
    }
    [(name, inv)] = verbs.calls
    assert name == "add"
    assert inv.conf.cni_version == ver
    assert inv.stdin == json.dumps(conf).encode()
    assert (inv.env.container_id, inv.env.ifname) == ("ctr-1", "eth0")
    [record] = log_records(conf)
    assert (record["verb"], record["outcome"], record["container_id"], record["network"]) == (
        "ADD",
        "ok",
        "ctr-1",
        "testnet",
    )


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_add_appends_to_prev_result(
    ver: str, invoke: Callable[..., Outcome], make_conf: Callable[..., Any]
) -> None:
    prev = {
        "cniVersion": ver,
        "interfaces": [{"name": "br0"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.1.0.5/24", "interface": 1}],
        "dns": {"nameservers": ["10.1.0.1"]},
    }
    done = invoke("ADD", make_conf(ver, prevResult=prev), Verbs())
    assert done.rc == 0, done
    out = done.out
    assert [i["name"] for i in out["interfaces"]] == ["br0", "eth0", "yg0"]
    assert [(ip["address"], ip["interface"]) for ip in out["ips"]] == [
        ("10.1.0.5/24", 1),
        ("10.99.0.2/24", 2),
    ]
    assert out["dns"] == {"nameservers": ["10.1.0.1"]}


@pytest.mark.parametrize(
    ("command", "method", "ver"),
    [("DEL", "delete", v) for v in SUPPORTED_VERSIONS]
    + [("CHECK", "check", v) for v in SUPPORTED_VERSIONS if at_least(v, "0.4.0")]
    + [("GC", "gc", "1.1.0"), ("STATUS", "status", "1.1.0")],
)
def test_other_verbs_print_nothing(
    command: str, method: str, ver: str, invoke: Callable[..., Outcome], make_conf: Callable[..., Any]
) -> None:
    verbs = Verbs()
    done = invoke(command, make_conf(ver), verbs)
    assert (done.rc, done.stdout, done.stderr) == (0, "", "")
    assert [name for name, _ in verbs.calls] == [method]


def test_del_without_netns(invoke: Callable[..., Outcome], make_conf: Callable[..., Any]) -> None:
    verbs = Verbs()
    assert invoke("DEL", make_conf(), verbs, CNI_NETNS=None).rc == 0
    assert verbs.calls[0][1].env.netns == ""


def test_gc_gets_valid_attachments(invoke: Callable[..., Outcome], make_conf: Callable[..., Any]) -> None:
    verbs = Verbs()
    conf = make_conf(**{"cni.dev/valid-attachments": [{"containerID": "c9", "ifname": "eth1"}]})
    assert invoke("GC", conf, verbs, CNI_CONTAINERID=None, CNI_IFNAME=None, CNI_NETNS=None).rc == 0
    assert verbs.calls[0][1].conf.valid_attachments == (("c9", "eth1"),)


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_verb_error_becomes_error_json(
    ver: str, invoke: Callable[..., Outcome], make_conf: Callable[..., Any]
) -> None:
    conf = make_conf(ver)
    done = invoke("ADD", conf, Verbs(fail=CNIError(Code.LINE_FULL, "line l1 is full", "two members")))
    assert done.rc != 0
    assert done.out == {"cniVersion": ver, "code": 100, "msg": "line l1 is full", "details": "two members"}
    [record] = log_records(conf)
    assert (record["level"], record["code"], record["msg"]) == ("error", 100, "line l1 is full")
    assert json.loads(done.stderr) == record  # the error line, once


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_unexpected_exception_is_999_without_traceback(
    command: str, invoke: Callable[..., Outcome], make_conf: Callable[..., Any]
) -> None:
    conf = make_conf("1.0.0")
    done = invoke(command, conf, Verbs(fail=RuntimeError("netlink said no")))
    assert done.rc != 0
    assert done.out["cniVersion"] == "1.0.0"
    assert done.out["code"] == 999
    assert "netlink said no" in done.out["msg"]
    assert "Traceback" not in done.stdout + done.stderr
    records = log_records(conf)
    # The traceback goes to the log file only; the error event (also on stderr) names the exception.
    assert any("Traceback" in r.get("traceback", "") and "netlink said no" in r["traceback"] for r in records)
    [error] = [r for r in records if r["level"] == "error"]
    assert (error["verb"], error["code"], error["outcome"]) == (command, 999, "error")
    assert "RuntimeError" in json.dumps(error)
    assert json.loads(done.stderr) == error


def test_verbs_that_cannot_load_give_999(
    invoke: Callable[..., Outcome], make_conf: Callable[..., Any]
) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()

    def broken() -> Verbs:
        raise ImportError("no module named bcc")

    rc = skel.run(
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c",
            "CNI_NETNS": "/n",
            "CNI_IFNAME": "e",
            "CNI_PATH": "/p",
        },
        io.BytesIO(json.dumps(make_conf()).encode()),
        stdout,
        stderr,
        broken,
    )
    assert rc != 0
    assert json.loads(stdout.getvalue())["code"] == 999
    assert "Traceback" not in stdout.getvalue() + stderr.getvalue()


@pytest.mark.parametrize(
    ("command", "conf", "env"),
    [
        ("VERSION", None, {}),
        ("ADD", b"{", {}),
        ("ADD", None, {"CNI_IFNAME": None}),
        ("CHECK", {"cniVersion": "0.3.1"}, {}),
        ("ADD", None, {"CNI_ARGS": "FOO=1"}),
    ],
    ids=["version", "bad-json", "bad-env", "check-0.3.1", "cni-args"],
)
def test_no_verb_and_no_log_before_validation(
    command: str,
    conf: Any,
    env: dict[str, str | None],
    invoke: Callable[..., Outcome],
    make_conf: Callable[..., Any],
    tmp_path: Path,
) -> None:
    verbs = Verbs()
    stdin = conf if isinstance(conf, bytes) else make_conf(**(conf or {}))
    invoke(command, stdin, verbs, **env)
    assert verbs.calls == []
    assert not (tmp_path / "log.jsonl").exists()
