"""Side-by-side start-up and ADD/DEL figures: yogurt (venv, one-file binary) vs the reference ptp plugin.

Run as root with the venv's python:

    .venv/bin/python packaging/bench.py [--json [FILE]] [-n RUNS] [-c CYCLES]

Every plugin is exec'd exactly as a runtime execs it (cni_yogurt.lab.run_plugin),
so the figures include process start-up, which is most of what a CNI plugin costs.
yogurt's ADD/DEL need netkit; on a kernel without it they are skipped (ptp's
still run): run it in the VM for everything
(`bash tests/vm/run.sh .venv/bin/python packaging/bench.py`).  Emulation makes
every absolute time there slow, which is why ptp runs side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's cni_yogurt, even without the editable install

from cni_yogurt import health, lab  # noqa: E402
from cni_yogurt.datapath import Pins, unload  # noqa: E402

VM_HINT = "bash tests/vm/run.sh .venv/bin/python packaging/bench.py"


class BenchError(RuntimeError):
    pass


@dataclass
class Plugin:
    key: str
    label: str
    exe: list[str]
    type: str  # the netconf "type": yogurt or ptp
    subnet: str
    size: int | None  # bytes to ship; None for the venv (an interpreter plus packages)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def is_yogurt(self) -> bool:
        return self.type == "yogurt"


def stats(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "mean_ms": round(statistics.mean(ms), 1),
        "median_ms": round(statistics.median(ms), 1),
        "n": len(ms),
    }


def timed(command: str, plugin: Plugin, conf: dict[str, Any], **kw: Any) -> float:
    start = time.perf_counter()
    run = lab.run_plugin(command, conf, exe=plugin.exe, **kw)
    elapsed = time.perf_counter() - start
    if run.rc != 0:
        raise BenchError(f"{plugin.label} {command} failed (rc {run.rc}): {run.out} {run.stderr.strip()}")
    return elapsed


def bench_version(found: list[Plugin], runs: int) -> None:
    conf = {"cniVersion": "1.0.0"}
    times: dict[str, list[float]] = {p.key: [] for p in found}
    for i in range(3 + runs):
        # Round robin, so a burst of load on the machine hits every plugin alike;
        # the first rounds only warm the page cache (a node execs a plugin it has run before).
        for plugin in found:
            elapsed = timed("VERSION", plugin, conf)
            if i >= 3:
                times[plugin.key].append(elapsed)
    for plugin in found:
        plugin.figures["version"] = stats(times[plugin.key])


@contextmanager
def scratch(plugin: Plugin) -> Iterator[dict[str, Any]]:
    """A network config with its own IPAM dataDir (and, for yogurt, bpffs/state dirs), removed afterwards."""
    tmp = tempfile.mkdtemp(prefix=f"yogurt-bench-{plugin.key}-")
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": f"bench-{plugin.key}",
        "type": plugin.type,
        "ipam": {"type": "host-local", "dataDir": f"{tmp}/ipam", "ranges": [[{"subnet": plugin.subnet}]]},
    }
    # IPv4 only: ptp waits for IPv6 DAD to settle, which would measure a timer, not the plugin.
    if plugin.is_yogurt:
        conf.update(
            bpffsDir=f"/sys/fs/bpf/cni-yogurt-bench-{plugin.key}",
            stateDir=f"/run/cni-yogurt-bench-{plugin.key}",
            logFile=f"{tmp}/yogurt.log",
        )
        pins = Pins.under(conf["bpffsDir"])
        unload(pins)  # left by an interrupted run: the first ADD must find nothing pinned
        shutil.rmtree(conf["stateDir"], ignore_errors=True)
    try:
        yield conf
    finally:
        if plugin.is_yogurt:
            unload(pins)
            shutil.rmtree(conf["bpffsDir"], ignore_errors=True)
            shutil.rmtree(conf["stateDir"], ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def cycle(plugin: Plugin, conf: dict[str, Any], cni_path: str, tag: str) -> tuple[list[float], list[float]]:
    """Two containers on one network (for yogurt: both ends of one line): ADD both, DEL both."""
    pair = [lab.Netns(f"ygb{os.getpid() % 100000}{tag}{i}") for i in (1, 2)]
    adds: list[float] = []
    dels: list[float] = []
    added: list[lab.Netns] = []
    try:
        for ns in pair:
            ns.create()
            added.append(ns)  # before ADD: a failed ADD may leave state that DEL must clear
            adds.append(timed("ADD", plugin, conf, container_id=ns.name, netns=ns.path, cni_path=cni_path))
        while added:
            ns = added.pop()
            dels.append(timed("DEL", plugin, conf, container_id=ns.name, netns=ns.path, cni_path=cni_path))
    finally:
        for ns in reversed(added):  # only after a failure; DEL is idempotent
            lab.run_plugin(
                "DEL", conf, exe=plugin.exe, container_id=ns.name, netns=ns.path, cni_path=cni_path
            )
        for ns in pair:
            ns.delete()
    return adds, dels


def bench_add_del(found: list[Plugin], cycles: int, cni_path: str) -> None:
    with ExitStack() as stack:
        confs = {p.key: stack.enter_context(scratch(p)) for p in found}
        # A warm-up cycle each; for yogurt its first ADD is the cold path (bcc
        # compiles and pins the programs), which a node pays once per boot.
        for plugin in found:
            print(f"bench: {plugin.label}: first ADD/DEL", file=sys.stderr, flush=True)
            adds, _ = cycle(plugin, confs[plugin.key], cni_path, f"{plugin.key}w")
            if plugin.is_yogurt:
                plugin.figures["first_add"] = stats(adds[:1])
        all_adds: dict[str, list[float]] = {p.key: [] for p in found}
        all_dels: dict[str, list[float]] = {p.key: [] for p in found}
        for i in range(cycles):
            print(f"bench: ADD/DEL cycle {i + 1}/{cycles}", file=sys.stderr, flush=True)
            for plugin in found:  # round robin, as for VERSION
                adds, dels = cycle(plugin, confs[plugin.key], cni_path, f"{plugin.key}{i}")
                all_adds[plugin.key] += adds
                all_dels[plugin.key] += dels
    for plugin in found:
        adds, dels = all_adds[plugin.key], all_dels[plugin.key]
        plugin.figures["add"] = stats(adds)
        plugin.figures["del"] = stats(dels)
        # One container's whole life: its ADD plus its DEL.
        plugin.figures["add_del"] = stats([a + d for a, d in zip(adds, dels, strict=True)])


def plugins(binary: Path, ptp: Path | None) -> tuple[list[Plugin], list[str]]:
    found: list[Plugin] = []
    notes: list[str] = []
    venv_yogurt = Path(sys.prefix, "bin", "yogurt")
    if not venv_yogurt.exists():
        venv_yogurt = REPO / ".venv" / "bin" / "yogurt"
    found.append(Plugin("venv", "yogurt (venv)", [str(venv_yogurt)], "yogurt", "10.231.0.0/24", None))
    if binary.exists():
        found.append(
            Plugin("bin", "yogurt (binary)", [str(binary)], "yogurt", "10.232.0.0/24", binary.stat().st_size)
        )
    else:
        notes.append(f"{binary} missing: `make binary` builds it")
    if ptp is not None:
        found.append(Plugin("ptp", "ptp (reference)", [str(ptp)], "ptp", "10.233.0.0/24", ptp.stat().st_size))
    else:
        notes.append("ptp not found: apt-get install containernetworking-plugins")
    return found, notes


def find_ptp() -> Path | None:
    for directory in lab.CNI_PATH_DEFAULT.split(":"):
        if os.access(path := os.path.join(directory, "ptp"), os.X_OK):
            return Path(path)
    return None


def fmt_ms(fig: dict[str, float] | None) -> str:
    """mean / median, in ms, or in s once emulation makes them long."""
    if fig is None:
        return "-"
    scale, unit = (1000, "s") if fig["mean_ms"] >= 1000 else (1, "ms")
    mean, median = fig["mean_ms"] / scale, fig["median_ms"] / scale
    if fig["n"] == 1:
        return f"{mean:.1f} {unit}"
    return f"{mean:.1f} / {median:.1f} {unit}" if unit == "ms" else f"{mean:.2f} / {median:.2f} {unit}"


def table(found: list[Plugin]) -> str:
    rows = [
        ("", [p.label for p in found]),
        ("size", [f"{p.size / 2**20:.1f} MiB" if p.size else "- (python + venv)" for p in found]),
        ("VERSION mean / median", [fmt_ms(p.figures.get("version")) for p in found]),
    ]
    if any("add" in p.figures for p in found):
        rows += [
            ("ADD mean / median", [fmt_ms(p.figures.get("add")) for p in found]),
            ("DEL mean / median", [fmt_ms(p.figures.get("del")) for p in found]),
            ("ADD+DEL mean / median", [fmt_ms(p.figures.get("add_del")) for p in found]),
            ("first ADD after boot", [fmt_ms(p.figures.get("first_add")) for p in found]),
        ]
    width = [max(len(r[0]) for r in rows)] + [max(len(r[1][i]) for r in rows) for i in range(len(found))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip([name, *cells], width, strict=True)) for name, cells in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--runs", type=int, default=30, help="VERSION execs per plugin (default 30)")
    parser.add_argument(
        "-c", "--cycles", type=int, default=10, help="ADD/DEL cycles of 2 containers (default 10)"
    )
    parser.add_argument("--binary", type=Path, default=REPO / "dist" / "yogurt", help="the one-file binary")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="figures as JSON: on stdout instead of the table, or into FILE as well",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench needs root (netns, netlink, bpf)", file=sys.stderr)
        return 1

    found, notes = plugins(args.binary, find_ptp())
    netkit = health.probe_netkit()
    cni_path = lab.have_host_local()
    report: dict[str, Any] = {"kernel": os.uname().release, "runs": args.runs, "cycles": args.cycles}
    if cni_path is None:
        notes.append(
            "no ADD/DEL figures: host-local IPAM missing (apt-get install containernetworking-plugins)"
        )
    elif not netkit.ok:
        notes.append(f"no yogurt ADD/DEL figures: they must come from a netkit kernel; try `{VM_HINT}`")

    print(f"bench: VERSION x{args.runs}", file=sys.stderr, flush=True)
    bench_version(found, args.runs)
    measured: list[Plugin] = []
    for plugin in found:
        # ptp runs on any kernel; yogurt needs netkit.
        if cni_path is None:
            plugin.figures["add_del_status"] = "skipped: no host-local IPAM plugin"
        elif plugin.is_yogurt and not netkit.ok:
            plugin.figures["add_del_status"] = f"skipped: {netkit.detail}"
        else:
            plugin.figures["add_del_status"] = "measured"
            measured.append(plugin)
    if measured and cni_path is not None:
        bench_add_del(measured, args.cycles, cni_path)

    report["plugins"] = [{"name": p.label, "exe": p.exe[0], "size_bytes": p.size, **p.figures} for p in found]
    report["notes"] = notes
    if args.json:
        text = json.dumps(report, indent=1)
        if args.json == "-":
            print(text)
            return 0
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(f"Linux {report['kernel']}; VERSION x{args.runs}, ADD/DEL {args.cycles} cycles of 2 containers")
    print(table(found))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
