"""One CNI invocation: environment + stdin in, result or error JSON out.

Like the reference plugins' skel: parse and validate everything that can be
checked without the kernel, then call the verb's function.  Every failure,
expected or not, ends as error JSON on stdout and a non-zero exit; a
traceback only ever reaches the log file.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TextIO

from cni_yogurt.cni import netconf
from cni_yogurt.cni import version as versions
from cni_yogurt.cni.env import CniEnv, parse_env
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.netconf import NetConf
from cni_yogurt.cni.result import Result


@dataclass(frozen=True)
class Invocation:
    """Everything a verb gets: the parsed env and config, and the raw inputs for delegates."""

    env: CniEnv
    conf: NetConf
    environ: Mapping[str, str]
    stdin: bytes
    log: Any


class Verbs(Protocol):
    def add(self, inv: Invocation) -> Result: ...
    def delete(self, inv: Invocation) -> None: ...
    def check(self, inv: Invocation) -> None: ...
    def status(self, inv: Invocation) -> None: ...
    def gc(self, inv: Invocation) -> None: ...


def _emit(stdout: TextIO, obj: dict[str, Any]) -> None:
    stdout.write(json.dumps(obj) + "\n")
    stdout.flush()


def run(
    environ: Mapping[str, str],
    stdin: BinaryIO,
    stdout: TextIO,
    stderr: TextIO,
    load_verbs: Callable[[], Verbs],
) -> int:
    """Serve one invocation; returns the exit code."""
    data = b""
    try:
        # stdin first, so even an environment error is reported in the config's
        # cniVersion (SPEC "Error": "the same value as provided by the configuration").
        data = stdin.read()
        env = parse_env(environ)
        if env.command == "VERSION":
            # No logging and no heavy imports: runtimes call this often.
            _emit(stdout, versions.version_info(data))
            return 0
        conf = netconf.parse(netconf.decode(data))
        versions.require_verb_allowed(env.command, conf.cni_version)
        netconf.check_cni_args(env)
    except CNIError as err:
        return _fail(err, versions.peek_version(data) or versions.LATEST, stdout, stderr)
    except Exception as exc:  # noqa: BLE001  (the runtime must get JSON, never a traceback)
        return _fail(_internal(exc), versions.LATEST, stdout, stderr)
    return _dispatch(env, conf, environ, data, stdout, stderr, load_verbs)


def _internal(exc: Exception) -> CNIError:
    """A bug or an unforeseen OS error, as the spec's generic code 999 (never a traceback)."""
    return CNIError(Code.INTERNAL, f"unexpected error: {exc}", type(exc).__name__)


def _fail(err: CNIError, cni_version: str, stdout: TextIO, stderr: TextIO, log: Any = None) -> int:
    _emit(stdout, err.to_json(cni_version))
    if log is None:
        stderr.write(
            f"cni-yogurt: error {err.code}: {err.msg}" + (f": {err.details}" if err.details else "") + "\n"
        )
    return 1


def _dispatch(
    env: CniEnv,
    conf: NetConf,
    environ: Mapping[str, str],
    data: bytes,
    stdout: TextIO,
    stderr: TextIO,
    load_verbs: Callable[[], Verbs],
) -> int:
    from cni_yogurt.log import close_logger, get_logger

    log = get_logger(
        conf.log_file,
        stderr,
        verb=env.command,
        container_id=env.container_id,
        ifname=env.ifname,
        network=conf.name,
    )
    try:
        return _logged_dispatch(env, conf, environ, data, stdout, stderr, load_verbs, log)
    finally:
        close_logger(log)  # the node agent serves many calls in one process


def _logged_dispatch(
    env: CniEnv,
    conf: NetConf,
    environ: Mapping[str, str],
    data: bytes,
    stdout: TextIO,
    stderr: TextIO,
    load_verbs: Callable[[], Verbs],
    log: Any,
) -> int:
    started = time.monotonic()

    def elapsed_ms() -> float:
        return round((time.monotonic() - started) * 1000, 2)

    inv = Invocation(env, conf, environ, data, log)
    try:
        verbs = load_verbs()
        if env.command == "ADD":
            result = verbs.add(inv)
            if conf.prev_result is not None:
                result = result.merged_after(conf.prev_result)
            _emit(stdout, result.to_json(conf.cni_version))
        else:
            {"DEL": verbs.delete, "CHECK": verbs.check, "STATUS": verbs.status, "GC": verbs.gc}[env.command](
                inv
            )
    except CNIError as err:
        log.error(
            "invocation",
            outcome="error",
            code=err.code,
            msg=err.msg,
            details=err.details,
            duration_ms=elapsed_ms(),
        )
        return _fail(err, conf.cni_version, stdout, stderr, log)
    except Exception as exc:  # noqa: BLE001
        # The traceback goes in a debug event: error events are copied to stderr.
        log.debug("traceback", traceback=traceback.format_exc())
        log.error(
            "invocation",
            outcome="error",
            code=Code.INTERNAL.value,
            msg=str(exc),
            exception=type(exc).__name__,
            duration_ms=elapsed_ms(),
        )
        return _fail(_internal(exc), conf.cni_version, stdout, stderr, log)
    log.info("invocation", outcome="ok", duration_ms=elapsed_ms())
    return 0


def main(load_verbs: Callable[[], Verbs]) -> int:
    import os

    return run(os.environ, sys.stdin.buffer, sys.stdout, sys.stderr, load_verbs)
