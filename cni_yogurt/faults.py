"""Crash points: where the kill -9 tests stop the plugin.

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


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
