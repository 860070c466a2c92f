"""IPAM delegation (SPEC section 4) against the real host-local plugin, and fake ones."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt.cni import ipam, netconf
from cni_yogurt.cni.env import parse_env
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.ipam import IPAM
from cni_yogurt.cni.version import SUPPORTED_VERSIONS, at_least

ENVIRON = {
    "CNI_CONTAINERID": "ctr-1",
    "CNI_NETNS": "/var/run/netns/ctr-1",  # host-local never enters it
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-0",
}


def delegate(conf: dict[str, Any], cni_path: str | Path, *, stdin: bytes | None = None) -> IPAM:
    """The IPAM delegate of an ADD invocation with config `conf` and CNI_PATH `cni_path`."""
    environ = {**ENVIRON, "CNI_COMMAND": "ADD", "CNI_PATH": str(cni_path)}
    data = stdin if stdin is not None else json.dumps(conf).encode()
    return IPAM(netconf.parse(netconf.decode(data)), parse_env(environ), environ, data)


def ipam_error(call: Callable[[], object]) -> CNIError:
    with pytest.raises(CNIError) as exc:
        call()
    return exc.value


def conf_with_ipam(ipam: dict[str, Any], ver: str = "1.0.0") -> dict[str, Any]:
    return {"cniVersion": ver, "name": "testnet", "type": "yogurt", "ipam": ipam}


# -- the real host-local -----------------------------------------------------


def host_local_conf(ver: str, data_dir: Path) -> dict[str, Any]:
    return conf_with_ipam(
        {
            "type": "host-local",
            "dataDir": str(data_dir),
            "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd99::/64"}]],
        },
        ver,
    )


def leases(data_dir: Path) -> dict[str, str]:
    """host-local's reservations: one file per address, named after it, holding the container ID."""
    net_dir = data_dir / "testnet"
    out = {}
    for path in net_dir.iterdir() if net_dir.is_dir() else []:
        try:
            ipaddress.ip_address(path.name)
        except ValueError:
            continue  # lock, last_reserved_ip.N
        out[path.name] = path.read_text()
    return out


@pytest.mark.parametrize("ver", SUPPORTED_VERSIONS)
def test_host_local_dual_stack(ver: str, tmp_path: Path, host_local: Path) -> None:
    # Debian 12's host-local stops at 1.0.0: a 1.1.0 config is handed down as 1.0.0.
    data_dir = tmp_path / "ipam"
    ipam = delegate(host_local_conf(ver, data_dir), host_local.parent)

    result = ipam.add()
    addresses = [ip.address for ip in result.ips]
    assert sorted(a.version for a in addresses) == [4, 6]
    v4 = next(a for a in addresses if a.version == 4)
    v6 = next(a for a in addresses if a.version == 6)
    assert v4.network == ipaddress.ip_network("10.99.0.0/24")
    assert v6.network == ipaddress.ip_network("fd99::/64")
    assert {str(ip.gateway) for ip in result.ips} == {"10.99.0.1", "fd99::1"}

    held = leases(data_dir)
    assert set(held) == {str(v4.ip), str(v6.ip)}
    assert all(content.split()[0] == "ctr-1" for content in held.values()), held

    if at_least(ver, "0.4.0"):
        ipam.check()

    ipam.delete()
    assert leases(data_dir) == {}
    ipam.delete()  # DEL of what is already gone succeeds (SPEC: DEL is idempotent)

    if at_least(ver, "0.4.0"):
        err = ipam_error(ipam.check)  # host-local's own error, passed through
        assert "ctr-1" in err.msg


def test_host_local_second_container_gets_other_addresses(tmp_path: Path, host_local: Path) -> None:
    conf = host_local_conf("1.0.0", tmp_path)
    first = delegate(conf, host_local.parent).add()
    environ = {
        **ENVIRON,
        "CNI_CONTAINERID": "ctr-2",
        "CNI_COMMAND": "ADD",
        "CNI_PATH": str(host_local.parent),
    }
    data = json.dumps(conf).encode()
    second = IPAM(netconf.parse(conf), parse_env(environ), environ, data).add()
    assert {ip.address for ip in first.ips}.isdisjoint(ip.address for ip in second.ips)
    assert len(leases(tmp_path)) == 4


