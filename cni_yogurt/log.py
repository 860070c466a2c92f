"""Structured logs: JSON lines to a file, errors also on stderr, never stdout.

stdout carries the CNI result, so nothing here may write to it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from cni_yogurt._lean import bare_package

bare_package("structlog")
from structlog._generic import BoundLogger  # noqa: E402  (structlog.BoundLogger)
from structlog.processors import JSONRenderer, TimeStamper, add_log_level  # noqa: E402


class _Sink:
    """A structlog logger writing each rendered event to a file, and errors to stderr too."""

    def __init__(self, file: TextIO | None, stderr: TextIO) -> None:
        self._file = file
        self._stderr = stderr

    def _write(self, line: str, to_stderr: bool) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if to_stderr or self._file is None:
            self._stderr.write(line + "\n")
            self._stderr.flush()

    def msg(self, message: str) -> None:
        self._write(message, to_stderr=False)

    info = msg

    def debug(self, message: str) -> None:
        # Tracebacks are logged at debug: they belong in the file, never on stderr.
        if self._file is not None:
            self._write(message, to_stderr=False)

    def error(self, message: str) -> None:
        self._write(message, to_stderr=True)

    warning = critical = exception = error

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_log_file(path: str) -> TextIO | None:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Created root-only (whatever the runtime's umask): container ids and errors, not for everyone.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return open(fd, "a", encoding="utf-8")  # noqa: SIM115  (lives as long as the process)
    except (OSError, ValueError) as exc:  # ValueError: a NUL or unencodable character in the path
        sys.stderr.write(f"cni-yogurt: cannot open log file {path}: {exc}\n")
        return None


def get_logger(path: str | None, stderr: TextIO | None = None, **context: Any) -> Any:
    """A structlog BoundLogger for one invocation; `path=None` logs to stderr only."""
    file = open_log_file(path) if path else None
    sink = _Sink(file, stderr or sys.stderr)
    processors: list[Any] = [add_log_level, TimeStamper(fmt="iso", utc=True), JSONRenderer(sort_keys=False)]
    return BoundLogger(sink, processors=processors, context={"pid": os.getpid(), **context})


def close_logger(log: Any) -> None:
    """Close the log file of an invocation's logger: the node agent serves many in one process."""
    sink = getattr(log, "_logger", None)
    if isinstance(sink, _Sink):
        sink.close()
