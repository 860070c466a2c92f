"""`yogurt status`: lines, their ends, and whether the wire is really there."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from cni_yogurt import datapath
from cni_yogurt.datapath import PairMap, Pins
from cni_yogurt.line.registry import Registry


def collect(bpffs_dir: str, state_dir: str) -> dict[str, Any]:
    pins = Pins.under(bpffs_dir)
    ends = Registry(state_dir).snapshot()
    pairs = {}
    if pins.loaded():
        with PairMap(pins) as pair_map:
            pairs = dict(pair_map.items())
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for end in ends.values():
        problems = []
        if pins.loaded() and end.host_ifindex:
            try:
                problems = datapath.attach_problems(pins, end.host_ifindex)
            except OSError as exc:
                problems = [f"cannot query programs: {exc}"]
        partner = pairs.get(end.host_ifindex)
        lines[end.line].append(
            {
                "end": end.key,
                "network": end.network,
                "netns": end.netns,
                "host_ifname": end.host_ifname,
                "host_ifindex": end.host_ifindex,
                "ready": end.ready,
                "attached": not problems and pins.loaded(),
                "problems": problems,
                "wired_to_ifindex": partner.host_ifindex if partner else None,
            }
        )
    return {"programs_loaded": pins.loaded(), "pins": pins.root, "lines": dict(lines)}


def status(bpffs_dir: str, state_dir: str, as_json: bool) -> int:
    report = collect(bpffs_dir, state_dir)
    if as_json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"programs: {'loaded' if report['programs_loaded'] else 'not loaded'} ({report['pins']})")
    if not report["lines"]:
        print("no lines")
    for line, ends in sorted(report["lines"].items()):
        state = "wired" if len(ends) == 2 and all(e["wired_to_ifindex"] for e in ends) else "open"
        print(f"line {line}: {len(ends)}/2 ends, {state}")
        for e in ends:
            attach = "attached" if e["attached"] else "NOT attached: " + "; ".join(e["problems"])
            print(f"  {e['end']:<40} {e['host_ifname']} (ifindex {e['host_ifindex']}) {attach}")
    return 0