def test_release_frees_another_attachments_leases(tmp_path: Path, host_local: Path) -> None:
    """What GC does for each end it removes, with Debian's host-local (which has no GC)."""
    conf = host_local_conf("1.1.0", tmp_path)
    delegate(conf, host_local.parent).add()  # ctr-1/eth0
    environ = {
        **ENVIRON,
        "CNI_CONTAINERID": "ctr-2",
        "CNI_COMMAND": "ADD",
        "CNI_PATH": str(host_local.parent),
    }
    data = json.dumps(conf).encode()
    IPAM(netconf.parse(conf), parse_env(environ), environ, data).add()
    assert sorted(set(leases(tmp_path).values())) == ["ctr-1\neth0", "ctr-2\neth0"]
    gc_environ = {"CNI_COMMAND": "GC", "CNI_PATH": str(host_local.parent)}
    gc = IPAM(netconf.parse(conf), parse_env(gc_environ), gc_environ, data)
    gc.release("ctr-2", "eth0")
    assert set(leases(tmp_path).values()) == {"ctr-1\neth0"}


def test_host_local_error_passed_through(tmp_path: Path, host_local: Path) -> None:
    conf = conf_with_ipam({"type": "host-local", "dataDir": str(tmp_path), "ranges": "nope"})
    err = ipam_error(delegate(conf, host_local.parent).add)
    direct = subprocess.run(
        [host_local],
        input=json.dumps(conf).encode(),
        capture_output=True,
        timeout=30,
        check=False,
        env={**ENVIRON, "CNI_COMMAND": "ADD", "CNI_PATH": str(host_local.parent)},
    )
    assert direct.returncode != 0
    expected = json.loads(direct.stdout)
    assert (err.code, err.msg) == (expected["code"], expected["msg"])


# -- finding the plugin ------------------------------------------------------


def test_missing_plugin(tmp_path: Path) -> None:
    conf = conf_with_ipam({"type": "no-such-ipam"})
    for call in ("add", "check", "delete"):
        err = ipam_error(getattr(delegate(conf, f"{tmp_path}:{tmp_path / 'nope'}"), call))
        assert err.code == Code.INVALID_CONFIG
        assert "no-such-ipam" in err.msg


def test_non_executable_or_directory_is_not_a_plugin(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "fake-ipam").write_text("#!/bin/sh\nexit 0\n")  # mode 0644
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "fake-ipam").mkdir()
    conf = conf_with_ipam({"type": "fake-ipam"})
    err = ipam_error(delegate(conf, f"{tmp_path / 'a'}:{tmp_path / 'b'}").add)
    assert err.code == Code.INVALID_CONFIG
    assert "fake-ipam" in err.msg


# -- the protocol with fake delegates ----------------------------------------

RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1"}], "dns": {}}


def recorder_script(record: Path, tag: str = "", versions: tuple[str, ...] = SUPPORTED_VERSIONS) -> str:
    """A delegate that records every call but VERSION, which it answers with `versions`."""
    return f"""#!{sys.executable}
import json, os, sys
if os.environ["CNI_COMMAND"] == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": {list(versions)!r}}}))
    sys.exit(0)
data = sys.stdin.buffer.read()
with open({str(record)!r}, "a") as f:
    f.write(json.dumps({{"tag": {tag!r}, "stdin": data.decode(), "env": dict(os.environ)}}) + "\\n")
print({json.dumps(RESULT)!r})
"""


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("method", "verb"),
    [("add", "ADD"), ("check", "CHECK"), ("delete", "DEL"), ("gc", "GC"), ("status", "STATUS")],
)
def test_delegate_gets_our_stdin_and_verb(
    method: str, verb: str, tmp_path: Path, fake_plugin: Callable[[str, str], Path]
) -> None:
    record = tmp_path / "record.jsonl"
    plugin = fake_plugin("fake-ipam", recorder_script(record))
    # Odd formatting on purpose: the delegate must get these bytes, not a re-encoding.
    stdin = (
        b'{ "cniVersion":"1.1.0",\n  "name":"testnet", "type":"yogurt",\n'
        b'  "ipam": {"type": "fake-ipam", "x": [1, 2.50, "\\u00e9"]} }\n'
    )
    getattr(delegate({}, plugin.parent, stdin=stdin), method)()
    [rec] = records(record)
    assert rec["stdin"].encode() == stdin
    assert rec["env"]["CNI_COMMAND"] == verb
    for key, value in {**ENVIRON, "CNI_PATH": str(plugin.parent)}.items():
        assert rec["env"][key] == value


