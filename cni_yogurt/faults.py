"""Test-only knobs: where the kill -9 tests stop the plugin; the next release's ABI.

A runtime kills a plugin that outlives its timeout, at whatever step it is.
`YOGURT_TEST_CRASH_AT=<point>` makes the plugin SIGKILL itself at that named
point, so tests/kernel/test_crash.py can prove that every step can be cut
short and still be cleaned up by DEL or GC.  Unset, a crash point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "YOGURT_TEST_CRASH_AT"

ADD_POINTS = (
    "add:reserved",  # a place on the line, nothing in the kernel yet
    "add:loading",  # the first ADD's program load, the map pinned but not the programs
    "add:device",  # the pair exists
    "add:link-peer",  # the sender is attached
    "add:link-primary",  # the guard is attached
    "add:ipam",  # the IP lease is taken
    "add:configured",  # addresses and routes are in the container
    "add:wired",  # the map pairs the ends; only the reply is missing
)
DEL_POINTS = (
    "del:left",  # hung up: map entries cut, the end marked leaving
    "del:detached",  # link pins gone
    "del:device",  # the pair is gone, the lease is not
)
# Moving a wired line to a new release's programs (line/moving.py), after each hook's switch:
# A's sender, B's guard, B's sender, A's guard.  After 1 and 3, an old and a new program face
# each other across the line.
MOVE_POINTS = tuple(f"move:switched-{step}" for step in range(1, 5))


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def test_abi() -> int | None:
    """`YOGURT_TEST_ABI=<n>`: pin under v<n>, standing in for the next release, so
    tests/kernel/test_upgrade.py can move live lines to it."""
    value = os.environ.get("YOGURT_TEST_ABI", "")
    return int(value) if value.isdigit() and 0 < int(value) < 1000 else None
