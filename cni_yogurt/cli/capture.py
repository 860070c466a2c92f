"""`yogurt capture`: the packets of a line, or of one end, into pcapng or pcap (capture/).

Seen from one end: what it sent (outbound) and what its partner sent to it (inbound), both read
at the senders before they redirect, so exactly what the two containers put on the line; for an
end whose partner is on another node, what arrives for it is copied at the node's tunnel device.
With --drops, also what the end's guard drops (whatever else tried to reach it), with why.
Root only, and visible: while it runs, `yogurt status` says the line is captured."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

from cni_yogurt.capture import pcap
from cni_yogurt.capture.tap import Capture, CaptureError, Tap, guard_tap, tap_of, tunnel_tap
from cni_yogurt.datapath import Pins
from cni_yogurt.line.registry import End, Registry


def chosen(
    ends: dict[str, End], line: str | None, end: str | None, device: str | None, pod: str | None
) -> End:
    """The end a capture is seen from (for a line: its first end on this node, by name)."""
    if line is not None:
        found = sorted((e for e in ends.values() if e.line == line), key=lambda e: e.key)
    elif end is not None:
        found = [ends[end]] if end in ends else []
    elif device is not None:
        found = [e for e in ends.values() if e.host_ifname == device]
    else:
        namespace, _, name = (pod or "").partition("/")
        found = sorted(
            (e for e in ends.values() if (e.pod_namespace, e.pod_name) == (namespace, name)),
            key=lambda e: e.key,
        )
        if len(found) > 1:
            keys = ", ".join(e.key for e in found)
            raise CaptureError(f"pod {pod} has {len(found)} ends ({keys}): name one with --end")
    if not found:
        what = {"line": line, "end": end, "device": device, "pod": pod}
        named = next(f"{k} {v!r}" for k, v in what.items() if v is not None)
        raise CaptureError(f"no {named} on this node (yogurt status lists them)")
    return found[0]


def partner_of(ends: dict[str, End], seen: End) -> End | None:
    """The other end of its line on this node, if it is here."""
    return next(
        (e for e in ends.values() if e.line == seen.line and e.network == seen.network and e.key != seen.key),
        None,
    )


@contextlib.contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdout.buffer
        return
    with open(path, "wb") as out:
        yield out


def capture(
    *,
    line: str | None,
    end: str | None,
    device: str | None,
    pod: str | None,
    write: str,
    fmt: str,
    snaplen: int,
    count: int | None,
    duration: float | None,
    drops: bool = False,
    state_dir: str,
    bpffs_dir: str,
) -> int:
    if os.geteuid() != 0:
        print(
            "yogurt capture: root only (it copies the packets of containers' private lines)", file=sys.stderr
        )
        return 1
    if write == "-" and sys.stdout.isatty():
        print(
            "yogurt capture: not writing packets to a terminal (-w FILE, or -w - into a pipe)",
            file=sys.stderr,
        )
        return 1
    try:
        ends = Registry(state_dir).snapshot()
        seen = chosen(ends, line, end, device, pod)
        partner = partner_of(ends, seen)
        taps: list[Tap] = [tap_of(seen, outbound=True)]
        if partner is not None:
            taps.append(tap_of(partner, outbound=False))
        elif (far := tunnel_tap(seen, Pins.under(bpffs_dir))) is not None:
            taps.append(far)  # its partner is on another node: what it sends arrives by the tunnel
        if drops:
            taps.append(guard_tap(seen, Pins.under(bpffs_dir)))
    except (CaptureError, OSError) as exc:
        print(f"yogurt capture: {exc}", file=sys.stderr)
        return 1
    try:
        tapped = Capture(taps, snaplen, state_dir)  # the loader's header tree, if it laid one out
    except Exception as exc:  # noqa: BLE001  (bcc says "Failed to compile" as a bare Exception)
        print(
            f"yogurt capture: cannot load the capture program: {exc} (yogurt doctor: bcc, headers)",
            file=sys.stderr,
        )
        return 1
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    deadline = time.monotonic() + duration if duration is not None else None
    written = 0
    description = f"yogurt line {seen.line}, end {seen.key} (host side {seen.host_ifname})"
    print(
        f"yogurt capture: {seen.key} (line {seen.line})"
        + (f" and its partner {partner.key}" if partner else "")
        + (f", {count} packets" if count else "")
        + (f", {duration:g} s" if duration else "")
        + (", what its guard drops" if drops else "")
        + "; Ctrl-C stops",
        file=sys.stderr,
    )
    try:
        with _output(write) as out:
            writer = pcap.Writer(out, fmt, snaplen, seen.key, description, seen.host_ifindex)
            out.flush()

            def stop() -> bool:
                late = deadline is not None and time.monotonic() >= deadline
                return bool(stopping) or late or (count is not None and written >= count)

            for packet in tapped.packets(stop):
                writer.write(packet)
                out.flush()
                written += 1
                if count is not None and written >= count:
                    break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader left (`| head`, a closed Wireshark)
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no flush error at exit)
    finally:
        tapped.close()
    lost = f", {tapped.lost} lost (the reader was too slow)" if tapped.lost else ""
    print(f"yogurt capture: {written} packets{lost}", file=sys.stderr)
    return 0
