"""Figures into a Markdown table and a PNG (ADD latency yogurt vs ptp; the wire's throughput and latency)."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable
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


def modes(report: dict[str, Any]) -> list[str]:
    """The veth attach modes through the agent: ADD and DEL back to back and spaced out, the
    burst; each with its ratio to ptp's figure of the same rounds."""
    section = report.get("modes")
    if not section:
        return []
    figs, labels = report["figures"], report["labels"]
    bursts = section["bursts"]
    adds = next(iter(bursts.values()))["adds"] if bursts else 0
    ptp, ptp_burst = figs.get("ptp", {}), bursts.get("ptp", {})
    out = [
        "",
        f"Per veth attach mode, through the compiled front end and the agent (p50 ms, ÷ ptp in the "
        f"same rounds; spaced: {section['pause_s']} s between pod pairs; burst: {adds} ADDs, 20 at a "
        "time, wall time):",
        "",
        "| | ADD back to back | ADD spaced | DEL back to back | DEL spaced | burst ADDs | burst DELs |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in [*section["keys"], "ptp"]:
        cells = []
        for row in ("ADD back to back", "ADD spaced", "DEL back to back", "DEL spaced"):
            mine = figs.get(key, {}).get(row, {}).get("p50")
            theirs = ptp.get(row, {}).get("p50")
            cells.append(f"{_ms(mine)} ({ratio(mine, theirs)})" if mine and key != "ptp" else _ms(mine or 0))
        for field in ("wall_s", "dels_wall_s"):
            mine, theirs = bursts.get(key, {}).get(field), ptp_burst.get(field)
            wall = f"{mine or 0:.2f} s"
            cells.append(f"{wall} ({ratio(mine, theirs)})" if mine and key != "ptp" else wall)
        out.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
    broken = [k for k, b in bursts.items() if b["leftovers"] or (k != "ptp" and b["wired"] != b["adds"] // 2)]
    if broken:
        out.append(f"\nBursts with a line not wired or something left behind: {', '.join(broken)}.")
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    figs: dict[str, dict[str, dict[str, float]]] = report["figures"]
    labels: dict[str, str] = report["labels"]
    main_rows = ("VERSION", "ADD", "CHECK", "DEL")
    keys = [
        k
        for k in ("venv", "bin", "agent", "agentbin", "front", "ptp")
        if k in figs and any(row in figs[k] for row in main_rows)
    ]
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
    out += modes(report)
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
    capture = report.get("capture")
    if capture:
        off = capture["links"][0]
        out += [
            "",
            f"A line with `yogurt capture` running ({capture['rounds']} rounds, in turns; iperf3 one TCP "
            f"stream {capture['seconds']} s, sockperf {capture['rr_seconds']} s; medians, [min–max], "
            "÷ no capture):",
            "",
            "| | throughput Gbit/s | CPU s per GB | RR latency µs (avg) | RR p99 µs |",
            "|---|---|---|---|---|",
        ]
        for w in capture["links"]:
            rel = [
                f" ({ratio(_med(w[k]), _med(off[k]))})" if w is not off else ""
                for k in ("gbps", "cpu_s_per_gb", "rr_us", "rr_p99_us")
            ]
            out.append(
                f"| {w['label']} | {_spread(w['gbps'])}{rel[0]} | {_spread(w['cpu_s_per_gb'], 2)}{rel[1]} | "
                f"{_spread(w['rr_us'])}{rel[2]} | {_spread(w['rr_p99_us'])}{rel[3]} |"
            )
        out += ["", "Each capture said at its end: " + "; ".join(capture.get("said", [])) + "."]
    if "impair" in report:
        out += _impair(report["impair"])
    if "across" in report:
        out += _across(report["across"], figs.get("across", {}))
    for note in report.get("notes", []):
        out.append(f"\nNote: {note}")
    return "\n".join(out) + "\n"


# Issue #15's targets for a line across nodes, against the bare WireGuard path between the nodes.
ACROSS_GBPS_MIN = 0.9
ACROSS_RR_MAX = 1.1
ACROSS_ROWS = ("ADD", "DEL")
ACROSS_KINDS = ("cross-node end", "local end")


def _impair(impair: dict[str, Any]) -> list[str]:
    """The release before, this release's line with impairments off, with an inert one, with
    loss; each ÷ the release before, and the impairment path's own cost (inert ÷ off)."""
    links = impair["links"]
    base, release = links[0], impair["release"]
    keys = ("gbps", "cpu_s_per_gb", "rr_us", "rr_p99_us")
    out = [
        "",
        f"Impairments: a line of the release before ({release['version']}, ABI {release['abi']}, "
        f"{release['commit']}: its own wheel, plugin and pins) and lines of this release, each its own "
        "pair of containers "
        f"({impair['rounds']} rounds, in turns; iperf3 one TCP stream {impair['seconds']} s, sockperf "
        f"{impair['rr_seconds']} s; impairments on what the iperf3 client's end sends; medians, "
        f"[min–max], ÷ {base['label']}):",
        "",
        "| | throughput Gbit/s | CPU s per GB | RR latency µs (avg) | RR p99 µs |",
        "|---|---|---|---|---|",
    ]
    for w in links:
        rels = [
            f" ({ratio(_med_or(w[k]), _med_or(base[k]))})" if w is not base and w[k] else "" for k in keys
        ]
        out.append(
            f"| {w['label']} | {_spread(w['gbps'])}{rels[0]} | {_spread(w['cpu_s_per_gb'], 2)}{rels[1]} | "
            f"{_spread(w['rr_us'])}{rels[2]} | {_spread(w['rr_p99_us'])}{rels[3]} |"
        )
    if len(links) >= 3:  # the impairment path itself: inert ÷ off, same release, same rounds
        off, inert = links[1], links[2]
        out.append(
            "| the impairment path: inert ÷ off | "
            + " | ".join(ratio(_med_or(inert[k]), _med_or(off[k])) for k in keys)
            + " |"
        )
    did = impair.get("did", {})
    if did:
        said = []
        for label, d in did.items():
            asked = " ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d["asked"].items()
            )
            counted = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in (d.get("did") or {}).items())
            said.append(f"{label} ({asked}): {counted or 'nothing counted'}")
        out += ["", "What the impairments did by the end (`yogurt impair show`): " + "; ".join(said) + "."]
    if any(not w["rr_us"] for w in links):
        out += [
            "",
            "No request/response figures where requests are lost: sockperf's ping-pong client waits "
            "for each reply with no timeout, so one lost request ends its observations.",
        ]
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def _across(across: dict[str, Any], figs: dict[str, dict[str, float]]) -> list[str]:
    line, bare = across["links"]
    load = " → ".join(f"{x:.2f}" for x in across.get("load", []))
    out = [
        "",
        f"Across nodes (two lab nodes: netns on one machine, an underlay bridge, {across['wireguard']} "
        "between them, VXLAN inside it; etcd ×3 on the underlay, a `yogurt agent --cluster` per node, "
        f"ready {across['agents_ready_s']:.1f} s after start"
        + (f"; 1-min load average {load}" if load else "")
        + f"). Wire: {across['rounds']} interleaved rounds (line, bare, line, ...); iperf3 one TCP stream "
        f"{across['seconds']} s, sockperf UDP ping-pong 64 B {across['rr_seconds']} s; medians, [min–max]:",
        "",
        "| | throughput Gbit/s | CPU s per GB | RR latency µs (avg) | RR p99 µs |",
        "|---|---|---|---|---|",
    ]
    for w in across["links"]:
        out.append(
            f"| {w['label']} | {_spread(w['gbps'], 2)} | {_spread(w['cpu_s_per_gb'], 2)} | "
            f"{_spread(w['rr_us'])} | {_spread(w['rr_p99_us'])} |"
        )
    gbps = _med(line["gbps"]) / _med(bare["gbps"])
    rr = _med(line["rr_us"]) / _med(bare["rr_us"])
    out += [
        f"| line ÷ bare | {gbps:.2f}× | {ratio(_med(line['cpu_s_per_gb']), _med(bare['cpu_s_per_gb']))} | "
        f"{rr:.2f}× | {ratio(_med(line['rr_p99_us']), _med(bare['rr_p99_us']))} |",
        "",
        f"Targets: throughput ≥ {ACROSS_GBPS_MIN}× bare: **{_met(gbps >= ACROSS_GBPS_MIN)}** "
        f"({gbps:.2f}×); RR latency ≤ {ACROSS_RR_MAX}× bare: **{_met(rr <= ACROSS_RR_MAX)}** ({rr:.2f}×).",
    ]
    if figs:
        out += [
            "",
            f"Through the agent on node 0, {across['add_rounds']} interleaved rounds (an exec of the entry "
            "point each; the partner already up: on node 1, or on node 0; addresses by CNI_ARGS, no IPAM), "
            "p50 / p95 / p99 in ms:",
            "",
            "| | " + " | ".join(ACROSS_KINDS) + " | cross ÷ local (p50) |",
            "|---|---|---|---|",
        ]
        for row in ACROSS_ROWS:
            cross, local = (figs.get(f"{row}, {kind}") for kind in ACROSS_KINDS)
            out.append(
                f"| {row} | {fmt(cross)} | {fmt(local)} | "
                f"{ratio(cross and cross['p50'], local and local['p50'])} |"
            )
    if "leftovers" in across:
        left = across["leftovers"]
        out += ["", f"Left after the lab's teardown: {', '.join(left) if left else 'nothing'}."]
    return out


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _med_or(values: list[float]) -> float | None:
    """The median, None for none (a figure not measured on that link)."""
    return statistics.median(values) if values else None


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
    series = []
    for key, fig_name, label in (
        ("venv", "ADD", labels.get("venv")),
        ("bin", "ADD", labels.get("bin")),
        ("agent", "ADD", labels.get("agent")),
        ("agentbin", "ADD", labels.get("agentbin")),
        ("front", "ADD", labels.get("front")),
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
    # Each panel: a function drawing into one Axes. Three to a row.
    panels: list[Callable[[Any], None]] = []
    if series:  # a run of the wire (or across nodes) alone has no ADD panel
        panels.append(lambda ax: _violins(ax, series, "ADD latency, ms (exec to exit)", "ADD latency"))
    if wire := report.get("wire"):
        panels += _wire_panels(wire["links"], "")
    if impair := report.get("impair"):
        panels += _wire_panels(impair["links"], "impairments: ")
    if across := report.get("across"):
        panels += _wire_panels(across["links"], "across nodes: ")
        kinds = [(k, samples.get("across", {}).get(f"ADD, {k}")) for k in ACROSS_KINDS]
        if all(v for _, v in kinds):
            panels.append(
                lambda ax: _violins(
                    ax,
                    [(f"ADD, {k}\n(through the agent)", [x * 1000 for x in v or []]) for k, v in kinds],
                    "ADD latency, ms (exec to exit)",
                    "across nodes: ADD, cross-node vs local end",
                )
            )
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, -(-len(panels) // 3))
    width = 5.2 * ncols + (0.6 * max(0, len(series) - 4) if series else 0)
    fig, grid = plt.subplots(nrows, ncols, figsize=(max(width, 8.0), 4.6 * nrows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax, draw in zip(axes, panels, strict=False):
        draw(ax)
    for ax in axes[len(panels) :]:
        ax.axis("off")
    if series or "wire" in report:
        what = "cni-yogurt vs ptp"
    else:
        what = "cni-yogurt impairments" if "impair" in report else "cni-yogurt across nodes"
    fig.suptitle(
        f"{what} — {m['where']}: Linux {m['kernel']}, backend {m['backend']}, {m['cpu']} ×{m['cores']}",
        fontsize=9,
    )
    fig.text(
        0.01,
        0.01 / nrows,
        "medians; whiskers: min–max over rounds (wire), box: quartiles (ADD)",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03 / nrows, 1, 1 - 0.05 / nrows))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _violins(ax: Any, series: list[tuple[str, list[float]]], ylabel: str, title: str) -> None:
    ax.violinplot([v for _, v in series], showmedians=True, widths=0.8)
    ax.boxplot([v for _, v in series], widths=0.15, showfliers=False)
    names = [textwrap.fill(name, 16) for name, _ in series]  # five columns with the agent's
    ax.set_xticks(range(1, len(series) + 1), names, fontsize=7)
    for i, (_, v) in enumerate(series, 1):
        ax.annotate(
            f"p50 {pct(v, 50):.0f}", (i, pct(v, 50)), xytext=(8, 0), textcoords="offset points", fontsize=7
        )
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _wire_panels(links: list[dict[str, Any]], prefix: str) -> list[Callable[[Any], None]]:
    """Two bar panels, throughput and request/response latency, one bar per link."""

    def bars(ax: Any, key: str, title: str, digits: int) -> None:
        palette = ["tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple"]
        colors = [c for c, w in zip(palette, links, strict=False) if w[key]]  # a link's colour in each panel
        shown = [w for w in links if w[key]]  # not a figure measured on every link (impairments)
        names = [textwrap.fill(w["label"], 24 if len(links) <= 3 else 16) for w in shown]
        meds = [_med(w[key]) for w in shown]
        lo = [m_ - min(w[key]) for m_, w in zip(meds, shown, strict=True)]
        hi = [max(w[key]) - m_ for m_, w in zip(meds, shown, strict=True)]
        ax.bar(names, meds, color=colors, yerr=[lo, hi], capsize=6)
        for i, v in enumerate(meds):
            ax.annotate(
                f"{v:.{digits}f}", (i, v), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8
            )
        ax.set_title(prefix + title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)

    gbps_digits = 2 if max(_med(w["gbps"]) for w in links) < 1 else 1
    return [
        lambda ax: bars(ax, "gbps", "TCP throughput, Gbit/s (iperf3, 1 stream)", gbps_digits),
        lambda ax: bars(ax, "rr_us", "request/response latency, µs (sockperf, RTT/2)", 1),
    ]
