"""Moving live ends onto the programs pinned now: after an upgrade, or after pins were lost.

Upgrade: a release with a new ABI pins its programs and maps next to the
old ones (`<bpffsDir>/v<N>`); its loader copied the old release's secret into
its own mark map, so old and new programs mark and check alike.  Every live
end then moves, under the registry lock, in two steps:

1. the new maps get what the ends need before any program changes: each
   end's counters (carried over), its line's pairing (from the registry,
   which ADD and DEL keep in step with the map under this same lock) and,
   for an end wired to a partner on another node, its remote wiring (carried
   over from the old maps: the agent, not the registry, knows it);
2. each hook switches program in place: BPF_LINK_UPDATE on its pinned link
   (netkit, tcx) or a replaced cls_bpf filter (tc) — atomic in the kernel,
   so every packet meets either the old program with the old maps or the new
   one with the new maps, and both pass it.  The link is pinned under the
   new dir, then its old pin goes.

Once no end uses an older dir and it holds no links, it is removed.

The tunnel device's receive program (line/remote.py): its tcx link, pinned in
an older dir, is switched in place the same way once the ends have moved
(until then the old program, with the old maps, delivers with the shared
mark, and the new guards accept it).  A tc-mode tunnel filter has no pin to
find it by: it keeps the old program until the agent calls attach_tunnel
again, which replaces it in place; so does a tcx link when no end moves.

Ends of ABI < 4 kept the secret in their code, not in a map: they move the
same way, but a packet crossing their line between its two ends' switches
(the sender of one end and the guard it sends to switch back to back, yet a
millisecond or a few apart: README, "Upgrade in place") is dropped.

Repair: when the pins were lost (removed, bpffs unmounted), their links went
with them; netkit ends fall back to their blackhole policy, veth ends lose
their guard.  The ADD or GC that loads the programs again moves those ends
the same way, making new links where the old ones are gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from cni_yogurt import backend
from cni_yogurt.datapath import TUNNEL_HOOK, CounterMap, PairMap, Pins, RemoteMap, pinned_link_names, unload
from cni_yogurt.faults import crash_point
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.line import impairment
from cni_yogurt.line.registry import End, Registry


def needed(registry: Registry, pins: Pins, lost: bool) -> bool:
    """Whether `move` has anything to do (read without writing, for the ADD hot path)."""
    if lost:
        return True
    others = pins.others()
    if not others:
        return False
    ends = registry.snapshot().values()
    return any(_older_release(e, pins) for e in ends) or any(_unused(o, ends) for o in others)


def move(registry: Registry, pins: Pins, log: Any, lost: bool = False) -> int:
    """Move every live end whose programs are an older release's (and, `lost`, every live
    end of `pins`: its programs were lost with them) onto `pins`; the number of ends moved.
    Ends of another bpffsDir (another network's, on the same stateDir) are not this one's."""
    moved = 0
    with registry.transaction() as ends, Rtnl() as host:
        live = [e for e in ends.values() if e.ready and not e.leaving and _device_is_there(host, e)]
        movers = [e for e in live if (lost and e.pins == pins.root) or _older_release(e, pins)]
        if movers:
            os.makedirs(pins.links_dir, exist_ok=True)
            _prepare_maps(pins, movers, live)
            for line in _by_line(movers).values():
                _switch_line(host, pins, line, log)
            _switch_tunnels(pins, log)
            for end in movers:
                if end.ready:
                    end.pins = pins.root
                    moved += 1
        for other in pins.others():
            if _unused(other, ends.values()):
                unload(other)
                log.info("removed an older release's pins", pins=other.root)
    return moved


def _older_release(end: End, pins: Pins) -> bool:
    """A live end on another ABI's pins under the same bpffsDir."""
    return end.ready and not end.leaving and end.pins != pins.root and pins.sibling(end.pins)


def _unused(other: Pins, ends: Any) -> bool:
    """No end of this registry records it and no link is pinned in it (another registry's ends,
    on the same bpffsDir, keep theirs there until that registry moves them)."""
    if any(e.pins == other.root for e in ends):
        return False
    try:
        return not os.listdir(other.links_dir)
    except FileNotFoundError:
        return True


def _device_is_there(host: Rtnl, end: End) -> bool:
    link = host.link(end.host_ifname)
    return link is not None and link["index"] == end.host_ifindex


def _by_line(ends: list[End]) -> dict[str, list[End]]:
    lines: dict[str, list[End]] = {}
    for end in ends:
        lines.setdefault(end.line, []).append(end)
    return lines


def _prepare_maps(pins: Pins, movers: list[End], live: list[End]) -> None:
    with CounterMap(pins) as counters:
        for end in movers:
            counters.start(end.host_ifindex, _old_counters(pins, end))
    moving = {e.line for e in movers}
    with PairMap(pins) as pairs:
        for line, pair in _by_line(live).items():
            if line in moving and len(pair) == 2:
                pairs.wire(pair[0].wire, pair[1].wire)

    _carry_remote(pins, movers)
    for end in movers:
        impairment.write(pins, end)


def _carry_remote(pins: Pins, movers: list[End]) -> None:
    """Each moving end's wiring to a remote partner, from its release's maps (ABI >= 5)."""
    if not pins.has_remote():
        return
    with RemoteMap(pins) as new:
        for end in movers:
            old = end.pin_dir(pins)
            if old == pins or not old.has_remote():
                continue
            try:
                with RemoteMap(old) as remotes:
                    wired = remotes.get(end.host_ifindex)
            except OSError:
                continue
            if wired is not None:
                new.set(end.host_ifindex, wired)


def _switch_tunnels(pins: Pins, log: Any) -> None:
    """Tunnel links pinned by an older release: onto this release's receive program."""
    from cni_yogurt.line import remote

    for other in pins.others():
        for tunnel in pinned_link_names(other, TUNNEL_HOOK):
            try:
                remote.attach_tunnel(pins, tunnel, "tcx")
            except OSError as exc:
                if exc.errno == errno.ENODEV:  # the device is gone, and its link with it
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(other.link(tunnel, TUNNEL_HOOK))
                    continue
                log.error("cannot move the tunnel device to the new programs", tunnel=tunnel, error=str(exc))


def _old_counters(pins: Pins, end: End) -> bytes | None:
    old = end.pin_dir(pins)
    # Only the counters map: loaded() would also want what older ABIs lack (v3 has no mark map).
    if old == pins or not os.path.exists(old.counters):
        return None
    try:
        with CounterMap(old) as counters:
            return counters.raw(end.host_ifindex)
    except OSError:
        return None


def _switch_line(host: Rtnl, pins: Pins, ends: list[End], log: Any) -> None:
    """Switch the hooks of a line's moving ends: A's sender, then the guard it sends to (B's),
    B's sender, A's guard.  With a shared mark any order is lossless; this one keeps each
    direction's window to one switch when the old programs' mark differs (ABI < 4)."""
    with contextlib.ExitStack() as stack:
        pairs: dict[str, backend.Pair] = {}
        for end in ends:
            try:
                pairs[end.key] = stack.enter_context(
                    backend.opened_pair(host, end.host_ifname, end.host_ifindex, end.peer_ifindex, end.netns)
                )
            except OSError as exc:
                _failed(end, exc, log)
        order = [e for e in ends if e.key in pairs]
        steps = [(e, "peer") for e in order[:1]] + [(e, h) for e in order[1:] for h in ("primary", "peer")]
        steps += [(e, "primary") for e in order[:1]]
        for step, (end, hook_name) in enumerate(steps, 1):
            if not end.ready:
                continue  # an earlier hook of it failed
            kind = backend.BY_ATTACH[end.attach]
            hook = next(h for h in kind.hooks if h.name == hook_name)
            try:
                backend.attach_hook(kind, pins, pairs[end.key], hook, _pinned_link(pins, end, hook))
            except OSError as exc:
                _failed(end, exc, log)
                continue
            old = end.pin_dir(pins)
            if old != pins:
                # Pinned under both dirs if a move was cut short between the two; one is enough now.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old.link(end.host_ifname, hook.name))
            crash_point(f"move:switched-{step}")


def _failed(end: End, exc: OSError, log: Any) -> None:
    end.ready = False  # not wired again until its owner re-adds or deletes it
    log.error("cannot move an end to the new programs", end=end.key, error=str(exc))


def _pinned_link(pins: Pins, end: End, hook: backend.Hook) -> str | None:
    """The link a hook has now: under the new dir if an earlier, interrupted move got that
    far, else where the end's release pinned it; None if the pins were lost with it."""
    candidates = [pins.link(end.host_ifname, hook.name), end.pin_dir(pins).link(end.host_ifname, hook.name)]
    return next((p for p in candidates if os.path.exists(p)), None)
