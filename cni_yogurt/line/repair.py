"""Re-attaching live ends after their programs were lost (pins removed, bpffs unmounted).

A pinned link dies with its pin, so live ends lose their programs: netkit
ends fall back to their blackhole policy, veth ends to no guard at all.  The
next ADD or GC that has to load the programs again attaches the new ones to
every end whose device is still there and wires the new map from the line
registry, so lines work again without anyone re-adding containers.
"""

from __future__ import annotations

from typing import Any

from cni_yogurt import backend
from cni_yogurt.datapath import CounterMap, PairMap, Pins
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.line.registry import End, Registry


def reattach(registry: Registry, pins: Pins, log: Any) -> int:
    """Attach the (new) programs to every live end and re-wire its line; the number of ends repaired."""
    repaired = 0
    with registry.transaction() as ends, Rtnl() as host:
        mine = [e for e in ends.values() if e.pins == pins.root and e.ready and not e.leaving]
        live = [e for e in mine if _device_is_there(host, e)]
        for end in live:
            try:
                _attach(host, pins, end)
                repaired += 1
            except OSError as exc:
                end.ready = False  # not wired again until its owner re-adds or deletes it
                log.error("repair: cannot re-attach programs", end=end.key, error=str(exc))
        with PairMap(pins) as pairs:
            by_line: dict[str, list[End]] = {}
            for end in live:
                if end.ready:
                    by_line.setdefault(end.line, []).append(end)
            for pair in by_line.values():
                if len(pair) == 2:
                    pairs.wire(pair[0].wire, pair[1].wire)
    return repaired


def _device_is_there(host: Rtnl, end: End) -> bool:
    link = host.link(end.host_ifname)
    return link is not None and link["index"] == end.host_ifindex


def _attach(host: Rtnl, pins: Pins, end: End) -> None:
    kind = backend.BY_ATTACH[end.attach]
    with backend.opened_pair(host, end.host_ifname, end.host_ifindex, end.peer_ifindex, end.netns) as pair:
        with CounterMap(pins) as counters:
            counters.start(end.host_ifindex)
        backend.attach(kind, pins, pair)