def test_add_parses_delegate_result(tmp_path: Path, fake_plugin: Callable[[str, str], Path]) -> None:
    plugin = fake_plugin("fake-ipam", recorder_script(tmp_path / "record.jsonl"))
    result = delegate(conf_with_ipam({"type": "fake-ipam"}), plugin.parent).add()
    assert [str(ip.address) for ip in result.ips] == ["10.1.2.3/24"]
    assert [str(ip.gateway) for ip in result.ips] == ["10.1.2.1"]


def test_first_plugin_in_cni_path_wins(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    dirs = []
    for tag in ("first", "second"):
        d = tmp_path / tag
        d.mkdir()
        (d / "fake-ipam").write_text(recorder_script(record, tag))
        (d / "fake-ipam").chmod(0o755)
        dirs.append(str(d))
    delegate(conf_with_ipam({"type": "fake-ipam"}), ":".join([str(tmp_path / "empty"), *dirs])).add()
    assert [r["tag"] for r in records(record)] == ["first"]


def failing_script(stdout: str, exit_code: int) -> str:
    return f"#!/bin/sh\ncat >/dev/null\nprintf '%s' '{stdout}'\nexit {exit_code}\n"


@pytest.mark.parametrize("method", ["add", "check", "delete"])
@pytest.mark.parametrize("code", [3, 11, 50, 107])
def test_delegate_error_passed_through(
    method: str, code: int, tmp_path: Path, fake_plugin: Callable[[str, str], Path]
) -> None:
    error = {"cniVersion": "1.0.0", "code": code, "msg": "pool exhausted", "details": "10.99.0.0/24"}
    plugin = fake_plugin("fake-ipam", failing_script(json.dumps(error), 1))
    err = ipam_error(getattr(delegate(conf_with_ipam({"type": "fake-ipam"}), plugin.parent), method))
    assert (err.code, err.msg, err.details) == (code, "pool exhausted", "10.99.0.0/24")


@pytest.mark.parametrize(
    ("stdout", "exit_code"),
    [
        ("this is not JSON", 0),
        ("", 0),
        ("[1, 2, 3]", 0),
        ('"a string"', 0),
        ('{"ips": [{"address": "not-an-ip"}]}', 0),
        ('{"ips": "10.1.2.3/24"}', 0),
        ("[" * 100_000, 0),
        ("this is not JSON", 1),
        ("", 2),
        ('{"msg": "no code"}', 1),
        ('{"code": "seven", "msg": "m"}', 1),
        ("[" * 100_000, 1),
    ],
    ids=[
        "garbage",
        "empty",
        "array",
        "string",
        "bad-address",
        "bad-ips",
        "deep",
        "garbage-exit1",
        "empty-exit2",
        "no-code-exit1",
        "bad-code-exit1",
        "deep-exit1",
    ],
)
def test_garbage_from_delegate(stdout: str, exit_code: int, fake_plugin: Callable[[str, str], Path]) -> None:
    plugin = fake_plugin("fake-ipam", failing_script(stdout, exit_code))
    err = ipam_error(delegate(conf_with_ipam({"type": "fake-ipam"}), plugin.parent).add)
    assert err.code == Code.IPAM_FAILED, err
    assert "fake-ipam" in err.msg
    if exit_code:
        assert f"exit {exit_code}" in err.msg


def test_delegate_stderr_is_ours_and_stdout_is_not(
    capfd: pytest.CaptureFixture[str], fake_plugin: Callable[[str, str], Path]
) -> None:
    script = f"#!/bin/sh\ncat >/dev/null\necho 'note from ipam' >&2\necho '{json.dumps(RESULT)}'\n"
    plugin = fake_plugin("fake-ipam", script)
    delegate(conf_with_ipam({"type": "fake-ipam"}), plugin.parent).add()
    out, err = capfd.readouterr()
    assert out == ""  # the delegate's result must not reach the runtime directly
    assert "note from ipam" in err


# -- delegates that speak an older spec --------------------------------------


def old_plugin_script(record: Path, supported: list[str]) -> str:
    """A delegate that, like Debian 12's host-local, refuses versions it does not know."""
    return f"""#!{sys.executable}
import json, os, sys
supported = {supported!r}
command = os.environ["CNI_COMMAND"]
data = sys.stdin.buffer.read()
with open({str(record)!r}, "a") as f:
    f.write(json.dumps({{"command": command, "stdin": data.decode()}}) + "\\n")
if command == "VERSION":
    print(json.dumps({{"cniVersion": supported[-1], "supportedVersions": supported}}))
    sys.exit(0)
version = json.loads(data)["cniVersion"]
if version not in supported:
    print(json.dumps({{"code": 1, "msg": "incompatible CNI versions", "details": version}}))
    sys.exit(1)
if command == "ADD":
    print(json.dumps({{"cniVersion": version, "ips": [{{"address": "10.1.2.3/24"}}]}}))
"""


OLD = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]


