"""The agent's wire format and the exec'd plugin's front end, over real unix sockets (no root)."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
            # "hang-up": close without a word


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def _forward(command: str, state_dir: Path, **conf: object) -> tuple[int | None, bytes, bytes]:
    out, err = bytearray(), bytearray()
    stdin = json.dumps({"cniVersion": "1.0.0", "stateDir": str(state_dir), **conf}).encode()
    env = {b"CNI_COMMAND": command.encode(), b"CNI_CONTAINERID": b"c1"}
    rc = frontend.forward(env, stdin, out.extend, err.extend)
    return rc, bytes(out), bytes(err)


def test_forward_relays_the_agents_answer(state_dir: Path) -> None:
    agent = FakeAgent(state_dir / "agent.sock", "answer")
    assert _forward("ADD", state_dir) == (3, b"out\n", b"err\n")
    agent.thread.join(2)
    (request,) = agent.requests
    assert request.env["CNI_COMMAND"] == "ADD" and json.loads(request.stdin)["stateDir"] == str(state_dir)


def test_no_agent_or_not_its_state_dir_means_the_verb_runs_here(state_dir: Path) -> None:
    assert _forward("ADD", state_dir)[0] is None  # no socket
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(state_dir / "agent.sock"))  # bound, never listening: what a kill -9 leaves
    assert _forward("ADD", state_dir)[0] is None
    dead.close()
    os.unlink(state_dir / "agent.sock")
    FakeAgent(state_dir / "agent.sock", "not-mine")
    assert _forward("ADD", state_dir)[0] is None


@pytest.mark.parametrize("behaviour", ["hang", "hang-up"])
def test_an_agent_without_answer_means_try_again_but_del_runs_here(state_dir: Path, behaviour: str) -> None:
    FakeAgent(state_dir / "agent.sock", behaviour)
    rc, out, err = _forward("ADD", state_dir, agentTimeout=0.3)
    assert rc == 1
    error = json.loads(out)
    assert error["code"] == 11 and error["cniVersion"] == "1.0.0"
    assert str(state_dir / "agent.sock") in error["msg"]
    assert b"error 11" in err
    os.unlink(state_dir / "agent.sock")
    FakeAgent(state_dir / "agent.sock", behaviour)
    assert _forward("DEL", state_dir, agentTimeout=0.3)[0] is None


def test_version_and_garbage_never_go_to_the_agent(state_dir: Path) -> None:
    agent = FakeAgent(state_dir / "agent.sock", "answer")
    assert _forward("VERSION", state_dir)[0] is None
    out: bytearray = bytearray()
    assert frontend.forward({b"CNI_COMMAND": b"ADD"}, b"not json", out.extend, out.extend) is None
    assert agent.requests == []
