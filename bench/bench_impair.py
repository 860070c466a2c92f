"""What impairments cost the wire, off and on, against the release before them, in one run.

Four lines, each on its own pair of netns, measured in turns in the same rounds (iperf3 one TCP
stream from the first container to the second, then sockperf ping-pong between them):

  the release before: the newest kept wheel (tests/kernel/releases/) of an ABI below this one's,
  installed into a venv in the scratch dir; its own plugin makes its line, on a bpffsDir and
  stateDir of its own, so the line runs that release's programs, which know no impairments;
  this release's line with nothing set: what every line pays for the feature (the sender's one
  lookup in the impair map, which misses);
  this release's line with the first container's end set to --rate 100000000 (100 Gbit/s): the
  sender finds an entry and runs the token bucket for every packet, which never drops one: the
  cost of the impairment path itself;
  this release's line with that end set to --loss 1: what a lab asks for, and the TCP throughput
  it gets.  No sockperf on it: its ping-pong client blocks for a reply with no timeout, so the
  first request lost ends its observations for the rest of the run (seen here: 72 requests sent
  in a 1 s run, 71 replies, no observation); its request/response columns stay empty.

An end's impairments act on what it sends: here iperf3's data and sockperf's requests.  What the
impairments did by the end (`yogurt impair show`) is kept with the figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_verbs import BPFFS, STATE, BenchError, Plugin, Scratch, log, run
from bench_wire import Wire, _connect, _iperf, _serving, _sockperf

from cni_yogurt import __version__, lab
from cni_yogurt.datapath import ABI
from cni_yogurt.lab import releases
from cni_yogurt.lab.releases import Release
from cni_yogurt.line.registry import Registry

RELEASES_DIR = Path(__file__).resolve().parents[1] / "tests" / "kernel" / "releases"
# The release before's own dirs, beside the bench's (bench_verbs): its pins are its own.
BEFORE_BPFFS = BPFFS + "-before"
BEFORE_STATE = STATE + "-before"
SUBNET = "10.212.{}.0/24"  # one /24 per line: the release before's, then this release's
# This release's lines: key, label, what `yogurt impair set` gets for the first container's end,
# and whether sockperf's ping-pong can run over it (not where requests are lost: see above).
SETTINGS: tuple[tuple[str, str, list[str], bool], ...] = (
    ("off", "impairments off", [], True),
    ("inert", "impairment on, inert", ["--rate", "100000000"], True),
    ("loss", "loss 1 %", ["--loss", "1"], False),
)


def before(folder: Path = RELEASES_DIR) -> Release:
    """The newest kept release of an ABI below this one's."""
    older = [r for r in releases.kept(folder) if r.abi < ABI]
    if not older:
        raise BenchError(f"impair: no kept release of an ABI below {ABI} in {folder}")
    return max(older, key=lambda r: (r.abi, tuple(int(x) for x in r.version.split(".") if x.isdigit())))


