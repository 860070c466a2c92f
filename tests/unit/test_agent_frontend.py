"""The agent's wire format and the exec'd plugin's front ends, over real unix sockets (no root).

Both front ends (frontend.py's forward, and the compiled one, agent/frontend.c, built here and
exec'd as a runtime does with a stand-in for yogurt-full beside it) face the same fake agents and
must decide alike."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni_yogurt import lab
from cni_yogurt.agent import frontend, protocol
from cni_yogurt.agent.frontend import ABSENT, ANSWERED, LOCAL, NO_ANSWER, NOT_MINE, RELAY, TRY_AGAIN, decide


def _recv_from(data: bytes) -> Callable[[int], bytes]:
    view = memoryview(data)
    pos = 0

    def recv(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + min(n, 3)])  # short reads, as a socket may give
        pos += len(chunk)
        return chunk

    return recv


def test_request_round_trips_bytes_that_are_not_utf8() -> None:
    env = {b"CNI_COMMAND": b"ADD", b"CNI_ARGS": b"K=V;X=\xff", b"EMPTY": b""}
    wire = protocol.encode_request(env, b'{"a": 1}')
    request = protocol.decode_request(protocol.read_frame(_recv_from(wire), protocol.MAX_REQUEST))
    assert request.kind == protocol.VERB
    assert request.stdin == b'{"a": 1}'
    # What os.environ would hold in the exec'd plugin: surrogate escapes for bytes that are not UTF-8.
    assert request.env == {"CNI_COMMAND": "ADD", "CNI_ARGS": "K=V;X=\udcff", "EMPTY": ""}


def test_answer_round_trips() -> None:
    for answer in (
        protocol.Answer(protocol.ANSWER, 1, b'{"code": 7}\n', b"error\n"),
        protocol.Answer(protocol.ANSWER, 0, b"", b""),
        protocol.Answer(protocol.NOT_MINE),
    ):
        wire = protocol.encode_answer(answer)
        assert protocol.decode_answer(protocol.read_frame(_recv_from(wire), protocol.MAX_ANSWER)) == answer


@pytest.mark.parametrize(
    "payload",
    [b"", b"X\0\0\0\0", b"V\0\0\0\xff", b"V\0\0\0\x03abc", b"V\0\0\0\x04=abc"],
    ids=["empty", "unknown kind", "env too long", "no equals", "empty key"],
)
def test_malformed_requests_are_refused(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_request(payload)


def test_frames_above_the_cap_or_cut_short_are_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match="more than"):
        protocol.read_frame(_recv_from((100).to_bytes(4, "big") + bytes(100)), 99)
    with pytest.raises(protocol.ProtocolError, match="closed"):
        protocol.read_frame(_recv_from((10).to_bytes(4, "big") + b"abc"), 99)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_answer(b"R\0\0\1\0\0\0\0\0")  # exit code 256


@pytest.mark.parametrize(
    ("command", "outcome", "action"),
    [
        ("ADD", ANSWERED, RELAY),
        ("DEL", ANSWERED, RELAY),
        ("ADD", ABSENT, LOCAL),
        ("DEL", ABSENT, LOCAL),
        ("ADD", NOT_MINE, LOCAL),
        ("ADD", NO_ANSWER, TRY_AGAIN),
        ("CHECK", NO_ANSWER, TRY_AGAIN),
        ("GC", NO_ANSWER, TRY_AGAIN),
        ("STATUS", NO_ANSWER, TRY_AGAIN),
        ("DEL", NO_ANSWER, LOCAL),  # a DEL never fails because the agent is down
    ],
)
def test_decide(command: str, outcome: str, action: str) -> None:
    assert decide(command, outcome) == action


def test_peek_config() -> None:
    assert frontend.peek_config(b' \n{"stateDir": "/x", "n": [1, 2.5, null, true]}\n') == {
        "stateDir": "/x",
        "n": [1, 2.5, None, True],
    }
    for bad in (
        b"",
        b"[]",
        b"{",
        b'{"a": 1} x',
        b"\xff",
        b"nul",
        b'{"cniVersion": "1.0.0", ',
        b"[" * 100_000,
    ):
        assert frontend.peek_config(bad) is None, bad


def test_socket_path_and_timeout_from_the_config() -> None:
    assert frontend.socket_path({}) == "/run/cni-yogurt/agent.sock"
    assert frontend.socket_path({"stateDir": "/tmp/s/"}) == "/tmp/s/agent.sock"
    assert frontend.socket_path({"stateDir": 5}) is None
    assert frontend.socket_path({"stateDir": "a\0b"}) is None
    assert frontend.answer_timeout({"agentTimeout": 2.5}) == 2.5
    for bad in (0, -1, True, "5", 10**9):
        assert frontend.answer_timeout({"agentTimeout": bad}) == frontend.DEFAULT_ANSWER_TIMEOUT


class FakeAgent:
    """A unix socket that behaves as told: answer, refuse (not mine), hang, or hang up."""

    def __init__(self, path: Path, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests: list[protocol.Request] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self.requests.append(
                protocol.decode_request(protocol.read_frame(conn.recv, protocol.MAX_REQUEST))
            )
            if self.behaviour == "answer":
                conn.sendall(protocol.encode_answer(protocol.Answer(protocol.ANSWER, 3, b"out\n", b"err\n")))
            elif self.behaviour == "not-mine":
                conn.sendall(protocol.encode_answer(protocol.Answer(protocol.NOT_MINE)))
            elif self.behaviour == "hang":
                conn.recv(1)  # until the client gives up
            elif self.behaviour == "garbage":
                conn.sendall(protocol.frame(b"Z?"))
            # "hang-up": close without a word


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@dataclass
class Call:
    """What one front end made of one call."""

    local: bool  # the verb runs here: forward() gave None / the compiled one exec'd yogurt-full
    rc: int | None
    out: bytes
    err: bytes
    told_no_agent: bool = False  # compiled: yogurt-full was told the agent has been asked
    full_stdin: bytes = b""  # compiled: what yogurt-full read


# yogurt-full for the compiled front end's tests: records what it was given, in $STUB_OUT.
STUB = """#!/bin/sh
cat > "$STUB_OUT/stdin"
printf '%s' "${YOGURT_NO_AGENT-}" > "$STUB_OUT/no_agent"
printf '%s\\n' "$@" > "$STUB_OUT/argv"
echo full-ran
exit 42
"""


class Front:
    """frontend.forward, or the compiled front end exec'd as a runtime does; one interface."""

    def __init__(self, kind: str, build_dir: Path) -> None:
        self.kind = kind
        if kind == "compiled":
            stub = build_dir / "stub.sh"
            stub.write_text(STUB, encoding="utf-8")
            self.exe = lab.compiled_front(str(build_dir / "bin"), ["/bin/sh", str(stub)])

    def call(self, env: dict[bytes, bytes], stdin: bytes, tmp: Path, argv: tuple[str, ...] = ()) -> Call:
        if self.kind == "python":
            out, err = bytearray(), bytearray()
            rc = frontend.forward(env, stdin, out.extend, err.extend)
            return Call(rc is None, rc, bytes(out), bytes(err))
        record = Path(tempfile.mkdtemp(dir=tmp))
        proc = subprocess.run(
            [self.exe, *argv],
            input=stdin,
            env={**env, b"STUB_OUT": bytes(record)},
            capture_output=True,
            timeout=30,
        )
        ran = (record / "stdin").exists()
        return Call(
            ran,
            None if ran else proc.returncode,
            proc.stdout,
            proc.stderr,
            ran and (record / "no_agent").read_bytes() == b"1",
            (record / "stdin").read_bytes() if ran else b"",
        )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Front:
    return Front("compiled", tmp_path_factory.mktemp("front"))


