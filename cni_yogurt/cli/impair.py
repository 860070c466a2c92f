"""`yogurt impair set|show|reset`: impairments of what an end sends (line/impairment.py), with the
flags of containerlab's `tools netem` (--loss, --corruption, --rate in kbit/s) and --duplicate.
`--line` sets every end of the line on this node (both ways, where both ends are here), `--end`
one end: one way.  `set` replaces what the ends had (what it does not name is off), as netem's
`set` does.  Root only: it changes the node's maps; no container reaches them."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from cni_yogurt.cli.link import chosen
from cni_yogurt.datapath import Pins
from cni_yogurt.line.impairment import Impairment, ImpairmentError, apply, shown
from cni_yogurt.line.registry import Registry


def impair(
    action: str,
    line: str | None,
    end: str | None,
    given: dict[str, Any],
    state_dir: str,
    bpffs_dir: str,
    as_json: bool,
) -> int:
    registry = Registry(state_dir)
    pins = Pins.under(bpffs_dir)
    if action == "show":
        return _show(registry, pins, line, end, as_json)
    if os.geteuid() != 0:
        print("yogurt impair: root only (it changes the node's maps)", file=sys.stderr)
        return 1
    try:
        impairment = (
            Impairment.parse({k: v for k, v in given.items() if v is not None})
            if action == "set"
            else Impairment()
        )
    except ImpairmentError as exc:
        print(f"yogurt impair: {exc}", file=sys.stderr)
        return 2
    keys = chosen(registry.snapshot(), line, end)
    if not keys:
        what = f"line {line!r}" if line is not None else f"end {end!r}"
        print(f"yogurt impair: no {what} on this node (yogurt status lists them)", file=sys.stderr)
        return 1
    try:
        done = apply(registry, pins, keys, impairment)
    except ImpairmentError as exc:
        print(f"yogurt impair: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(
            json.dumps(
                {"ends": [{"end": e.key, "line": e.line, "impair": dict(impairment.items())} for e in done]}
            )
        )
    else:
        for e in done:
            print(f"{e.key} (line {e.line}): {impairment.spec() or 'none'}")
    return 0


def _show(registry: Registry, pins: Pins, line: str | None, end: str | None, as_json: bool) -> int:
    ends = registry.snapshot()
    keys = chosen(ends, line, end) if (line or end) else sorted(k for k, e in ends.items() if e.impair)
    found = [(ends[k], shown(pins, ends[k])) for k in keys]
    if as_json:
        print(json.dumps({"ends": [{"end": e.key, "line": e.line, **s} for e, s in found]}))
        return 0
    for e, s in found:
        state = "" if s["in_force"] else "  (not in force: set it again)"
        print(f"{e.key} (line {e.line}): {s['spec'] or 'none'}{state}")
    return 0