@pytest.mark.parametrize(("method", "verb"), [("add", "ADD"), ("check", "CHECK"), ("delete", "DEL")])
def test_older_delegate_gets_newest_common_version(
    method: str, verb: str, tmp_path: Path, fake_plugin: Callable[[str, str], Path]
) -> None:
    record = tmp_path / "record.jsonl"
    plugin = fake_plugin("old-ipam", old_plugin_script(record, OLD))
    conf = conf_with_ipam({"type": "old-ipam", "x": 1}, "1.1.0") | {"line": "l1"}
    getattr(delegate(conf, plugin.parent), method)()
    calls = records(record)
    assert [c["command"] for c in calls] == [verb, "VERSION", verb]
    assert json.loads(calls[0]["stdin"]) == conf
    assert json.loads(calls[2]["stdin"]) == conf | {"cniVersion": "1.0.0"}


@pytest.mark.parametrize("ver", [v for v in SUPPORTED_VERSIONS if v in OLD])
def test_delegate_speaking_our_version_is_called_once(
    ver: str, tmp_path: Path, fake_plugin: Callable[[str, str], Path]
) -> None:
    record = tmp_path / "record.jsonl"
    plugin = fake_plugin("old-ipam", old_plugin_script(record, OLD))
    delegate(conf_with_ipam({"type": "old-ipam"}, ver), plugin.parent).add()
    assert [c["command"] for c in records(record)] == ["ADD"]


@pytest.mark.parametrize(("method", "verb"), [("gc", "GC"), ("status", "STATUS")])
def test_1_1_verbs_not_forwarded_to_older_delegate(
    method: str, verb: str, tmp_path: Path, fake_plugin: Callable[[str, str], Path]
) -> None:
    record = tmp_path / "record.jsonl"
    plugin = fake_plugin("old-ipam", old_plugin_script(record, OLD))
    getattr(delegate(conf_with_ipam({"type": "old-ipam"}, "1.1.0"), plugin.parent), method)()
    # Only asked what it speaks: Debian 12's host-local (1.1.1) would answer an
    # unknown verb with "missing containerID", not with "unknown verb".
    assert [c["command"] for c in records(record)] == ["VERSION"]


def test_delegate_with_no_common_version(tmp_path: Path, fake_plugin: Callable[[str, str], Path]) -> None:
    plugin = fake_plugin("ancient-ipam", old_plugin_script(tmp_path / "record.jsonl", ["0.1.0", "0.2.0"]))
    err = ipam_error(delegate(conf_with_ipam({"type": "ancient-ipam"}, "1.0.0"), plugin.parent).add)
    assert err.code == Code.INCOMPATIBLE_VERSION
    assert "ancient-ipam" in err.msg


@pytest.mark.parametrize(
    "request_in",
    [
        {"runtimeConfig": {"ips": ["10.99.0.42/24"]}},  # the `ips` capability (podman, Multus, cnitool)
        {"args": {"cni": {"ips": ["10.99.0.42"]}}},  # CONVENTIONS args (Multus cni-args)
    ],
)
def test_host_local_assigns_the_requested_address(
    tmp_path: Path, host_local: Path, request_in: dict[str, Any]
) -> None:
    """The delegate gets the very config we got, request included, as CONVENTIONS say."""
    conf = {**host_local_conf("1.0.0", tmp_path), **request_in}
    conf["ipam"]["ranges"] = conf["ipam"]["ranges"][:1]
    result = delegate(conf, host_local.parent).add()
    assert [str(ip.address) for ip in result.ips] == ["10.99.0.42/24"]
    assert set(leases(tmp_path)) == {"10.99.0.42"}


def test_host_local_refuses_an_address_outside_its_ranges(tmp_path: Path, host_local: Path) -> None:
    conf = {**host_local_conf("1.0.0", tmp_path), "runtimeConfig": {"ips": ["10.98.0.1/24"]}}
    err = ipam_error(delegate(conf, host_local.parent).add)
    assert "10.98.0.1" in err.msg + err.details and leases(tmp_path) == {}


