"""`yogurt link down|up`: a line's (or one end's) link state, as a lab unplugs a cable
(line/linkstate.py).  `--line` sets every end of the line on this node, and the line's end on
another node follows through the cluster store; `--end` sets one end alone (its partner keeps
carrier, and nothing passes either way).  Up returns once the container's interface is
operational again.  Root only: it changes the node's devices and maps."""

from __future__ import annotations

import json
import os
import sys

from cni_yogurt.agent import frontend
from cni_yogurt.datapath import Pins
from cni_yogurt.line import linkstate
from cni_yogurt.line.registry import End, Registry


def chosen(ends: dict[str, End], line: str | None, end: str | None) -> list[str]:
    """The ends a command names: every end of `line` on this node, or the end `end`."""
    if line is not None:
        return sorted(key for key, e in ends.items() if e.line == line)
    return [end] if end in ends else []


def link(state: str, line: str | None, end: str | None, state_dir: str, bpffs_dir: str, as_json: bool) -> int:
    if os.geteuid() != 0:
        print("yogurt link: root only (it changes the node's devices and maps)", file=sys.stderr)
        return 1
    registry = Registry(state_dir)
    ends = registry.snapshot()
    keys = chosen(ends, line, end)
    if not keys:
        what = f"line {line!r}" if line is not None else f"end {end!r}"
        print(f"yogurt link: no {what} on this node (yogurt status lists them)", file=sys.stderr)
        return 1
    followers = [k for k in keys if ends[k].down == "partner"]
    if state == "up" and followers:
        lines = ", ".join(sorted({ends[k].line for k in followers}))
        print(
            f"yogurt link: line {lines} was set down on the node of its other end: set it up there",
            file=sys.stderr,
        )
        return 1
    pins = Pins.under(bpffs_dir)
    done = linkstate.apply(registry, pins, keys, "" if state == "up" else ("line" if line else "end"))
    frontend.info(state_dir)  # a node agent, if one serves: its reconciler takes the change now
    if state == "up":
        linkstate.wait_operational([e for e in done if e.ready])
    if as_json:
        print(json.dumps({"state": state, "ends": [{"end": e.key, "line": e.line} for e in done]}))
    else:
        for e in done:
            print(f"{e.key} (line {e.line}): {state}")
    return 0
