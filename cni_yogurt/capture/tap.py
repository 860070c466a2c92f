"""Capture's kernel edge: bpf/capture.bpf.c compiled, attached before the senders of a line's
ends, its perf records read back as packets.

Where it taps: an end's sender hook (backend.py) sees every packet the container sends, so the
captured end's own sender gives what it sent (outbound) and its partner's sender, on this node,
what it received (inbound).  The links are the capturing process's alone (never pinned): when it
exits, however it exits, they close and the programs detach; the line itself is never touched.
On veth the tap is a tcx link even where the end's programs are tc filters ("tc", "split"): tcx
runs before clsact, so it needs Linux >= 6.6 (tcx) or netkit.  bcc is imported here only: a
capture is an admin's command, never a verb's path.
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
from cni_yogurt.line.registry import End

PROGRAM = "yogurt_capture"  # its name in the kernel too: status finds captured ends by it
TUNNEL_PROGRAM = "yogurt_capture_tunnel"
EVENTS = "yogurt_capture_events"
SOURCE = "capture.bpf.c"
_EVENT = struct.Struct("=QIIII")  # struct capture_event


@dataclass(frozen=True)
class Tap:
    """One hook to copy at: the device, the hook, and whose packets pass it."""

    host_ifindex: int  # the device the link attaches to
    attach_type: int
    outbound: bool  # sent by the captured end (else by its partner, to it)
    tunnel: tuple[int, int] | None = None  # the tunnel device's tap: the line's (VNI, partner node)


class CaptureError(RuntimeError):
    pass


def tap_of(end: End, outbound: bool) -> Tap:
    """Where an end's sender sits, as a place for a tcx or netkit link."""
    kind = backend.BY_ATTACH.get(end.attach)
    if kind is None:
        raise CaptureError(f"{end.key}: unknown attach method {end.attach!r}")
    sender = next(h for h in kind.hooks if h.name == "peer")
    if sender.on_container_side:  # never so today: every sender sits on the host side
        raise CaptureError(f"{end.key}: its sender is not on the host side")
    if kind.device == "veth" and not backend.tcx_supported():
        raise CaptureError("capture on veth needs tcx (Linux >= 6.6): this kernel has none")
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


class Capture:
    """The program loaded and linked before every tap's sender until `close`."""

    def __init__(self, taps: list[Tap], snaplen: int, cache_dir: str) -> None:
        from cni_yogurt.kernel.loader import source_path  # the package's _bpf dir

        source = source_path().with_name(SOURCE)
        kernel_source = headers.bcc_kernel_source(cache_dir)
        if kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = kernel_source
        import bcc  # heavy: LLVM

        self.taps = {tap.host_ifindex: tap for tap in taps}  # each program reports its device
        cflags = ["-w", f"-DSNAPLEN={snaplen}"]
        tunnel = next((tap.tunnel for tap in taps if tap.tunnel), None)
        if tunnel:  # the tunnel's program copies only this line's packets (bpf/capture.bpf.c)
            cflags += [f"-DTUNNEL_VNI={tunnel[0]}u", f"-DTUNNEL_NODE={tunnel[1]}u"]
        self.module = bcc.BPF(text=source.read_text(encoding="utf-8"), cflags=cflags)
        self.links: list[int] = []
        self.lost = 0
        try:
            for tap in taps:
                program = self.module.load_func(TUNNEL_PROGRAM if tap.tunnel else PROGRAM, bcc.BPF.SCHED_CLS)
                self.links.append(
                    bpf.link_create(program.fd, tap.host_ifindex, tap.attach_type, bpf.F_BEFORE)
                )
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
            ts, ifindex, length, caplen, _ = _EVENT.unpack_from(raw)
            tap = self.taps.get(ifindex)
            if tap is not None:
                got.append(Packet(ts + epoch, raw[_EVENT.size : _EVENT.size + caplen], length, tap.outbound))

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
