"""The wire: two containers on a yogurt line against two containers joined by ptp (veth + host routing).

TCP throughput with iperf3 (one stream), request/response latency with sockperf
ping-pong (UDP, 64-byte messages; sockperf reports half the round trip), and
CPU seconds per GB moved, from /proc/stat (every CPU, softirq included: the
machine should be otherwise idle).  Rounds alternate yogurt, ptp, yogurt...
Traffic only ever flows between the bench's own netns.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench_verbs import BenchError, Plugin, Scratch, log, run

IPERF_PORT = 5399
SOCKPERF_PORT = 11399


@dataclass
class Wire:
    label: str
    client: Any  # lab.Netns
    server: Any
    address: str
    gbps: list[float] = field(default_factory=list)
    cpu_s_per_gb: list[float] = field(default_factory=list)
    rr_us: list[float] = field(default_factory=list)  # sockperf average one-way latency
    rr_p99_us: list[float] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """What the report keeps of it."""
        return {
            "label": self.label,
            "gbps": self.gbps,
            "cpu_s_per_gb": self.cpu_s_per_gb,
            "rr_us": self.rr_us,
            "rr_p99_us": self.rr_p99_us,
        }


def tools_missing() -> list[str]:
    return [t for t in ("iperf3", "sockperf") if shutil.which(t) is None]


def _cpu_busy() -> float:
    """Seconds of CPU time spent by every CPU, not idle, since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / 100  # USER_HZ


def _connect(plugin: Plugin, s: Scratch, cni_path: str) -> Wire:
    conf = s.conf(plugin, f"{plugin.key}wire")
    outs = []
    nss = [s.ns(f"{plugin.key}w{j}") for j in (1, 2)]
    for ns in nss:
        cid = f"ybench-wire-{plugin.key}-{ns.name}"
        s.track(plugin, conf, cid, ns.path, "eth0")
        _, out = run(plugin, "ADD", conf, cid, ns.path, cni_path=cni_path, check=True)
        outs.append(out)
    address = outs[1]["ips"][0]["address"].split("/")[0]
    return Wire(plugin.label, nss[0], nss[1], address)


def _serve(wire: Wire) -> None:
    for argv in (
        ["iperf3", "-s", "-B", wire.address, "-p", str(IPERF_PORT)],
        ["sockperf", "server", "-i", wire.address, "-p", str(SOCKPERF_PORT)],
    ):
        wire.servers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", wire.server.name, *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    # Both listen within a moment; wait until they do (bounded).
    for _ in range(100):
        tcp = wire.server.run("ss", "-Hltn", f"sport = :{IPERF_PORT}").stdout.strip()
        udp = wire.server.run("ss", "-Hlun", f"sport = :{SOCKPERF_PORT}").stdout.strip()
        if tcp and udp:
            return
        time.sleep(0.05)
    raise BenchError(f"{wire.label}: iperf3/sockperf servers on {wire.address} never listened")


def _stop(wire: Wire) -> None:
    for proc in wire.servers:
        proc.terminate()  # our own child (ip netns exec execs the tool in place)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    wire.servers.clear()


def _iperf(wire: Wire, seconds: int) -> None:
    busy = _cpu_busy()
    proc = wire.client.run(
        "iperf3", "-c", wire.address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", timeout=seconds + 30
    )
    busy = _cpu_busy() - busy
    if proc.returncode != 0:
        raise BenchError(f"{wire.label}: iperf3 failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    end = json.loads(proc.stdout)["end"]
    received = end["sum_received"]
    wire.gbps.append(received["bits_per_second"] / 1e9)
    wire.cpu_s_per_gb.append(busy / (received["bytes"] / 1e9))


def _sockperf(wire: Wire, seconds: int) -> None:
    proc = wire.client.run(
        "sockperf",
        "ping-pong",
        "-i",
        wire.address,
        "-p",
        str(SOCKPERF_PORT),
        "-t",
        str(seconds),
        "--msg-size",
        "64",
        timeout=seconds + 30,
    )
    avg = re.search(r"avg-lat(?:ency)?=\s*([\d.]+)", proc.stdout)
    p99 = re.search(r"percentile 99\.000 =\s*([\d.]+)", proc.stdout)
    if proc.returncode != 0 or avg is None or p99 is None:
        raise BenchError(f"{wire.label}: sockperf failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    wire.rr_us.append(float(avg.group(1)))
    wire.rr_p99_us.append(float(p99.group(1)))


@contextlib.contextmanager
def _serving(wires: list[Wire]) -> Iterator[None]:
    try:
        for wire in wires:
            _serve(wire)
        yield
    finally:
        for wire in wires:
            _stop(wire)


def bench(
    plugins: list[Plugin], s: Scratch, cni_path: str, rounds: int, seconds: int, rr_seconds: int
) -> list[Wire]:
    """`plugins`: yogurt first, then ptp; each gets one pair of containers."""
    wires = [_connect(p, s, cni_path) for p in plugins]
    measure(wires, rounds, seconds, rr_seconds)
    return wires


def measure(wires: list[Wire], rounds: int, seconds: int, rr_seconds: int, what: str = "wire") -> None:
    """iperf3 then sockperf over each wire in turn, `rounds` times (wire 1, wire 2, wire 1, ...),
    after one warm-up ping-pong each; the figures land in the wires."""
    with _serving(wires):
        for wire in wires:  # warm-up: ARP/neighbour entries, the servers' first accept
            _sockperf(wire, 1)
            wire.rr_us.clear()
            wire.rr_p99_us.clear()
        for i in range(rounds):
            log(f"{what} round {i + 1}/{rounds}")
            for wire in wires:
                _iperf(wire, seconds)
                _sockperf(wire, rr_seconds)
