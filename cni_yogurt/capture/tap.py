"""Capture's kernel edge: bpf/capture.bpf.c compiled, attached before the senders of a line's
ends, its perf records read back as packets.

Where it taps: an end's sender hook (backend.py) sees every packet the container sends, so the
captured end's own sender gives what it sent (outbound) and its partner's sender, on this node,
what it received (inbound).  The links are the capturing process's alone (never pinned): when it
exits, however it exits, they close and the programs detach; the line itself is never touched.
On veth the tap is a tcx link even where the end's programs are tc filters ("tc", "split"): tcx
runs before clsact, so it needs Linux >= 6.6 (tcx) or netkit.  bcc is imported here only: a
capture is an admin's command, never a verb's path.

With `--drops`, a third program sits before the captured end's guard (its netkit primary hook,
or tcx ingress of its container-side veth, attached from inside the container's netns) and
copies what the guard is about to drop, with why, deciding from the end's own pinned maps.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cni_yogurt import backend
from cni_yogurt.capture.pcap import Packet
from cni_yogurt.datapath import Pins, RemoteMap
from cni_yogurt.kernel import bpf, headers
from cni_yogurt.kernel.netns import run_in
from cni_yogurt.line.registry import End

PROGRAM = "yogurt_capture"  # its name in the kernel too: status finds captured ends by it
TUNNEL_PROGRAM = "yogurt_capture_tunnel"
GUARD_PROGRAM = "yogurt_capture_guard"
EVENTS = "yogurt_capture_events"
SOURCE = "capture.bpf.c"
_EVENT = struct.Struct("=QIIII")  # struct capture_event
# Why the guard drops a packet: capture_event.dropped (bpf/capture.bpf.c's DROP_*).
DROPPED = {
    1: "unmarked (sent by the host, forwarded or injected)",
    2: "wrong sender (marked, but not by this end's partner)",
}


@dataclass(frozen=True)
class Tap:
    """One hook to copy at: the device, the hook, and whose packets pass it."""

    host_ifindex: int  # the device the link attaches to
    attach_type: int
    outbound: bool  # sent by the captured end (else by its partner, to it)
    tunnel: tuple[int, int] | None = None  # the tunnel device's tap: the line's (VNI, partner node)
    guard: Pins | None = None  # before an end's guard: the pins of its maps (--drops)
    netns: str | None = None  # where the device is, if not in the host's netns

    @property
    def reports(self) -> tuple[int, bool]:
        """How its program's events name it: the ifindex it sees, and whether they are drops
        (an end's sender and its guard see the same ifindex: both of its devices have it)."""
        return self.host_ifindex, self.guard is not None


class CaptureError(RuntimeError):
    pass


def _backend_of(end: End) -> backend.Backend:
    """The end's backend, where a capture can link before its programs: netkit, or veth with tcx."""
    kind = backend.BY_ATTACH.get(end.attach)
    if kind is None:
        raise CaptureError(f"{end.key}: unknown attach method {end.attach!r}")
    if kind.device == "veth" and not backend.tcx_supported():
        raise CaptureError("capture on veth needs tcx (Linux >= 6.6): this kernel has none")
    return kind


def tap_of(end: End, outbound: bool) -> Tap:
    """Where an end's sender sits, as a place for a tcx or netkit link."""
    kind = _backend_of(end)
    sender = next(h for h in kind.hooks if h.name == "peer")
    if sender.on_container_side:  # never so today: every sender sits on the host side
        raise CaptureError(f"{end.key}: its sender is not on the host side")
    attach_type = sender.attach_type if sender.linked else bpf.TCX_INGRESS
    return Tap(end.host_ifindex, attach_type, outbound)


def tunnel_tap(end: End, pins: Pins) -> Tap | None:
    """For an end wired to a partner on another node: its packets' way in, at the tunnel device."""
    try:
        with RemoteMap(end.pin_dir(pins)) as remotes:
            remote = remotes.get(end.host_ifindex)
    except OSError:  # pins of a release without lines across nodes
        return None
    if remote is None:
        return None
    if not backend.tcx_supported():
        raise CaptureError("capture across nodes needs tcx (Linux >= 6.6) on the tunnel device")
    return Tap(remote.tunnel_ifindex, bpf.TCX_INGRESS, False, (remote.vni, remote.node_ipv4))


def guard_tap(end: End, pins: Pins) -> Tap:
    """Before an end's guard: what it drops (`--drops`), for an end on this release's programs,
    whose guard the capture program decides as (bpf/capture.bpf.c)."""
    own = end.pin_dir(pins)
    if own.abi != pins.abi:
        raise CaptureError(
            f"{end.key} runs an older release's programs ({own.root}): "
            "`yogurt upgrade` moves it, then --drops"
        )
    if _backend_of(end).device == "netkit":
        return Tap(end.host_ifindex, bpf.NETKIT_PRIMARY, False, guard=own)
    return Tap(end.peer_ifindex, bpf.TCX_INGRESS, False, guard=own, netns=end.netns)


def _linked(prog_fd: int, tap: Tap) -> int:
    """A link before whatever runs at the tap's hook, made in the device's netns (ifindexes are per netns)."""

    def link() -> int:
        return bpf.link_create(prog_fd, tap.host_ifindex, tap.attach_type, bpf.F_BEFORE)

    return link() if tap.netns is None else run_in(tap.netns, link)


def _program(tap: Tap) -> str:
    return GUARD_PROGRAM if tap.guard else TUNNEL_PROGRAM if tap.tunnel else PROGRAM


class Capture:
    """The program loaded and linked before every tap's sender until `close`."""

    def __init__(self, taps: list[Tap], snaplen: int, cache_dir: str) -> None:
        from cni_yogurt.kernel.loader import source_path  # the package's _bpf dir

        source = source_path().with_name(SOURCE)
        kernel_source = headers.bcc_kernel_source(cache_dir)
        if kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = kernel_source
        import bcc  # heavy: LLVM

        self.taps = {tap.reports: tap for tap in taps}  # each program reports its device
        cflags = ["-w", f"-DSNAPLEN={snaplen}"]
        tunnel = next((tap.tunnel for tap in taps if tap.tunnel), None)
        if tunnel:  # the tunnel's program copies only this line's packets (bpf/capture.bpf.c)
            cflags += [f"-DTUNNEL_VNI={tunnel[0]}u", f"-DTUNNEL_NODE={tunnel[1]}u"]
        guard = next((tap.guard for tap in taps if tap.guard), None)
        if guard:  # the guard's maps, opened as they are pinned (bcc would make a missing one)
            for name in ("mark", "pairs", "remote"):
                if not os.path.exists(guard.map(name)):
                    raise CaptureError(f"{guard.map(name)} is missing: this release's wire is not loaded")
                cflags.append(f'-DGUARD_{name.upper()}="{guard.map(name)}"')
        self.module = bcc.BPF(text=source.read_text(encoding="utf-8"), cflags=cflags)
        self.links: list[int] = []
        self.lost = 0
        try:
            for tap in taps:
                program = self.module.load_func(_program(tap), bcc.BPF.SCHED_CLS)
                self.links.append(_linked(program.fd, tap))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.links:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.links.clear()
        self.module.cleanup()

    def packets(self, stop: Callable[[], bool], poll_ms: int = 100) -> Iterator[Packet]:
        """Packets as they come, until `stop()` says so (asked after every poll)."""
        epoch = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        got: list[Packet] = []

        def on_event(_cpu: int, data: int, size: int) -> None:
            raw = ctypes.string_at(data, size)
            ts, ifindex, length, caplen, dropped = _EVENT.unpack_from(raw)
            tap = self.taps.get((ifindex, bool(dropped)))
            if tap is not None:
                frame = raw[_EVENT.size : _EVENT.size + caplen]
                why = DROPPED.get(dropped, f"reason {dropped}") if dropped else None
                got.append(Packet(ts + epoch, frame, length, tap.outbound, why))

        def on_lost(count: int) -> None:
            self.lost += count

        self.module[EVENTS].open_perf_buffer(on_event, page_cnt=256, lost_cb=on_lost)
        while not stop():
            self.module.perf_buffer_poll(poll_ms)
            got.sort(key=lambda p: p.ts_ns)  # one buffer per CPU, each read in turn: in time order again
            yield from got
            got.clear()


def end_captured(end: End) -> bool:
    """Whether a capture copies what this end sends (`yogurt status`, the agent's metric)."""
    try:
        tap = tap_of(end, outbound=True)
    except CaptureError:
        return False
    return captured(tap.host_ifindex, tap.attach_type)


def captured(host_ifindex: int, attach_type: int) -> bool:
    """Whether a capture's program is attached at this hook now (for `yogurt status`)."""
    try:
        ids = bpf.prog_query(host_ifindex, attach_type)
    except OSError:
        return False
    return any(bpf.prog_name(i) == PROGRAM for i in ids)
