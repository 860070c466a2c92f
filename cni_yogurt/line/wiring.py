"""Joining and leaving a line: registry membership plus the pairing map, under one lock."""

from __future__ import annotations

from collections.abc import Iterable

from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.datapath import CounterMap, ImpairMap, PairMap, Pins, RemoteMap
from cni_yogurt.line import impairment, naming
from cni_yogurt.line.recovery import adopt
from cni_yogurt.line.registry import End, Registry, attachment_key, others_on_line

MAX_ENDS = 2


def reserve(registry: Registry, end: End) -> None:
    """Claim a place on the line before anything is created; a full line fails here."""
    with registry.transaction(end.line, end.host_ifname) as ends:
        if end.key in ends or adopt(ends, end.container_id, end.ifname):
            held = ends[end.key]
            raise CNIError(
                Code.ALREADY_ATTACHED,
                f"{end.key} is already attached",
                f"on line {held.line!r} through {held.host_ifname}; DEL it first",
            )
        others = others_on_line(ends, end)
        if len(others) >= MAX_ENDS:
            holders = ", ".join(o.holder() for o in others)
            raise CNIError(
                Code.LINE_FULL,
                f"line {end.line!r} already has two ends",
                f"held by {holders}",
            )
        ends[end.key] = end


def connect(registry: Registry, pins: Pins, end: End) -> End | None:
    """Mark an end ready; wire it to its partner if that one is ready too (and neither is down)."""
    end.ready = True
    with registry.transaction(end.line) as ends:
        ends[end.key] = end
        impairment.write(pins, end)  # before the first packet can pass
        partner = next((o for o in others_on_line(ends, end) if o.ready), None)
        if partner is not None and not (end.down or partner.down):
            with PairMap(pins) as pairs:
                pairs.wire(end.wire, partner.wire)
        return partner


def set_down(registry: Registry, pins: Pins, keys: list[str], down: str) -> list[End]:
    """Link state (line/linkstate.py): mark ends down (`down`: why, see End.down), cut from their
    partners, local or on another node: nothing passes either way; or up again (`down` ""),
    wired back to a ready partner that is not down (one on another node is wired back by the
    agent's reconciler).  Their devices are the caller's: down after the cut, up before the
    wiring.  The ends as they are now."""
    with registry.transaction() as ends:
        chosen = [ends[key] for key in keys if key in ends]
        for end in chosen:
            end.down = down
        if down:
            _cut(pins, [end for end in chosen if end.ready], keep_counts=True)
            return chosen
        for end in chosen:
            own = end.pin_dir(pins)
            if not end.ready or not end.host_ifindex or not own.loaded():
                continue
            partner = next((o for o in others_on_line(ends, end) if o.ready and not o.down), None)
            if partner is not None and partner.pin_dir(pins) == own:
                with PairMap(own) as pairs:
                    pairs.wire(end.wire, partner.wire)
        return chosen


def hang_up(registry: Registry, pins: Pins, container_id: str, ifname: str, host_ifindex: int = 0) -> Pins:
    """DEL's first step: cut the end's map entries, so the partner fails closed at once, and
    keep its record, marked leaving, until the device and the lease are gone too (forget):
    a DEL killed half-way leaves an end that GC still knows to clean up.  Returns the pins
    the end was added with (an older release's, after an upgrade)."""
    with registry.transaction(host_ifname=naming.host_ifname(container_id, ifname)) as ends:
        end = ends.get(attachment_key(container_id, ifname)) or adopt(ends, container_id, ifname)
        ifindex = end.host_ifindex if end is not None else host_ifindex
        own = end.pin_dir(pins) if end is not None else pins
        _cut(pins, [end] if end is not None else [], [ifindex])
        if end is not None:
            end.ready, end.leaving = False, True
        return own


def forget(registry: Registry, container_id: str, ifname: str) -> None:
    with registry.transaction(host_ifname=naming.host_ifname(container_id, ifname)) as ends:
        ends.pop(attachment_key(container_id, ifname), None)


def leave(registry: Registry, pins: Pins, end: End) -> End | None:
    """Drop an end at once (ADD's rollback): its map entries go first, so the partner fails
    closed at once."""
    with registry.transaction(end.line, end.host_ifname) as ends:
        held = ends.pop(end.key, None)  # as saved: without the ifindex if ADD failed before wiring
        _cut(pins, [held] if held is not None else [], [end.host_ifindex])
        return held


def leave_all(registry: Registry, pins: Pins, keys: list[str]) -> list[End]:
    """`leave` for many ends (GC): one registry write and one pass over each map."""
    with registry.transaction() as ends:
        gone = [ends.pop(key) for key in keys if key in ends]
        _cut(pins, gone, thorough=True)
        return gone


def _cut(
    current: Pins,
    ends: list[End],
    indexes: Iterable[int] = (),
    thorough: bool = False,
    keep_counts: bool = False,
) -> None:
    """Take ends out of the maps: pairing (both directions), wiring to a remote partner
    (both directions), counters and impairments (`keep_counts`: not those two, the end stays:
    link state); out
    of this release's maps too, which a move to them that was cut short may have filled."""
    where: dict[Pins, set[int]] = {current: set(indexes)}
    for end in ends:
        for pins in (end.pin_dir(current), current):
            where.setdefault(pins, set()).add(end.host_ifindex)
    for pins, found in where.items():
        found.discard(0)
        if found and pins.loaded():
            with PairMap(pins) as pairs:
                pairs.cut(*found)
            if pins.has_remote():
                with RemoteMap(pins) as remotes:
                    remotes.cut(*found, thorough=thorough)
            if keep_counts:
                continue
            with CounterMap(pins) as counters:
                for index in found:
                    counters.stop(index)
            if pins.has_impair():
                with ImpairMap(pins) as impairs:
                    impairs.clear(*found)
