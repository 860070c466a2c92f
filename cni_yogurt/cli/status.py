"""`yogurt status`: lines, their ends, which backend each uses, and whether the wire is really there."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from cni_yogurt import backend
from cni_yogurt.datapath import CounterMap, PairMap, Pins
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.line.registry import End, Registry


def _problems(pins: Pins, end: End) -> list[str]:
    kind = backend.BY_ATTACH.get(end.attach)
    if kind is None:
        return [f"unknown attach method {end.attach!r}"]
    try:
        with (
            Rtnl() as host,
            backend.opened_pair(host, end.host_ifname, end.host_ifindex, end.peer_ifindex, end.netns) as pair,
        ):
            return backend.attach_problems(kind, pins, pair)
    except OSError as exc:
        return [f"cannot query programs of {end.key} (netns {end.netns}): {exc}"]


def collect(bpffs_dir: str, state_dir: str) -> dict[str, Any]:
    pins = Pins.under(bpffs_dir)
    registry = Registry(state_dir)  # read only: a damaged file reads as empty, and says so
    ends = registry.snapshot()
    pairs = {}
    counts: dict[int, dict[str, int] | None] = {}
    if pins.loaded():
        with PairMap(pins) as pair_map:
            pairs = dict(pair_map.items())
        with CounterMap(pins) as counter_map:
            counts = {e.host_ifindex: counter_map.get(e.host_ifindex) for e in ends.values()}
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for end in ends.values():
        problems = _problems(pins, end) if pins.loaded() and end.host_ifindex else []
        partner = pairs.get(end.host_ifindex)
        lines[end.line].append(
            {
                "end": end.key,
                "network": end.network,
                "netns": end.netns,
                "host_ifname": end.host_ifname,
                "host_ifindex": end.host_ifindex,
                "backend": end.device,
                "attach": end.attach,
                "ready": end.ready,
                "attached": not problems and pins.loaded(),
                "problems": problems,
                "wired_to_ifindex": partner.host_ifindex if partner else None,
                "counters": counts.get(end.host_ifindex),
            }
        )
    return {
        "programs_loaded": pins.loaded(),
        "pins": pins.root,
        "registry_damage": registry.damage(),
        "lines": dict(lines),
    }


def status(bpffs_dir: str, state_dir: str, as_json: bool) -> int:
    report = collect(bpffs_dir, state_dir)
    if as_json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"programs: {'loaded' if report['programs_loaded'] else 'not loaded'} ({report['pins']})")
    if report["registry_damage"]:
        print(f"line registry damaged ({report['registry_damage']}): the next ADD, DEL or GC rebuilds it")
    if not report["lines"]:
        print("no lines")
    for line, ends in sorted(report["lines"].items()):
        state = "wired" if len(ends) == 2 and all(e["wired_to_ifindex"] for e in ends) else "open"
        print(f"line {line}: {len(ends)}/2 ends, {state}")
        for e in ends:
            attach = "attached" if e["attached"] else "NOT attached: " + "; ".join(e["problems"])
            print(
                f"  {e['end']:<40} {e['host_ifname']} (ifindex {e['host_ifindex']}, "
                f"{e['backend']}/{e['attach']}) {attach}"
            )
            c = e["counters"]
            if c:
                print(
                    f"    sent {c['redirected_packets']} packets / {c['redirected_bytes']} bytes; dropped: "
                    f"{c['drop_not_wired']} not wired, {c['drop_unmarked']} unmarked (host or injected), "
                    f"{c['drop_wrong_sender']} wrong sender"
                )
    return 0
