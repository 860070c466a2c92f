"""What `yogurt capture` costs the wire while it runs: one line, iperf3 and sockperf with no
capture and with one writing to /dev/null (default snap length, then 128 bytes), in turns.

With no capture nothing of it is attached (capture/tap.py): the line runs exactly the programs it
runs without this feature, so "off" is the wire section's figure.  CPU per GB counts every CPU,
the capturing process's reading and writing included.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

from bench_verbs import BenchError, Plugin, Scratch, log
from bench_wire import Wire, _connect, _iperf, _serving, _sockperf

from cni_yogurt import lab
from cni_yogurt.capture import tap
from cni_yogurt.line.registry import Registry

SNAPLENS = (262144, 128)


@contextlib.contextmanager
def _capturing(
    plugin: Plugin, wire: Wire, snaplen: int, said: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    end = next(e for e in Registry(plugin.state).snapshot().values() if e.netns == wire.client.path)
    proc = subprocess.Popen(
        [*lab.self_command(), "capture", "--end", end.key, "-w", "/dev/null", "-s", str(snaplen),
         "--state-dir", plugin.state, "--bpffs-dir", plugin.bpffs],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    where = tap.tap_of(end, outbound=True)
    deadline = time.monotonic() + 120
    while not tap.captured(where.host_ifindex, where.attach_type):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"yogurt capture did not start: {proc.communicate()[1]!r}")
        time.sleep(0.1)
    try:
        yield proc
    finally:
        proc.terminate()
        _, errors = proc.communicate(timeout=30)
        said.append(
            f"-s {snaplen}: {errors.decode().strip().splitlines()[-1].removeprefix('yogurt capture: ')}"
        )
        log(f"capture {said[-1]}")


def bench(
    plugin: Plugin, s: Scratch, cni_path: str, rounds: int, seconds: int, rr_seconds: int, said: list[str]
) -> list[Wire]:
    """[off, on at each snap length], measured in turns on one line; `said` gets what each capture
    said at its end (packets, and how many the reader lost)."""
    line = _connect(plugin, s, cni_path)
    wires = [Wire("no capture", line.client, line.server, line.address)] + [
        Wire(f"capture -s {n}", line.client, line.server, line.address) for n in SNAPLENS
    ]
    with _serving([line]):
        _sockperf(wires[0], 1)  # warm-up
        wires[0].rr_us.clear()
        wires[0].rr_p99_us.clear()
        for i in range(rounds):
            log(f"capture round {i + 1}/{rounds}")
            for wire, snaplen in zip(wires, (None, *SNAPLENS), strict=True):
                with _capturing(plugin, line, snaplen, said) if snaplen else contextlib.nullcontext():
                    _iperf(wire, seconds)
                    _sockperf(wire, rr_seconds)
    return wires
