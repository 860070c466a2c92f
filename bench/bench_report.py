"""Figures into a Markdown table and a PNG (ADD latency yogurt vs ptp; the wire's throughput and latency)."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": round(pct(ms, 50), 1),
        "p95": round(pct(ms, 95), 1),
        "p99": round(pct(ms, 99), 1),
        "mean": round(statistics.mean(ms), 1),
    }


def fmt(fig: dict[str, float] | None) -> str:
    if not fig:
        return "—"
    if fig["n"] == 1:
        return _ms(fig["p50"])
    return f"{_ms(fig['p50'])} / {_ms(fig['p95'])} / {_ms(fig['p99'])}"


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    figs: dict[str, dict[str, dict[str, float]]] = report["figures"]
    labels: dict[str, str] = report["labels"]
    keys = [k for k in ("venv", "bin", "agent", "agentbin", "ptp") if k in figs]
    rounds = f" {report['rounds']} interleaved rounds (two containers each), p50 / p95 / p99 in ms."
    out = [
        f"Machine: {m['cpu']}, {m['cores']} cores; {m['os']}; Linux {m['kernel']}; "
        f"yogurt backend **{m['backend']}**; {m['where']}." + (rounds if keys else ""),
    ]
    if keys:  # not for a run of the wire alone
        sizes = report.get("sizes", {})
        out += [
            "",
            "| | " + " | ".join(labels[k] for k in keys) + " | ÷ ptp (p50), in column order |",
            "|---|" + "---|" * len(keys) + "---|",
            "| size | "
            + " | ".join(f"{sizes[k] / 2**20:.1f} MiB" if sizes.get(k) else "Python + venv" for k in keys)
            + " | |",
        ]
    rows = ["VERSION", "ADD", "CHECK", "DEL", "DEL (nothing)", "first ADD", *report.get("scale_rows", [])]
    for row in rows:
        if not any(row in figs[k] for k in keys):
            continue
        cells = [fmt(figs[k].get(row)) for k in keys]
        ptp = figs.get("ptp", {}).get(row, {}).get("p50")
        ratios = [ratio(figs[k].get(row, {}).get("p50"), ptp) for k in keys if k != "ptp" and row in figs[k]]
        out.append(f"| {row} | " + " | ".join(cells) + f" | {' / '.join(ratios) if ptp else ''} |")
    if "agent_start_s" in report:
        out += [
            "",
            f"The node agent started serving {report['agent_start_s']:.2f} s after its exec "
            "(programs compiled and loaded).",
        ]
    floor = figs.get("python", {}).get("VERSION")
    if floor:
        out += ["", f"`python3 -c pass` (the floor of any Python program): p50 {floor['p50']} ms."]
    for name, burst in report.get("bursts", {}).items():
        out.append(
            f"- {labels[name]}: {burst['adds']} ADDs, 20 at a time: last one done after "
            f"**{burst['wall_s']:.2f} s**; {burst['adds']} DELs {burst['dels_wall_s']:.2f} s; "
            + (
                f"{burst['wired']}/{burst['adds'] // 2} lines wired to the right partner; "
                if name != "ptp"
                else ""
            )
            + f"{burst['reached']}/{burst['adds'] // 2} first ends ping their partner; "
            + f"leftovers after DEL: {len(burst['leftovers']) or 'none'}"
        )
    if "gc" in report:
        gc = report["gc"]
        out.append(f"- GC with {gc['stale']} stale ends: {gc['seconds']:.2f} s (one exec).")
    if "fill_s" in report:
        out.append(
            f"- {report['scale_lines']} lines ({2 * report['scale_lines']} ends) put up in "
            f"{report['fill_s']:.1f} s (in-process, 8 threads: the node's background, not a figure)."
        )
    wire = report.get("wire")
    if wire:
        out += [
            "",
            f"Wire ({wire['rounds']} interleaved rounds; iperf3 one TCP stream {wire['seconds']} s, "
            f"sockperf UDP ping-pong 64 B {wire['rr_seconds']} s, one-way = RTT/2; medians, [min–max]):",
            "",
            "| | throughput Gbit/s | CPU s per GB | RR latency µs (avg) | RR p99 µs |",
            "|---|---|---|---|---|",
        ]
        for w in wire["links"]:
            out.append(
                f"| {w['label']} | {_spread(w['gbps'])} | {_spread(w['cpu_s_per_gb'], 2)} | "
                f"{_spread(w['rr_us'])} | {_spread(w['rr_p99_us'])} |"
            )
        if len(wire["links"]) == 2:
            a, b = wire["links"]
            out.append(
                f"| yogurt ÷ ptp | {ratio(_med(a['gbps']), _med(b['gbps']))} | "
                f"{ratio(_med(a['cpu_s_per_gb']), _med(b['cpu_s_per_gb']))} | "
                f"{ratio(_med(a['rr_us']), _med(b['rr_us']))} | "
                f"{ratio(_med(a['rr_p99_us']), _med(b['rr_p99_us']))} |"
            )
    for note in report.get("notes", []):
        out.append(f"\nNote: {note}")
    return "\n".join(out) + "\n"


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    return f"{_med(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def png(report: dict[str, Any], samples: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["machine"]
    labels: dict[str, str] = report["labels"]
    wire = report.get("wire")
    series = []
    for key, fig_name, label in (
        ("venv", "ADD", labels.get("venv")),
        ("bin", "ADD", labels.get("bin")),
        ("agent", "ADD", labels.get("agent")),
        ("agentbin", "ADD", labels.get("agentbin")),
        (
            "venv",
            report.get("scale_add_row", ""),
            f"{labels.get('venv')}\n{report.get('scale_lines')} lines up",
        ),
        ("ptp", "ADD", labels.get("ptp")),
    ):
        values = samples.get(key, {}).get(fig_name)
        if values:
            series.append((label, [v * 1000 for v in values]))
    ncols = (1 if series else 0) + (2 if wire else 0)  # a run of the wire alone has no ADD panel
    width = 5.2 * max(ncols, 1) + (0.6 * max(0, len(series) - 4) if series else 0)
    fig, grid = plt.subplots(1, max(ncols, 1), figsize=(max(width, 8.0), 4.6), squeeze=False)
    axes = list(grid[0])
    ax = axes[0]
    if series:
        axes.pop(0)
        ax.violinplot([v for _, v in series], showmedians=True, widths=0.8)
        ax.boxplot([v for _, v in series], widths=0.15, showfliers=False)
        names = [textwrap.fill(name, 16) for name, _ in series]  # five columns with the agent's
        ax.set_xticks(range(1, len(series) + 1), names, fontsize=7)
        for i, (_, v) in enumerate(series, 1):
            ax.annotate(
                f"p50 {pct(v, 50):.0f}",
                (i, pct(v, 50)),
                xytext=(8, 0),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_ylabel("ADD latency, ms (exec to exit)")
        ax.set_ylim(bottom=0)
        ax.set_title("ADD latency", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if wire:
        names = [w["label"] for w in wire["links"]]
        colors = ["tab:orange", "tab:blue"][: len(names)]
        for ax, key, title in (
            (axes[0], "gbps", "TCP throughput, Gbit/s (iperf3, 1 stream)"),
            (axes[1], "rr_us", "request/response latency, µs (sockperf, RTT/2)"),
        ):
            meds = [_med(w[key]) for w in wire["links"]]
            lo = [m_ - min(w[key]) for m_, w in zip(meds, wire["links"], strict=True)]
            hi = [max(w[key]) - m_ for m_, w in zip(meds, wire["links"], strict=True)]
            ax.bar(names, meds, color=colors, yerr=[lo, hi], capsize=6)
            for i, v in enumerate(meds):
                ax.annotate(
                    f"{v:.1f}", (i, v), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8
                )
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"cni-yogurt vs ptp — {m['where']}: Linux {m['kernel']}, backend {m['backend']}, "
        f"{m['cpu']} ×{m['cores']}",
        fontsize=9,
    )
    fig.text(0.01, 0.01, "medians; whiskers: min–max over rounds (wire), box: quartiles (ADD)", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
