"""A node-wide lock: runtimes run the plugin for many containers at once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # the state dir: root-only
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