def _yogurt(*argv: str) -> dict[str, Any]:
    """This release's `yogurt ... --json` on the bench's dirs."""
    proc = subprocess.run(
        [*lab.self_command(), *argv, "--state-dir", STATE, "--bpffs-dir", BPFFS, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"yogurt {' '.join(argv)} failed (rc {proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _sender(wire: Wire) -> str:
    """The key of the end in the first container (the one that sends iperf3's data)."""
    end = next((e for e in Registry(STATE).snapshot().values() if e.netns == wire.client.path), None)
    if end is None:
        raise BenchError(f"{wire.label}: no end of this release in {wire.client.name}")
    return end.key


@contextlib.contextmanager
def _dirs_of(old: Plugin, s: Scratch, cni_path: str) -> Iterator[None]:
    """The release before's bpffsDir and stateDir: emptied first (an interrupted run's), and at
    the end its ends DELeted by it, then its pins and state removed.  A DEL that fails stays
    tracked: Scratch.close tries again and removes the devices by name."""
    for where in (BEFORE_BPFFS, BEFORE_STATE):
        shutil.rmtree(where, ignore_errors=True)
    try:
        yield
    finally:
        for (_, cid, ifname), (plugin, conf, netns) in list(s.attachments.items()):
            if plugin is not old:
                continue
            try:
                run(plugin, "DEL", conf, cid, netns, ifname, cni_path=cni_path, check=True)
                s.untrack(conf, cid, ifname)
            except BenchError as exc:
                log(f"impair cleanup: {exc}")
        for where in (BEFORE_BPFFS, BEFORE_STATE):
            shutil.rmtree(where, ignore_errors=True)


def bench(
    plugin: Plugin,
    s: Scratch,
    cni_path: str,
    rounds: int,
    seconds: int,
    rr_seconds: int,
    did: dict[str, Any],
) -> tuple[Release, list[Wire]]:
    """The release used and [before, off, inert, loss 1 %], measured in turns; `plugin`: this
    release's entry point.  `did` gets what each impairment did by the end (`yogurt impair show`)."""
    release = before()
    log(f"impair: the release before is {release.version} (ABI {release.abi}, {release.commit})")
    exe = releases.install(release, Path(s.tmp, f"release-{release.commit}"))
    old = Plugin(
        "before",
        f"{release.version} (before)",
        exe,
        "yogurt",
        SUBNET.format(0),
        conf_keys={"bpffsDir": BEFORE_BPFFS, "stateDir": BEFORE_STATE, "logFile": f"{s.tmp}/before.log"},
    )
    ours = [
        dataclasses.replace(plugin, key=key, label=f"{__version__}, {what}", subnet=SUBNET.format(i))
        for i, (key, what, _, _) in enumerate(SETTINGS, 1)
    ]
    with _dirs_of(old, s, cni_path):
        wires = [_connect(p, s, cni_path) for p in (old, *ours)]
        # Its line runs its own programs: its pins (v<its ABI>) and none of this release's there.
        mine = os.path.join(BEFORE_BPFFS, f"v{release.abi}")
        if not os.path.isdir(mine) or os.path.exists(os.path.join(BEFORE_BPFFS, f"v{ABI}")):
            raise BenchError(f"{old.label}: its line is not on its own pins ({os.listdir(BEFORE_BPFFS)})")
        senders = [_sender(w) for w in wires[1:]]
        for key, (_, _, flags, _) in zip(senders, SETTINGS, strict=True):
            if flags:
                _yogurt("impair", "set", "--end", key, *flags)
        shown = _yogurt("impair", "show")["ends"]  # the ends with impairments, and what they asked
        asked = {e["end"]: e["asked"] for e in shown if e["in_force"]}
        wanted = {k: bool(flags) for k, (_, _, flags, _) in zip(senders, SETTINGS, strict=True)}
        if {k for k, on in wanted.items() if on} != set(asked) & set(wanted):
            raise BenchError(f"impair: the ends' impairments are not as set: {shown}")
        _measure(wires, [True, *(rr for *_, rr in SETTINGS)], rounds, seconds, rr_seconds)
        for wire, key, (_, _, flags, _) in zip(wires[1:], senders, SETTINGS, strict=True):
            if flags:
                end = _yogurt("impair", "show", "--end", key)["ends"][0]
                did[wire.label] = {"asked": end["asked"], "did": end["did"]}
                log(f"impair: {wire.label}: {did[wire.label]}")
    return release, wires


def _measure(wires: list[Wire], rr: list[bool], rounds: int, seconds: int, rr_seconds: int) -> None:
    """bench_wire.measure's turns (wire 1, 2, 3, 4, 1, ...: iperf3, then sockperf), with sockperf
    only over the wires `rr` says it can run on."""
    with _serving(wires):
        for wire, ping in zip(wires, rr, strict=True):  # warm-up, as measure's
            if ping:
                _sockperf(wire, 1)
                wire.rr_us.clear()
                wire.rr_p99_us.clear()
        for i in range(rounds):
            log(f"impair round {i + 1}/{rounds}")
            for wire, ping in zip(wires, rr, strict=True):
                _iperf(wire, seconds)
                if ping:
                    _sockperf(wire, rr_seconds)