@pytest.fixture(params=["python", "compiled"])
def front(request: pytest.FixtureRequest) -> Front:
    return Front("python", Path()) if request.param == "python" else request.getfixturevalue("compiled")


def _config(state_dir: Path, **conf: object) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "stateDir": str(state_dir), **conf}).encode()


def _forward(front: Front, command: str, state_dir: Path, **conf: object) -> Call:
    env = {b"CNI_COMMAND": command.encode(), b"CNI_CONTAINERID": b"c1", b"CNI_ARGS": b"K=\xff"}
    stdin = _config(state_dir, **conf)
    call = front.call(env, stdin, state_dir)
    if call.local and front.kind == "compiled":
        assert call.full_stdin == stdin, "yogurt-full got another config than the runtime's"
    return call


def test_forward_relays_the_agents_answer(front: Front, state_dir: Path) -> None:
    agent = FakeAgent(state_dir / "agent.sock", "answer")
    call = _forward(front, "ADD", state_dir)
    assert (call.local, call.rc, call.out, call.err) == (False, 3, b"out\n", b"err\n")
    agent.thread.join(2)
    (request,) = agent.requests
    assert request.env["CNI_COMMAND"] == "ADD" and json.loads(request.stdin)["stateDir"] == str(state_dir)
    assert request.env["CNI_ARGS"] == "K=\udcff", "the environment's bytes as exec'd"