@pytest.mark.parametrize(
    ("cni_args", "delegate_gets"),
    [
        ("YOGURT_LINE=l;K8S_POD_NAME=web-0", ""),  # host-local would refuse K8S_POD_NAME here
        ("IgnoreUnknown=1;YOGURT_LINE=l;K8S_POD_NAME=web-0", "IgnoreUnknown=1;K8S_POD_NAME=web-0"),
        (
            "IgnoreUnknown=true;IP=10.99.0.7;MAC=02:00:00:00:00:01",
            "IgnoreUnknown=true;IP=10.99.0.7;MAC=02:00:00:00:00:01",
        ),
        ("IP=10.99.0.7;MAC=02:00:00:00:00:01", "IP=10.99.0.7"),  # host-local reads IP, not MAC
    ],
)
def test_the_delegate_gets_cni_args_it_can_take(tmp_path: Path, cni_args: str, delegate_gets: str) -> None:
    conf = conf_with_ipam({"type": "fake"})
    environ = {**ENVIRON, "CNI_ARGS": cni_args, "CNI_COMMAND": "ADD", "CNI_PATH": str(tmp_path)}
    data = json.dumps(conf).encode()
    ipam = IPAM(netconf.parse(conf), parse_env(environ), environ, data)
    assert ipam._environ["CNI_ARGS"] == delegate_gets


def test_a_resident_process_asks_an_older_delegate_its_versions_once(
    tmp_path: Path, host_local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian 12's host-local refuses 1.1.0: the first call costs three execs (refused, VERSION,
    again as 1.0.0); the node agent's next calls hand the config down at once, one exec each."""
    from cni_yogurt.cni import ipam as ipam_module

    execs: list[str] = []
    real = ipam_module.exec_delegate

    def counted(plugin: str, command: str, environ: Any, stdin: bytes) -> bytes:
        execs.append(command)
        return real(plugin, command, environ, stdin)

    monkeypatch.setattr(ipam_module, "exec_delegate", counted)
    monkeypatch.setattr(ipam_module, "_KNOWN_VERSIONS", {})
    conf = host_local_conf("1.1.0", tmp_path / "ipam")
    delegate(conf, host_local.parent).add()
    assert execs == ["ADD", "VERSION", "ADD"]
    execs.clear()
    delegate(conf, host_local.parent).delete()  # the next call in the same process
    assert execs == ["DEL"]
    assert leases(tmp_path / "ipam") == {}


def _host_local_dir(tmp_path: Any) -> tuple[bytes, Any]:
    stdin = json.dumps(
        {"cniVersion": "1.0.0", "name": "net1", "ipam": {"type": "host-local", "dataDir": str(tmp_path)}}
    )
    directory = tmp_path / "net1"
    directory.mkdir()
    (directory / "lock").write_text("")
    (directory / "10.1.0.2").write_text("container-a\neth0")  # a lease: kept
    (directory / "10.1.0.3").write_text("")  # a host-local killed between create and write
    (directory / "fd00::3").write_text("")
    (directory / "last_reserved_ip.0").write_text("")  # not a lease
    return stdin.encode(), directory


def test_mend_host_local_removes_only_empty_leases(tmp_path: Any) -> None:
    stdin, directory = _host_local_dir(tmp_path)
    assert sorted(ipam.mend_host_local(stdin)) == ["10.1.0.3", "fd00::3"]
    assert sorted(p.name for p in directory.iterdir()) == ["10.1.0.2", "last_reserved_ip.0", "lock"]


def test_mend_host_local_waits_for_no_one_and_touches_nothing_while_a_delegate_holds_the_lock(
    tmp_path: Any,
) -> None:
    import fcntl

    stdin, directory = _host_local_dir(tmp_path)
    with open(directory / "lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as host-local holds it for a whole allocation
        assert ipam.mend_host_local(stdin) == []
    assert (directory / "10.1.0.3").exists()
    assert sorted(ipam.mend_host_local(stdin)) == ["10.1.0.3", "fd00::3"]  # once it is free


def test_mend_host_local_without_its_directory_does_nothing(tmp_path: Any) -> None:
    stdin = json.dumps({"name": "net1", "ipam": {"type": "host-local", "dataDir": str(tmp_path)}}).encode()
    assert ipam.mend_host_local(stdin) == []
    assert ipam.mend_host_local(b"not json") == []
