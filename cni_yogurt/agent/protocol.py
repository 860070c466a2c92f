"""The agent's wire format: one request, one answer, each a length-prefixed frame.

Pure and import-free on purpose: the exec'd plugin's front end (frontend.py)
imports it on the hot path of every ADD/DEL, where `import json` or `struct`
would already cost more than the framing does.

    frame     = length (4 bytes, big-endian) + payload, payload <= the receiver's cap
    request   = kind (b"V": a CNI verb, b"I": who are you) + env length (4 bytes)
                + env (b"KEY=VALUE" joined by NUL: the plugin's environment, bytes as
                exec'd) + stdin (the rest: the network config, as the runtime wrote it)
    answer    = b"R" + exit code (4 bytes) + stdout length (4 bytes) + stdout + stderr (the rest)
              | b"N": not this agent's stateDir, run the verb yourself
              | b"I" + JSON about the agent (pid, version, start time)

Bytes, not JSON, because the environment is bytes: a value that is not UTF-8
reaches the verbs exactly as it would without the agent.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing alone costs the hot path ~10 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MAX_REQUEST = 4 << 20  # a config with a big prevResult is a few kB; anything near this is garbage
MAX_ANSWER = 16 << 20
VERB, INFO = b"V", b"I"
ANSWER, NOT_MINE = b"R", b"N"
SOCKET_NAME = "agent.sock"


class ProtocolError(Exception):
    """A frame that is short, oversized or malformed."""


class Request:
    __slots__ = ("kind", "env", "stdin")

    def __init__(self, kind: bytes, env: dict[str, str], stdin: bytes) -> None:
        self.kind, self.env, self.stdin = kind, env, stdin


class Answer:
    __slots__ = ("kind", "code", "stdout", "stderr")

    def __init__(self, kind: bytes, code: int = 0, stdout: bytes = b"", stderr: bytes = b"") -> None:
        self.kind, self.code, self.stdout, self.stderr = kind, code, stdout, stderr

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Answer) and (self.kind, self.code, self.stdout, self.stderr) == (
            other.kind,
            other.code,
            other.stdout,
            other.stderr,
        )

    __hash__ = None  # type: ignore[assignment]


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def frame(payload: bytes) -> bytes:
    return _u32(len(payload)) + payload


def encode_request(environb: Mapping[bytes, bytes], stdin: bytes, kind: bytes = VERB) -> bytes:
    env = b"\0".join(k + b"=" + v for k, v in environb.items())
    return frame(kind + _u32(len(env)) + env + stdin)


def decode_request(payload: bytes) -> Request:
    if len(payload) < 5 or payload[:1] not in (VERB, INFO):
        raise ProtocolError("not a request")
    env_len = int.from_bytes(payload[1:5], "big")
    if 5 + env_len > len(payload):
        raise ProtocolError("environment longer than the request")
    env: dict[str, str] = {}
    for item in payload[5 : 5 + env_len].split(b"\0") if env_len else ():
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ProtocolError("environment entry without KEY=")
        # What os.environ makes of the same bytes in an exec'd plugin.
        env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return Request(payload[:1], env, payload[5 + env_len :])


def encode_answer(answer: Answer) -> bytes:
    if answer.kind != ANSWER:
        return frame(answer.kind + answer.stdout)
    return frame(
        ANSWER + _u32(answer.code & 0xFFFFFFFF) + _u32(len(answer.stdout)) + answer.stdout + answer.stderr
    )


def decode_answer(payload: bytes) -> Answer:
    kind = payload[:1]
    if kind == NOT_MINE:
        return Answer(NOT_MINE)
    if kind == INFO:
        return Answer(INFO, stdout=payload[1:])
    if kind != ANSWER or len(payload) < 9:
        raise ProtocolError("not an answer")
    code = int.from_bytes(payload[1:5], "big")
    out_len = int.from_bytes(payload[5:9], "big")
    if 9 + out_len > len(payload) or code > 255:
        raise ProtocolError("malformed answer")
    return Answer(ANSWER, code, payload[9 : 9 + out_len], payload[9 + out_len :])


def read_frame(recv: Callable[[int], bytes], cap: int) -> bytes:
    """One frame's payload from `recv` (a socket's recv); ProtocolError on EOF or above `cap`."""
    head = _read_exactly(recv, 4)
    size = int.from_bytes(head, "big")
    if size > cap:
        raise ProtocolError(f"frame of {size} bytes, more than {cap}")
    return _read_exactly(recv, size)


def _read_exactly(recv: Callable[[int], bytes], size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = recv(min(size - got, 1 << 16))
        if not chunk:
            raise ProtocolError("connection closed mid-frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