def test_no_agent_or_not_its_state_dir_means_the_verb_runs_here(front: Front, state_dir: Path) -> None:
    call = _forward(front, "ADD", state_dir)  # no socket
    assert call.local and (front.kind == "python" or call.told_no_agent)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(state_dir / "agent.sock"))  # bound, never listening: what a kill -9 leaves
    assert _forward(front, "ADD", state_dir).local
    dead.close()
    os.unlink(state_dir / "agent.sock")
    FakeAgent(state_dir / "agent.sock", "not-mine")
    call = _forward(front, "ADD", state_dir)
    assert call.local and (front.kind == "python" or call.told_no_agent)


@pytest.mark.parametrize("behaviour", ["hang", "hang-up", "garbage"])
def test_an_agent_without_answer_means_try_again_but_del_runs_here(
    front: Front, state_dir: Path, behaviour: str
) -> None:
    FakeAgent(state_dir / "agent.sock", behaviour)
    started = time.monotonic()
    call = _forward(front, "ADD", state_dir, agentTimeout=0.3)
    assert time.monotonic() - started < 10
    assert not call.local and call.rc == 1
    error = json.loads(call.out)
    assert error["code"] == 11 and error["cniVersion"] == "1.0.0"
    assert str(state_dir / "agent.sock") in error["msg"]
    assert b"error 11" in call.err
    os.unlink(state_dir / "agent.sock")
    FakeAgent(state_dir / "agent.sock", behaviour)
    call = _forward(front, "DEL", state_dir, agentTimeout=0.3)
    assert call.local and (front.kind == "python" or call.told_no_agent)


def test_version_and_garbage_never_go_to_the_agent(front: Front, state_dir: Path) -> None:
    agent = FakeAgent(state_dir / "agent.sock", "answer")
    assert _forward(front, "VERSION", state_dir).local
    for garbage in (b"not json", b"", b"[]", b'{"stateDir": 5}', b'{"a": 1} x', b"[" * 100_000):
        call = front.call({b"CNI_COMMAND": b"ADD"}, garbage, state_dir)
        assert call.local, garbage
    assert agent.requests == []


def test_compiled_front_leaves_what_it_does_not_read_to_yogurt_full(compiled: Front, state_dir: Path) -> None:
    """Configs the scanner does not read go to yogurt-full as they came, not told anything: its own
    front end decides (and may forward them)."""
    agent = FakeAgent(state_dir / "agent.sock", "answer")
    for config in (
        b'{"st\\u0061teDir": "/elsewhere"}',  # stateDir, spelled with an escape
        f'{{"stateDir": "{state_dir}\\/"}}'.encode(),
        '{"name": "caf\u00e9"}'.encode(),  # not ASCII
        b'{"n": NaN}',  # Python's json takes it; the scanner does not
        b'{"n": 01}',
        b'{"a": "\t"}',  # a raw control character in a string
    ):
        call = compiled.call({b"CNI_COMMAND": b"ADD"}, config, state_dir)
        assert call.local and not call.told_no_agent and call.full_stdin == config, config
    assert agent.requests == []
    # What it does read, it reads right: nested values, escapes elsewhere, whitespace, duplicates.
    config = (
        b' {"x": {"stateDir": "/no"}, "y": ["\\"", 1.5e3, -0, true, null], "stateDir": "/no",\n'
        + f'"stateDir": "{state_dir}//", "agentTimeout": 2}}\n'.encode()
    )
    call = compiled.call({b"CNI_COMMAND": b"CHECK"}, config, state_dir)
    assert (call.local, call.rc) == (False, 3)
    agent.thread.join(2)
    assert agent.requests[0].stdin == config


def test_compiled_front_passes_admin_commands_and_version_through(compiled: Front, tmp_path: Path) -> None:
    call = compiled.call({}, b"typed by hand", tmp_path, ("status", "--json"))
    assert call.local and call.full_stdin == b"typed by hand", "stdin is yogurt-full's to read"
    call = compiled.call({b"CNI_COMMAND": b"VERSION"}, b'{"cniVersion": "1.0.0"}', tmp_path)
    assert call.local and call.full_stdin == b'{"cniVersion": "1.0.0"}' and not call.told_no_agent


