"""Hostile input through the real executable, and what a non-root user can reach of the node's state.

Every hostile name gets its spec code (docs/configuration.md, CNI protocol), a non-zero exit, error JSON on
stdout, no traceback, and leaves nothing: no device (on the host or in the container's netns), no link
pin, no map entry, no line end, no IP lease.  Names at the limit (a 15-byte CNI_IFNAME, a 1000-byte
container id) are valid: ADD works and DEL takes everything away again.

Runs once, with the backend the plugin picks ("mode": "auto").
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LOG_FILE, STATE_DIR, Node

from cni_yogurt import lab
from cni_yogurt.datapath import PairMap, Pins, pinned_link_names, unload
from cni_yogurt.kernel import bpf
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.line import naming

pytestmark = pytest.mark.runtime

NOBODY = 65534


def refused(run: lab.PluginRun, code: int) -> None:
    """Failed the way the spec says: error JSON with `code` on stdout, non-zero exit, no traceback."""
    assert run.rc != 0, f"exit 0 for hostile input: {run.out}"
    assert {"cniVersion", "code", "msg"} <= set(run.out), run.out
    assert run.out["code"] == code, run.out
    assert "Traceback" not in run.stderr, run.stderr


def container_devices(ns: lab.Netns) -> list[str]:
    """Every device in the netns but lo."""
    links = json.loads(ns.run("ip", "-j", "link", "show").stdout)
    return [link["ifname"] for link in links if link["ifname"] != "lo"]


def host_device_exists(name: str) -> bool:
    with Rtnl() as nl:
        return nl.link(name) is not None


def nothing_of(node: Node, container_id: str, ifname: str) -> None:
    """The node fixture watches `eth0` ends; this one watches any name."""
    host = naming.host_ifname(container_id, ifname)
    assert not host_device_exists(host), f"{host} left behind"
    assert host not in pinned_link_names(node.pins), f"link pins of {host} left behind"
    assert f"{container_id}/{ifname}" not in node.registry.snapshot()


# -- CNI_IFNAME ------------------------------------------------------------------

VALID_IFNAMES = ["x" * 15, "é" * 7 + "a", "net1.100", "eth-0_1@x"]


@pytest.mark.parametrize("ifname", VALID_IFNAMES, ids=["15-bytes", "15-bytes-unicode", "dots", "punct"])
def test_an_ifname_at_the_limit_works_and_del_takes_it_away(node: Node, ifname: str) -> None:
    conf = node.conf()
    one = node.netns()
    result = node.add(conf, one, ifname=ifname)
    assert result["interfaces"][1]["name"] == ifname
    assert container_devices(one) == [ifname]
    run = node.run("CHECK", {**conf, "prevResult": result}, one, ifname=ifname)
    assert run.rc == 0, run.out
    node.delete(conf, one, ifname=ifname)
    assert container_devices(one) == []
    nothing_of(node, one.name, ifname)


BAD_IFNAMES = {
    "16-bytes": "x" * 16,
    "long": "x" * 200,
    "16-bytes-unicode": "é" * 8,
    "lo": "lo",
    "dot": ".",
    "dotdot": "..",
    "slash": "a/b",
    "traversal": "../eth0",
    "colon": "eth0:1",
    "space": "eth 0",
    "leading-space": " eth0",
    "tab": "eth0\t",
    "newline": "eth0\n",
    "unicode-space": "eth\u00a00",
    "not-utf8": os.fsdecode(b"eth\xff0"),
}


@pytest.mark.parametrize("ifname", list(BAD_IFNAMES.values()), ids=list(BAD_IFNAMES))
def test_a_hostile_ifname_is_code_4_and_leaves_nothing(node: Node, ifname: str) -> None:
    conf = node.conf()
    one = node.netns()
    refused(node.run("ADD", conf, one, ifname=ifname), 4)
    assert container_devices(one) == []
    refused(node.run("CHECK", {**conf, "prevResult": {"cniVersion": "1.1.0"}}, one, ifname=ifname), 4)
    refused(node.run("DEL", conf, one, ifname=ifname), 4)
    with contextlib.suppress(UnicodeEncodeError):  # a name that is no text has no device either
        nothing_of(node, one.name, ifname)


# -- CNI_CONTAINERID ---------------------------------------------------------------


def test_a_1000_byte_container_id_works_and_del_takes_it_away(node: Node) -> None:
    conf = node.conf()
    one = node.netns()
    cid = "c" * 1000
    node.runtime_ids.add(cid)  # watched by the node fixture like its namespaces
    result = node.add(conf, one, container_id=cid)
    assert result["interfaces"][0]["name"] == naming.host_ifname(cid, "eth0")
    assert len(result["interfaces"][0]["name"].encode()) <= 15
    assert f"{cid}/eth0" in node.ends()
    node.delete(conf, one, container_id=cid)
    nothing_of(node, cid, "eth0")


BAD_IDS = {
    "1000-slash": "c" * 999 + "/",
    "1000-traversal": "../" + "c" * 997,
    "1000-leading-dash": "-" + "c" * 999,
    "1000-space": "c" * 500 + " " + "c" * 499,
    "1000-unicode": "é" * 500,
    "not-utf8": os.fsdecode(b"ctr\xff"),
    "dotdot": "..",
}


@pytest.mark.parametrize("cid", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_a_hostile_container_id_is_code_4_and_leaves_nothing(node: Node, cid: str) -> None:
    conf = node.conf()
    one = node.netns()
    refused(node.run("ADD", conf, one, container_id=cid), 4)
    refused(node.run("DEL", conf, one, container_id=cid), 4)
    assert container_devices(one) == []
    with contextlib.suppress(UnicodeEncodeError):
        nothing_of(node, cid, "eth0")


# -- YOGURT_LINE -------------------------------------------------------------------

BAD_LINES = {
    "slash": "a/b",
    "traversal": "../../etc",
    "absolute": "/etc/passwd",
    "dot": ".",
    "dotdot": "..",
    "backslash": "a\\b",
    "control": "a\x01b",
    "escape": "a\x1b[2Jb",
    "percent-nul": "a%00b",
    "shell": "$(reboot)",
    "tilde": "~root",
    "equals": "a=b",
    "space": "a b",
    "65-bytes": "x" * 65,
    "unicode": "lïne",
    "not-utf8": os.fsdecode(b"line\xff"),
}


@pytest.mark.parametrize("line", list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_a_hostile_yogurt_line_is_refused_and_leaves_nothing(node: Node, line: str) -> None:
    """docs/configuration.md: a bad line name is code 7 (invalid config), wherever it comes from."""
    conf = node.conf()
    one = node.netns()
    refused(node.run("ADD", conf, one, cni_args=f"YOGURT_LINE={line}"), 7)
    assert container_devices(one) == []
    assert node.run("DEL", conf, one, cni_args=f"YOGURT_LINE={line}").rc == 0  # DEL has no line to mind


def test_dots_inside_a_line_name_are_only_a_name(node: Node) -> None:
    """`a..b` is a valid line: it names nothing on disk, so it opens no path."""
    conf = node.conf()
    one = node.netns()
    before = set(os.listdir(STATE_DIR))
    result = node.add(conf, one, cni_args="YOGURT_LINE=a..b")
    assert result["yogurt"]["line"] == "a..b"
    assert set(os.listdir(STATE_DIR)) <= before | {"lines", "ends", "lines.lock"}
    # The line's file is named by a digest of the line, never by the line itself.
    assert all(
        len(name) == 37 and name.endswith(".json") for name in os.listdir(os.path.join(STATE_DIR, "lines"))
    )
    node.delete(conf, one, cni_args="YOGURT_LINE=a..b")


# -- CNI_NETNS ---------------------------------------------------------------------


@pytest.fixture
def not_a_netns(tmp_path: Path) -> dict[str, str]:
    """Paths that are anything but a network namespace."""
    regular = tmp_path / "regular"
    regular.write_text("not a netns\n")
    directory = tmp_path / "dir"
    directory.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block for ever
    link = tmp_path / "link-to-dir"
    link.symlink_to(directory)
    return {
        "regular-file": str(regular),
        "directory": str(directory),
        "fifo": str(fifo),
        "symlink-to-directory": str(link),
        "uts-namespace": "/proc/self/ns/uts",
        "char-device": "/dev/null",
        "relative": "netns",
        "missing": str(tmp_path / "gone"),
    }


NETNS_KINDS = [
    "regular-file",
    "directory",
    "fifo",
    "symlink-to-directory",
    "uts-namespace",
    "char-device",
    "relative",
    "missing",
]


@pytest.mark.parametrize("kind", NETNS_KINDS)
def test_a_netns_that_is_no_netns_is_code_4_and_leaves_nothing(
    node: Node, not_a_netns: dict[str, str], kind: str
) -> None:
    conf = node.conf()
    cid = f"yt-{node.tag}-{kind}"
    node.runtime_ids.add(cid)
    path = not_a_netns[kind]
    run = lab.run_plugin("ADD", conf, container_id=cid, netns=path, cni_path=node.cni_path)
    refused(run, 4)
    assert "netns" in run.out["msg"]
    prev = {**conf, "prevResult": {"cniVersion": "1.1.0"}}
    refused(lab.run_plugin("CHECK", prev, container_id=cid, netns=path, cni_path=node.cni_path), 4)
    # DEL never enters the netns: nothing was added, so nothing to do, and that is success.
    run = lab.run_plugin("DEL", conf, container_id=cid, netns=path, cni_path=node.cni_path)
    assert run.rc == 0, run.out
    if kind == "regular-file":
        assert Path(path).read_text() == "not a netns\n"


# -- what a non-root user can reach -------------------------------------------------


def as_nobody(attempts: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Run each attempt in a forked child that is uid/gid 65534 with no groups:
    "allowed", or the errno name it failed with."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child)
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answers = {}
            for what, attempt in attempts.items():
                try:
                    attempt()
                    answers[what] = "allowed"
                except OSError as exc:
                    answers[what] = errno.errorcode.get(exc.errno or 0, str(exc))
            os.write(write_end, json.dumps(answers).encode())
        except BaseException as exc:  # noqa: BLE001
            os.write(write_end, json.dumps({"child": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def _open_close(path: str, flags: int) -> None:
    os.close(os.open(path, flags))


def _obj_get(path: str) -> None:
    os.close(bpf.obj_get(path))


def _create_in(directory: str) -> None:
    path = os.path.join(directory, "nobody-was-here")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.unlink(path)


def attempts_on(pins: Pins, state_dir: str, log_file: str) -> dict[str, Callable[[], object]]:
    lines_dir = os.path.join(state_dir, "lines")
    lines = os.path.join(lines_dir, sorted(os.listdir(lines_dir))[0])
    return {
        "open the pairing map": lambda: _obj_get(pins.pairs),
        "open the guard program": lambda: _obj_get(pins.prog("primary")),
        "write a line file": lambda: _open_close(lines, os.O_WRONLY),
        "create a file among the line files": lambda: _create_in(lines_dir),
        "create a file in the state dir": lambda: _create_in(state_dir),
        "make a directory among the pins": lambda: os.mkdir(os.path.join(pins.root, "nobody")),
        "write the log file": lambda: _open_close(log_file, os.O_WRONLY | os.O_APPEND),
    }


@contextlib.contextmanager
def unprivileged_bpf_allowed() -> Iterator[bool]:
    """kernel.unprivileged_bpf_disabled=0 for the block if it is 2 (Debian's default, which
    refuses every bpf() call of non-root): then only the pins' own modes stand in the way.
    Yields False where it cannot be lowered (1 is sticky until reboot)."""
    knob = Path("/proc/sys/kernel/unprivileged_bpf_disabled")
    before = knob.read_text().strip()
    if before == "0":
        yield True
        return
    if before != "2":
        yield False
        return
    knob.write_text("0")
    try:
        yield True
    finally:
        knob.write_text(before)


def test_nobody_can_neither_open_the_map_nor_change_line_state(node: Node) -> None:
    conf = node.conf()
    one = node.netns()
    node.add(conf, one)  # the pins, lines.json and the log all exist
    try:
        with unprivileged_bpf_allowed() as meaningful:
            answers = as_nobody(attempts_on(node.pins, STATE_DIR, LOG_FILE))
        assert "child" not in answers, answers
        assert {k for k, v in answers.items() if v == "allowed"} == set(), answers
        if meaningful:  # refused by the file modes, not by the sysctl
            assert answers["open the pairing map"] == "EACCES", answers
    finally:
        node.delete(conf, one)


@pytest.fixture
def fresh_node(node: Node) -> Iterator[dict[str, str]]:
    """State dir, pins and log the plugin has to create itself; removed afterwards."""
    where = {
        "stateDir": f"/run/yg-hostile-{node.tag}",
        "bpffsDir": f"/sys/fs/bpf/yg-hostile-{node.tag}",
        "logFile": f"/tmp/yg-hostile-{node.tag}.log",
    }
    try:
        yield where
    finally:
        unload(Pins.under(where["bpffsDir"]))
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(where["bpffsDir"])
        shutil.rmtree(where["stateDir"], ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where["logFile"])


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_what_the_plugin_creates_is_root_only_whatever_the_umask(
    node: Node, fresh_node: dict[str, str]
) -> None:
    """Under umask 000 (a careless runtime) the first ADD still makes its state root-only."""
    conf = node.conf(**fresh_node)
    pins = Pins.under(fresh_node["bpffsDir"])
    umask_000 = ["sh", "-c", 'umask 000 && exec "$0" "$@"', *lab.self_command()]
    one = node.netns()
    run = node.run("ADD", conf, one, exe=umask_000)
    assert run.rc == 0, (run.out, run.stderr)
    try:
        state = fresh_node["stateDir"]
        assert mode(state) == 0o700
        assert mode(os.path.join(state, "lines")) == 0o700 and mode(os.path.join(state, "ends")) == 0o700
        for sub in ("lines", "ends"):
            for name in os.listdir(os.path.join(state, sub)):
                assert mode(os.path.join(state, sub, name)) == 0o600
        assert mode(fresh_node["logFile"]) & 0o137 == 0  # at most 0640
        assert mode(fresh_node["bpffsDir"]) == 0o700 and mode(pins.root) == 0o700
        assert mode(pins.pairs) & 0o077 == 0
        with unprivileged_bpf_allowed():
            answers = as_nobody(attempts_on(pins, state, fresh_node["logFile"]))
        assert "child" not in answers, answers
        assert {k for k, v in answers.items() if v == "allowed"} == set(), answers
        assert answers["open the pairing map"] in ("EACCES", "EPERM"), answers
    finally:
        run = node.run("DEL", conf, one, exe=umask_000)
        assert run.rc == 0, run.out
    with PairMap(pins) as pairs:
        assert dict(pairs.items()) == {}


def test_a_pin_dir_someone_else_made_is_refused(node: Node, fresh_node: dict[str, str]) -> None:
    """/sys/fs/bpf is world-writable: a bpffsDir that nobody made first is not trusted with the map."""
    squatted = fresh_node["bpffsDir"]
    answers = as_nobody({"mkdir": lambda: os.mkdir(squatted, 0o777)})
    if answers.get("mkdir") != "allowed":
        pytest.skip(f"nobody cannot create {squatted} here: {answers}")
    conf = node.conf(**fresh_node)
    one = node.netns()
    try:
        run = node.run("ADD", conf, one)
        refused(run, 102)
        assert "owned by uid 65534" in run.out["details"], run.out
        assert container_devices(one) == []
        assert os.listdir(squatted) == []  # nothing pinned into it
    finally:
        assert node.run("DEL", conf, one).rc == 0
