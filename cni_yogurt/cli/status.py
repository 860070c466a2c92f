"""`yogurt status`: lines, their ends, which backend each uses, and whether the wire is really there."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from cni_yogurt import backend, release
from cni_yogurt.agent import frontend
from cni_yogurt.agent.report import describe
from cni_yogurt.capture.tap import end_captured
from cni_yogurt.datapath import CounterMap, PairMap, Partner, Pins
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


def _maps(pins: Pins, ends: list[End]) -> tuple[dict[int, Partner], dict[int, dict[str, int] | None]]:
    """What one pin dir's maps say about the ends that use it: partners and counters."""
    if not pins.loaded():
        return {}, {}
    with PairMap(pins) as pair_map:
        pairs = dict(pair_map.items())
    with CounterMap(pins) as counter_map:
        counts = {e.host_ifindex: counter_map.get(e.host_ifindex) for e in ends}
    return pairs, counts


def _impair(pins: Pins, end: End) -> dict[str, Any] | None:
    """An end's impairments (line/impairment.py), None for none."""
    from cni_yogurt.line.impairment import shown

    if not end.impair:
        return None
    try:
        return shown(pins, end)
    except OSError as exc:
        return {"asked": {}, "spec": end.impair, "in_force": False, "did": None, "error": str(exc)}


def collect(bpffs_dir: str, state_dir: str) -> dict[str, Any]:
    pins = Pins.under(bpffs_dir)
    registry = Registry(state_dir)  # read only: a damaged file reads as empty, and says so
    ends = registry.snapshot()
    by_pins: dict[Pins, list[End]] = defaultdict(list)
    for end in ends.values():
        by_pins[end.pin_dir(pins)].append(end)  # an older release's, until moved
    pairs: dict[int, Partner] = {}
    counts: dict[int, dict[str, int] | None] = {}
    for own, users in by_pins.items():
        own_pairs, own_counts = _maps(own, users)
        pairs |= own_pairs
        counts |= own_counts
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for end in ends.values():
        own = end.pin_dir(pins)
        problems = _problems(own, end) if own.loaded() and end.host_ifindex else []
        partner = pairs.get(end.host_ifindex)
        lines[end.line].append(
            {
                "end": end.key,
                "network": end.network,
                "pod": {"namespace": end.pod_namespace, "name": end.pod_name, "uid": end.pod_uid}
                if end.pod_name
                else None,
                "netns": end.netns,
                "host_ifname": end.host_ifname,
                "host_ifindex": end.host_ifindex,
                "backend": end.device,
                "attach": end.attach,
                "ready": end.ready,
                "down": end.down,
                "pins": own.root,
                "attached": not problems and own.loaded(),
                "problems": problems,
                "wired_to_ifindex": partner.host_ifindex if partner else None,
                "captured": end_captured(end),
                "impair": _impair(pins, end),
                "counters": counts.get(end.host_ifindex),
            }
        )
    return {
        "release": release.describe(),
        "programs_loaded": pins.loaded(),
        "pins": pins.root,
        "older_pins": [o.root for o in pins.others()],
        "registry_damage": registry.damage(),
        "agent": frontend.info(state_dir),
        "lines": dict(lines),
    }


def status(bpffs_dir: str, state_dir: str, as_json: bool) -> int:
    report = collect(bpffs_dir, state_dir)
    if as_json:
        print(json.dumps(report, indent=1))
        return 0
    built = report["release"]
    print(
        f"release: {built['version']} (ABI {built['abi']}"
        + (f", commit {built['commit']})" if built["commit"] else ")")
    )
    print(f"programs: {'loaded' if report['programs_loaded'] else 'not loaded'} ({report['pins']})")
    agent = report["agent"]
    print(
        f"agent: {'serving, ' + describe(agent) if agent else 'none (each plugin exec does the work itself)'}"
    )
    cluster = (agent or {}).get("cluster") or {}
    for lost in cluster.get("lost") or []:
        print(
            f"LOST: end {lost['end']} of line {lost['line']} stays closed: while this node's claims were "
            f"gone the line was taken by {', '.join(lost['holders'])} (DEL it; a new ADD works as usual)"
        )
    for refused in cluster.get("refused") or []:
        print(f"REFUSED: lines {', '.join(refused['lines'])} stay closed: {refused['why']}")
    for node in cluster.get("nodes") or []:
        other = "" if node["compatible"] else ": another protocol, no line to it is wired"
        runs = f"{node['version']} (ABI {node['abi']}, cluster protocol {node['protocol']}{other})"
        print(f"node {node['node']}: {runs}")
    if report["older_pins"]:
        print(f"older release's pins: {', '.join(report['older_pins'])} (`yogurt upgrade` moves their ends)")
    if report["registry_damage"]:
        print(f"line registry damaged ({report['registry_damage']}): the next ADD, DEL or GC rebuilds it")
    if not report["lines"]:
        print("no lines")
    for line, ends in sorted(report["lines"].items()):
        state = "wired" if len(ends) == 2 and all(e["wired_to_ifindex"] for e in ends) else "open"
        copied = [e["end"] for e in ends if e["captured"]]
        captured = (
            f", CAPTURED (what {', '.join(copied)} sends is copied to root on this node)" if copied else ""
        )
        print(f"line {line}: {len(ends)}/2 ends, {state}{captured}")
        for e in ends:
            attach = "attached" if e["attached"] else "NOT attached: " + "; ".join(e["problems"])
            older = "" if e["pins"] == report["pins"] else f", still on {e['pins']}"
            down = {"": "", "partner": ", DOWN (its line, set down on its other end's node)"}.get(
                e["down"], ", DOWN (yogurt link up)"
            )
            print(
                f"  {e['end']:<40} {e['host_ifname']} (ifindex {e['host_ifindex']}, "
                f"{e['backend']}/{e['attach']}{older}) {attach}{down}"
            )
            if e["impair"]:
                force = "" if e["impair"]["in_force"] else " (NOT in force: yogurt impair set again)"
                print(f"    IMPAIRED what it sends: {e['impair']['spec']}{force} (yogurt impair reset)")
                did = e["impair"].get("did")
                if did:
                    print(
                        f"    impaired: {did['lost']} lost, {did['over_rate']} over the rate, "
                        f"{did['duplicated']} duplicated, {did['corrupted']} corrupted"
                    )
            if e["pod"]:
                pod = e["pod"]
                print(
                    f"    pod {pod['namespace']}/{pod['name']}"
                    + (f" (uid {pod['uid']})" if pod["uid"] else "")
                )
            c = e["counters"]
            if c:
                print(
                    f"    sent {c['redirected_packets']} packets / {c['redirected_bytes']} bytes; dropped: "
                    f"{c['drop_not_wired']} not wired, {c['drop_unmarked']} unmarked (host or injected), "
                    f"{c['drop_wrong_sender']} wrong sender"
                )
    return 0