def test_compiled_front_without_yogurt_full_says_so(tmp_path: Path) -> None:
    front = lab.compiled_front(str(tmp_path), ["true"])
    os.unlink(tmp_path / "yogurt-full")
    proc = subprocess.run(
        [front], input=b"{}", env={"CNI_COMMAND": "ADD"}, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode != 0 and b"yogurt-full" in proc.stderr
    assert json.loads(proc.stdout)["code"] == 999


def test_told_no_agent_the_entry_point_does_not_ask_again(state_dir: Path) -> None:
    """What the compiled front end relies on when it execs yogurt-full after asking the agent."""
    agent = FakeAgent(state_dir / "agent.sock", "answer")
    env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": ""}
    config = _config(state_dir, name="n", type="yogurt")
    run = [sys.executable, "-m", "cni_yogurt"]
    told = subprocess.run(
        run, input=config, env={**env, "YOGURT_NO_AGENT": "1"}, capture_output=True, timeout=60
    )
    assert agent.requests == [] and told.returncode != 0, "ran here: no netns is an error of its own"
    asked = subprocess.run(run, input=config, env=env, capture_output=True, timeout=60)
    assert (asked.returncode, asked.stdout) == (3, b"out\n") and len(agent.requests) == 1


def test_a_swamped_agent_means_the_verb_runs_here_at_once(front: Front, state_dir: Path) -> None:
    """A full listen backlog (nobody accepting): a unix connect fails at once, for both front ends."""
    swamped = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    swamped.bind(str(state_dir / "agent.sock"))
    swamped.listen(0)
    waiting = []
    with contextlib.suppress(BlockingIOError):
        for _ in range(8):  # fill the backlog: the kernel's limit is a little above listen()'s
            waiting.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK))
            waiting[-1].connect(str(state_dir / "agent.sock"))
    started = time.monotonic()
    call = _forward(front, "ADD", state_dir, agentTimeout=30)
    assert call.local and time.monotonic() - started < 5
    for sock in (*waiting, swamped):
        sock.close()


# -- the compiled scanner against Python's json, on the same bytes -------------------------------

_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)
_TIMEOUTS = st.integers(-5, 5000) | st.floats(-1.0, 1e5) | st.booleans() | st.text(max_size=3) | st.none()
_PATHS = st.text(max_size=20) | st.just("/run/x//") | st.just("/")


@st.composite
def _configs(draw: st.DrawFn) -> bytes:
    obj: dict[str, object] = draw(st.dictionaries(st.text(max_size=8), _VALUES, max_size=4))
    for key, values in (("stateDir", _PATHS | _VALUES), ("agentTimeout", _TIMEOUTS), ("cniVersion", _PATHS)):
        if draw(st.booleans()):
            obj[key] = draw(values)
    text = json.dumps(
        obj,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 0, 2])),
        separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])),
    )
    raw = draw(st.sampled_from(["", " ", "\n\t"])) + text + draw(st.sampled_from(["", "\n", " \r\n"]))
    data = raw.encode()
    # Now and then cut short, a byte put in, or something after the object.
    damage = draw(st.sampled_from(["none", "none", "cut", "insert", "append"]))
    at = draw(st.integers(0, len(data)))
    if damage == "cut":
        return data[:at]
    if damage == "insert":
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at:]
    if damage == "append":
        return data + draw(st.sampled_from([b"x", b"}", b",", b"{}", b"0", b"\0", b"\f"]))
    return data


def _refusal_explained(data: bytes, parsed: dict[str, object]) -> bool:
    """Why the compiled scanner may leave a config Python reads to yogurt-full (frontend.c)."""

    def non_finite(v: object) -> bool:
        if isinstance(v, float):
            return v != v or v in (float("inf"), float("-inf"))
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        return any(non_finite(c) for c in children)

    return (
        not data.isascii()
        or b"\\" in data  # an escape: one in a key or in stateDir/cniVersion is refused
        or any(k in parsed and not isinstance(parsed[k], str) for k in ("stateDir", "cniVersion"))
        or non_finite(parsed)
    )


@pytest.fixture(scope="module")
def scanner(tmp_path_factory: pytest.TempPathFactory) -> str:
    return lab.build_front(str(tmp_path_factory.mktemp("scan") / "scan"), "FRONTEND_SCAN_ONLY")


@settings(max_examples=300, deadline=None, derandomize=os.environ.get("YOGURT_FUZZ_RANDOM") != "1")
@given(data=_configs())
def test_the_compiled_scanner_reads_configs_as_python_does(scanner: str, data: bytes) -> None:
    """Whatever it reads, it reads as frontend.py would: the same socket, timeout and version; what
    it does not, it has one of its documented reasons for. (Were it ever wrong about stateDir, the
    agent it reached would still answer "not mine": the agent checks the config's stateDir too.)"""
    scanned = json.loads(subprocess.run([scanner], input=data, capture_output=True, check=True).stdout)
    parsed = frontend.peek_config(data)
    if scanned is None:
        assert parsed is None or _refusal_explained(data, parsed), data
        return
    assert parsed is not None, f"read what Python refuses: {data!r}"
    assert scanned.get("stateDir") == parsed.get("stateDir"), data
    assert frontend.socket_path(scanned) == frontend.socket_path(parsed)
    assert scanned["agentTimeout"] == frontend.answer_timeout(parsed), data
    assert scanned.get("cniVersion") == parsed.get("cniVersion"), data
