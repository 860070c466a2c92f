"""yogurt against the reference ptp + host-local, side by side in one run: verbs, scale, the wire.

Run as root with the venv's python (`make bench` installs iperf3, sockperf and
matplotlib first):

    .venv/bin/python bench/bench.py [--out DIR] [--only version,verbs,scale,...,impair,across] ...

Natively it measures the backend this kernel gives yogurt (netkit where the
kernel has it, else veth); in the netkit VM (`make bench-vm`) the same code
runs, where only ratios mean anything.  Figures (every one an exec, as a
runtime does it, plugins taking turns in every round):

  VERSION, ADD, CHECK, DEL, DEL of nothing: venv entry point, dist/yogurt, ptp (+ `python3 -c pass`),
  and the entry point, dist/yogurt and the compiled front end (dist/yogurt-front) as front ends
  of a node agent (`yogurt agent` on dirs of its own, started first: its first ADD is any ADD;
  `--no-agent` leaves those columns out);
  ADD/DEL with N lines (2N ends) already up on the node;  GC with those 2N stale ends;
  200 ADDs for 100 lines, 20 at a time (wired right? leftovers after 200 DELs?), against ptp, also
  through the agent (the entry point, the compiled front end);
  modes: ADD/DEL through the compiled front end and the agent for netkit (where the kernel has it)
  and each veth attach mode (tcx, split, tc), pod pairs back to back and spaced out (0.6 s apart),
  and the 200-ADD burst per mode, against ptp in the same rounds;
  the wire: iperf3 + sockperf between two containers on a line vs two ptp containers;
  capture: the same over one line with no capture and with `yogurt capture` running (bench_capture.py);
  impairments: the same over a line of the release before (its own wheel, plugin and pins) and lines of
  this release with no impairment, with an inert one (100 Gbit/s) and with 1 % loss (bench_impair.py);
  across nodes (bench_across.py; needs wireguard-go and an etcd, else left out unless asked for): two
  lab nodes, etcd, an agent per node; a line's wire across them vs the bare WireGuard path between the
  same nodes, and ADD/DEL of a cross-node end vs a node-local end through the same agent.

Writes bench.md, bench.json and bench.png into --out (docs/bench by default).
Everything it makes (netns `ybn*`, networks `ybench-*`, its own bpffs/state dirs,
subnets 10.201-212.0.0/16, the node lab's netns `yn-*`) is removed at the end, even after a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]  # the checkout's cni_yogurt; the bench_* modules

import bench_across  # noqa: E402
import bench_agent  # noqa: E402
import bench_capture  # noqa: E402
import bench_impair  # noqa: E402
import bench_report  # noqa: E402
import bench_verbs  # noqa: E402
import bench_wire  # noqa: E402
from bench_verbs import BenchError, Plugin, Samples, log, timed  # noqa: E402

from cni_yogurt import backend, health, lab  # noqa: E402

SECTIONS = ("version", "verbs", "modes", "scale", "burst", "wire", "capture", "impair", "across")
PAUSE = 0.6  # seconds between pod pairs when "spaced out" (the pool refills after 0.25 s idle)


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = platform.system()
    with contextlib.suppress(OSError):
        os_name = platform.freedesktop_os_release()["PRETTY_NAME"]
    if health.probe_netkit().ok:
        kind = "netkit"
    else:
        kind = "veth + tcx" if backend.tcx_supported() else "veth + tc (clsact)"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": os_name,
        "kernel": platform.release(),
        "backend": kind,
        "where": "emulated VM (no KVM)" if os.environ.get("YOGURT_VM_REPO") else "native",
    }


def plugins(binary: Path) -> list[Plugin]:
    found = []
    entry = Path(sys.prefix, "bin", "yogurt")
    if not entry.exists():
        entry = REPO / ".venv" / "bin" / "yogurt"
    found.append(Plugin("venv", "yogurt (entry point)", [str(entry)], "yogurt", "10.201.0.0/16"))
    if binary.exists():
        found.append(
            Plugin(
                "bin", "yogurt (dist/yogurt)", [str(binary)], "yogurt", "10.202.0.0/16", binary.stat().st_size
            )
        )
    else:
        log(f"{binary} missing (`make binary`): no one-file figures")
    ptp = next(
        (Path(d, "ptp") for d in lab.CNI_PATH_DEFAULT.split(":") if os.access(Path(d, "ptp"), os.X_OK)), None
    )
    if ptp is None:
        raise BenchError("ptp not found: apt-get install containernetworking-plugins")
    found.append(Plugin("ptp", "ptp + host-local", [str(ptp)], "ptp", "10.203.0.0/16", ptp.stat().st_size))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench")
    parser.add_argument("--binary", type=Path, default=REPO / "dist" / "yogurt")
    parser.add_argument(
        "--front", type=Path, default=REPO / "dist" / "yogurt-front", help="compiled front end"
    )
    parser.add_argument(
        "--only", help=f"sections, of {','.join(SECTIONS)} (default: all; across where it can run)"
    )
    parser.add_argument("-n", "--rounds", type=int, default=30, help="rounds of VERSION and of ADD/CHECK/DEL")
    parser.add_argument("--lines", type=int, default=500, help="lines already up for the scale figures")
    parser.add_argument("--burst", type=int, default=200, help="parallel ADDs (two per line), 20 at a time")
    parser.add_argument("--wire-rounds", type=int, default=10)
    parser.add_argument("--wire-seconds", type=int, default=10, help="iperf3 run length")
    parser.add_argument("--rr-seconds", type=int, default=3, help="sockperf ping-pong run length")
    parser.add_argument("--across-rounds", type=int, default=8, help="wire rounds across nodes")
    parser.add_argument("--across-seconds", type=int, default=4, help="iperf3 run length across nodes")
    parser.add_argument("--across-rr-seconds", type=int, default=2, help="sockperf run length across nodes")
    parser.add_argument("--across-add-rounds", type=int, default=15, help="ADD/DEL rounds across nodes")
    parser.add_argument("--no-agent", action="store_true", help="no column through the node agent")
    parser.add_argument(
        "--render-only", action="store_true", help="write bench.md and bench.png from --out's bench.json"
    )
    args = parser.parse_args()
    if args.render_only:
        render(args.out, json.loads((args.out / "bench.json").read_text(encoding="utf-8")))
        return 0
    if os.geteuid() != 0:
        print("bench needs root (netns, netlink, bpf)", file=sys.stderr)
        return 1
    only = set((args.only or ",".join(SECTIONS)).split(","))
    if unknown := only - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    notes = []
    if "across" in only and (why := bench_across.missing()):
        if args.only:  # asked for by name: say why not and stop
            raise BenchError(f"across: {why}")
        only.discard("across")  # on by default only where it can run
        notes.append(f"across nodes not measured: {why}")
        log(notes[-1])
    cni_path = lab.have_host_local()
    if cni_path is None:
        raise BenchError("host-local not found: apt-get install containernetworking-plugins")
    if only & {"wire", "capture", "impair"} and (missing := bench_wire.tools_missing()):
        raise BenchError(f"{', '.join(missing)} missing: `make bench` installs them")

    started = time.perf_counter()
    found = plugins(args.binary)
    ptp = found[-1]
    if not args.no_agent:  # ptp stays last
        front = bench_agent.compiled_front(args.front, found)
        found = [*found[:-1], *bench_agent.through_agent(found), *([front] if front else []), ptp]
    yogurts = [p for p in found if p.is_yogurt]
    agent_plugin = next((p for p in found if p.key == "agent"), None)
    samples = Samples()
    report: dict[str, Any] = {
        "machine": machine(),
        "rounds": args.rounds,
        "labels": {p.key: p.label for p in found} | {"python": "python3 -c pass"},
        "sizes": {p.key: p.size for p in found},
        "notes": notes,
    }
    log(f"{report['machine']}")
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(bench_verbs.scratch())
        if agent_plugin is not None and only & {"verbs", "burst", "modes"}:
            report["agent_start_s"] = stack.enter_context(
                bench_agent.running(yogurts[0].exe, f"{s.tmp}/agent.log")
            )
        if "version" in only:
            timed(f"VERSION x{args.rounds}", lambda: bench_verbs.version(found, args.rounds, samples))
        if "verbs" in only:
            timed(
                f"ADD/CHECK/DEL x{args.rounds}",
                lambda: bench_verbs.verbs(found, args.rounds, s, samples, cni_path),
            )
            timed("DEL of nothing", lambda: bench_verbs.del_nothing(found, args.rounds, s, samples, cni_path))
        if "modes" in only:
            modes(found, ptp, args, s, samples, report, cni_path)
        if "scale" in only:
            conf, fill_s = timed(
                f"{args.lines} lines up", lambda: bench_verbs.fill(yogurts[0], s, args.lines)
            )
            tag = f" @{args.lines} lines"
            report.update(fill_s=fill_s, scale_lines=args.lines, scale_add_row=f"ADD{tag}")
            report["scale_rows"] = [f"ADD{tag}", f"DEL{tag}"]
            # The entry point and ptp take turns again, now with the node full.
            timed(
                f"ADD/DEL with {args.lines} lines up",
                lambda: bench_verbs.verbs([yogurts[0], ptp], args.rounds, s, samples, cni_path, tag),
            )
            stale = timed("GC", lambda: bench_verbs.gc_all(yogurts[0], conf, s, samples, cni_path))
            if stale:
                gc_row = f"GC ({stale} stale ends)"
                report["gc"] = {"stale": stale, "seconds": samples.data[yogurts[0].key][gc_row][0]}
            else:
                report["notes"].append("GC not measured: other yogurt devices were on the host")
        if "burst" in only:
            report["bursts"] = {}
            through = [p for p in found if p.key in ("agent", "front")]
            for plugin in [yogurts[0], *through, ptp]:
                b = timed(
                    f"{plugin.label}: {args.burst} ADDs, 20 at a time",
                    lambda p=plugin: bench_verbs.burst(p, s, cni_path, args.burst),
                )
                report["bursts"][plugin.key] = vars(b)
        # How the wire sections (wire, capture, impair) measured, as each one's report says.
        rounds = {"rounds": args.wire_rounds, "seconds": args.wire_seconds, "rr_seconds": args.rr_seconds}
        if "wire" in only:
            wires = timed(
                "wire",
                lambda: bench_wire.bench(
                    [yogurts[0], ptp], s, cni_path, args.wire_rounds, args.wire_seconds, args.rr_seconds
                ),
            )
            report["wire"] = {
                **rounds,
                "links": [
                    {**w.figures(), "label": "yogurt line" if i == 0 else "ptp (veth + routing)"}
                    for i, w in enumerate(wires)
                ],
            }
        if "capture" in only:
            said: list[str] = []
            wires = timed(
                "capture",
                lambda: bench_capture.bench(
                    yogurts[0], s, cni_path, args.wire_rounds, args.wire_seconds, args.rr_seconds, said
                ),
            )
            report["capture"] = {
                **rounds,
                "links": [w.figures() for w in wires],
                "said": said,
            }
        if "impair" in only:
            did: dict[str, Any] = {}
            release, wires = timed(
                "impair",
                lambda: bench_impair.bench(
                    yogurts[0], s, cni_path, args.wire_rounds, args.wire_seconds, args.rr_seconds, did
                ),
            )
            report["impair"] = {
                **rounds,
                "release": {"version": release.version, "abi": release.abi, "commit": release.commit},
                "links": [w.figures() for w in wires],
                "did": did,
            }
        if "across" in only:
            report["across"] = timed(
                "across nodes",
                lambda: bench_across.bench(
                    yogurts[0],
                    Path(s.tmp, "across"),
                    samples,
                    rounds=args.across_rounds,
                    seconds=args.across_seconds,
                    rr_seconds=args.across_rr_seconds,
                    add_rounds=args.across_add_rounds,
                ),
            )
    report["figures"] = {
        key: {fig: bench_report.summary_ms(v) for fig, v in figs.items()}
        for key, figs in samples.data.items()
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report["samples_s"] = samples.data
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if os.environ.get("YOGURT_VM_REPO"):  # matplotlib under emulation takes minutes: the host draws
        (args.out / "bench.md").write_text(bench_report.markdown(report), encoding="utf-8")
        log(f"done in {report['elapsed_s']} s: {args.out}/bench.json (`--render-only` draws the rest)")
        return 0
    render(args.out, report)
    log(f"done in {report['elapsed_s']} s: {args.out}/bench.md, bench.png, bench.json")
    return 0


def modes(
    found: list[Plugin],
    ptp: Plugin,
    args: argparse.Namespace,
    s: bench_verbs.Scratch,
    samples: Samples,
    report: dict[str, Any],
    cni_path: str,
) -> None:
    """Each veth attach mode through the compiled front end and the agent, against ptp in the
    same rounds: pod pairs back to back, then spaced out, then the burst."""
    front = next((p for p in found if p.key == "front"), None)
    if front is None:
        raise BenchError("modes: needs the agent and the compiled front end (`make front`)")
    moded = bench_agent.per_mode(front, netkit=health.probe_netkit().ok)
    report["labels"].update({p.key: p.label for p in moded})
    report["modes"] = {"keys": [p.key for p in moded], "pause_s": PAUSE, "bursts": {}}
    both = [*moded, ptp]
    timed(
        f"per attach mode, back to back x{args.rounds}",
        lambda: bench_verbs.verbs(both, args.rounds, s, samples, cni_path, " back to back"),
    )
    timed(
        f"per attach mode, {PAUSE} s apart x{args.rounds}",
        lambda: bench_verbs.verbs(both, args.rounds, s, samples, cni_path, " spaced", pause=PAUSE),
    )
    for plugin in both:
        b = timed(
            f"{plugin.label}: {args.burst} ADDs, 20 at a time",
            lambda p=plugin: bench_verbs.burst(p, s, cni_path, args.burst),
        )
        report["modes"]["bursts"][plugin.key] = vars(b)


def render(out: Path, report: dict[str, Any]) -> None:
    """bench.md and bench.png from a run's report (what bench.json holds)."""
    text = bench_report.markdown(report)
    (out / "bench.md").write_text(text, encoding="utf-8")
    try:
        bench_report.png(report, report["samples_s"], out / "bench.png")
    except ImportError:
        log("matplotlib missing (`make bench` installs it): no PNG")
    print(text)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
