"""The exec'd plugin as a thin front end: hand the call to the node agent if one serves.

The runtime execs the plugin for every container; with an agent on the node
the exec only forwards its environment and stdin to <stateDir>/agent.sock and
returns the agent's answer and exit code unchanged.  Only C modules are
imported here (_socket, _json): the point is to skip the interpreter work the
agent has done once already.

What happens when the agent is not there or does not answer (`decide`):

- no socket, connection refused, not root: run the verb here, as without an agent;
- the agent serves another stateDir (it said so): run the verb here;
- connected, but no answer within the bound, or the connection closed without
  one (the agent died or was stopped mid-call): DEL runs here (it is idempotent
  and the locks protect it; a DEL must never fail because the agent is down);
  every other verb answers code 11, "try again later", naming the socket: the
  agent may still finish the call, and a retry will find out.

Bounds: connecting 1 s (in practice a unix connect succeeds or fails at once: a
full backlog, a swamped agent, is an OSError here, so the verb runs here); the
answer `agentTimeout` seconds (config key, default 60, below the runtimes' own
timeouts: kubelet's is 2 min).

frontend.c is this module compiled, for the exec a runtime pays per container:
the same decisions, tested side by side (tests/unit/test_agent_frontend.py).
"""

from __future__ import annotations

import _json
import _socket

from cni_yogurt.agent import protocol

TYPE_CHECKING = False  # not typing's: see protocol.py
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

DEFAULT_STATE_DIR = "/run/cni-yogurt"  # netconf.DEFAULT_STATE_DIR, without importing netconf
CONNECT_TIMEOUT = 1.0
DEFAULT_ANSWER_TIMEOUT = 60.0

# Outcomes of one attempt to reach the agent.
ABSENT, NOT_MINE, NO_ANSWER, ANSWERED = "absent", "not-mine", "no-answer", "answered"
# What the front end does then.
LOCAL, TRY_AGAIN, RELAY = "local", "try-again", "relay"


def decide(command: str, outcome: str) -> str:
    if outcome == ANSWERED:
        return RELAY
    if outcome == NO_ANSWER and command != "DEL":
        return TRY_AGAIN
    return LOCAL


class _ScanContext:
    """What _json.make_scanner reads from json.JSONDecoder, without importing json (and re)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name)


def peek_config(stdin: bytes) -> dict[str, object] | None:
    """The network config as a dict, or None if it is not a JSON object (the verb's own
    path then reports that, with the right code)."""
    try:
        text = stdin.decode("utf-8").strip(" \t\r\n")
        obj, end = _json.make_scanner(_ScanContext())(text, 0)  # type: ignore[arg-type]  # duck-typed
    except Exception:  # noqa: BLE001  (StopIteration, ValueError, RecursionError; SystemError from
        # the C scanner on some truncated input: it looks up json.decoder's error class, not loaded here)
        return None
    return obj if isinstance(obj, dict) and end == len(text) else None


def socket_path(conf: dict[str, object]) -> str | None:
    state_dir = conf.get("stateDir", DEFAULT_STATE_DIR)
    if not isinstance(state_dir, str) or not state_dir or "\0" in state_dir:
        return None
    return state_dir.rstrip("/") + "/" + protocol.SOCKET_NAME


def answer_timeout(conf: dict[str, object]) -> float:
    value = conf.get("agentTimeout")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 3600:
        return float(value)
    return DEFAULT_ANSWER_TIMEOUT


def ask(path: str, request: bytes, timeout: float) -> tuple[str, protocol.Answer | None]:
    """Send one request; (outcome, answer)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except TimeoutError:
            return NO_ANSWER, None  # there, but not accepting: hung or swamped
        except OSError:
            return ABSENT, None  # no socket, refused (a dead agent's), or not ours to reach
        try:
            sock.settimeout(timeout)
            sock.sendall(request)
            answer = protocol.decode_answer(protocol.read_frame(sock.recv, protocol.MAX_ANSWER))
        except (OSError, protocol.ProtocolError):
            return NO_ANSWER, None
    finally:
        sock.close()
    if answer.kind == protocol.NOT_MINE:
        return NOT_MINE, None
    return ANSWERED, answer


def _try_again_json(conf: dict[str, object], path: str, why: str) -> bytes:
    version = conf.get("cniVersion")
    version = version if isinstance(version, str) else "1.1.0"
    enc = _json.encode_basestring_ascii
    msg = f"the node agent at {path} did not answer: try again later"
    details = why + "; the agent may still complete the call, a retry will see its outcome"
    return (
        f'{{"cniVersion": {enc(version)}, "code": 11, "msg": {enc(msg)}, "details": {enc(details)}}}\n'
    ).encode()


def forward(
    environb: Mapping[bytes, bytes],
    stdin: bytes,
    write_out: Callable[[bytes], object],
    write_err: Callable[[bytes], object],
) -> int | None:
    """Serve the call through the agent; the exit code, or None to run the verb here.

    `write_out`/`write_err` take bytes (the binary stdout and stderr)."""
    command = environb.get(b"CNI_COMMAND", b"").decode("utf-8", "replace")
    conf = peek_config(stdin)
    path = socket_path(conf) if conf is not None else None
    if conf is None or path is None or command == "VERSION":
        return None
    outcome, answer = ask(path, protocol.encode_request(environb, stdin), answer_timeout(conf))
    action = decide(command, outcome)
    if action == LOCAL:
        return None
    if action == TRY_AGAIN or answer is None:
        write_out(_try_again_json(conf, path, f"no answer to {command}"))
        write_err(f"cni-yogurt: error 11: the node agent at {path} did not answer\n".encode())
        return 1
    write_out(answer.stdout)
    write_err(answer.stderr)
    return answer.code


def info(state_dir: str, timeout: float = 2.0) -> dict[str, object] | None:
    """Who serves this stateDir: the agent's pid, release, start time and calls served; None if
    no agent answers (for `yogurt status` and `yogurt doctor`)."""
    path = state_dir.rstrip("/") + "/" + protocol.SOCKET_NAME
    outcome, answer = ask(path, protocol.encode_request({}, b"", protocol.INFO), timeout)
    if outcome != ANSWERED or answer is None or answer.kind != protocol.INFO:
        return None
    found = peek_config(answer.stdout)
    return found
