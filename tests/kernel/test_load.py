"""Load: a hundred lines under parallel ADD/CHECK/DEL, the third end racing for a line, DEL racing ADD.

Every call goes through the real executable, as a runtime makes it, many at
once. After each burst the registry, the pairing map, the devices and the IP
leases must agree: every live end wired to its own partner and to nothing
else, nothing pointing at a deleted device, nothing left after the last DEL.
A failure names the random seed (YOGURT_LOAD_SEED replays a run's plan).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Node, addresses, ifindex

from cni_yogurt import lab
from cni_yogurt.cni.errors import Code
from cni_yogurt.datapath import Partner
from cni_yogurt.line.registry import End

LINES = 100
PARALLEL = 20  # calls in flight at once, as a busy runtime makes them
ROUNDS = 5
PING_SAMPLE = 4  # lines per round whose wire is tried with packets


@pytest.fixture
def seed() -> Iterator[int]:
    value = int(os.environ.get("YOGURT_LOAD_SEED") or random.randrange(1 << 32))
    yield value


@dataclass
class Calls:
    """The plugin exec'd for this test's containers, from many threads; remembers each end's ADD result."""

    node: Node
    conf: dict[str, Any]
    seed: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # container -> its last ADD result
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, verb: str, ns: lab.Netns, line: str) -> lab.PluginRun:
        """One call; CHECK gets the end's ADD result as prevResult, as a runtime passes it."""
        conf = {**self.conf, "prevResult": self.results[ns.name]} if verb == "CHECK" else self.conf
        run = self.node.run(verb, conf, ns, cni_args=f"YOGURT_LINE={line}")
        with self.lock:
            self.count += 1
            if verb == "ADD" and run.rc == 0:
                self.results[ns.name] = run.out
                self.node.ifindexes.add(ifindex(run.out["interfaces"][0]["name"]))
        return run

    def add(self, ns: lab.Netns, line: str) -> None:
        run = self.run("ADD", ns, line)
        assert run.rc == 0, f"ADD {ns.name} on {line} (seed {self.seed}): {run.out} {run.stderr[-500:]}"

    def check(self, ns: lab.Netns, line: str) -> None:
        run = self.run("CHECK", ns, line)
        assert run.rc == 0, f"CHECK {ns.name} on {line} (seed {self.seed}): {run.out} {run.stderr[-500:]}"

    def delete(self, ns: lab.Netns, line: str) -> None:
        run = self.run("DEL", ns, line)
        assert run.rc == 0, f"DEL {ns.name} on {line} (seed {self.seed}): {run.out} {run.stderr[-500:]}"
        with self.lock:
            self.results.pop(ns.name, None)


def interleave(chains: Sequence[Sequence[Callable[[], None]]], workers: int = PARALLEL) -> list[str]:
    """Run each chain's steps in order, `workers` steps at a time; a chain's next step queues behind
    every step already waiting, so the chains interleave. Returns the failures."""
    chains = [c for c in chains if c]
    errors: list[str] = []
    left = len(chains)
    finished = threading.Event()
    lock = threading.Lock()
    if not chains:
        return errors
    with ThreadPoolExecutor(workers) as pool:

        def step(chain: Sequence[Callable[[], None]], i: int) -> None:
            nonlocal left
            try:
                chain[i]()
            except BaseException as exc:  # noqa: BLE001  (collected; the chain stops here)
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                i = len(chain)
            if i + 1 < len(chain):
                pool.submit(step, chain, i + 1)
                return
            with lock:
                left -= 1
                if left == 0:
                    finished.set()

        for chain in chains:
            pool.submit(step, chain, 0)
        finished.wait()
    return errors


def parallel(calls: Sequence[Callable[[], Any]], workers: int) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda call: call(), calls))


# -- what the node must show --------------------------------------------------


def lease_owners(node: Node) -> list[str]:
    """The container of each IP lease host-local holds for this test (the lease file's first line)."""
    root = node.tmp / "ipam"
    owners = []
    for name in node.leases():
        path = next(root.rglob(name))
        owners.append(path.read_text().splitlines()[0].strip())
    return owners


def assert_consistent(node: Node, why: str) -> dict[str, list[End]]:
    """Registry, map, devices and leases agree: each live end is wired to its line's other live end
    and to nothing else, no entry sends to or from a deleted device. Returns the live ends by line."""
    ends = node.ends()
    assert all(e.ready and not e.leaving for e in ends.values()), (why, ends)
    assert node.devices() == {e.host_ifname for e in ends.values()}, why
    for e in ends.values():
        assert ifindex(e.host_ifname) == e.host_ifindex, (why, e)
    by_line: dict[str, list[End]] = defaultdict(list)
    for e in ends.values():
        by_line[e.line].append(e)
    want: dict[int, Partner] = {}
    for line, on_line in by_line.items():
        assert len(on_line) <= 2, (why, line, on_line)
        if len(on_line) == 2:
            a, b = on_line
            want[a.host_ifindex], want[b.host_ifindex] = Partner(*b.wire), Partner(*a.wire)
    assert node.map_entries() == want, why
    assert sorted(lease_owners(node)) == sorted(e.container_id for e in ends.values()), why
    return by_line


def assert_pairs_talk(
    node: Node, pairs: Sequence[tuple[lab.Netns, lab.Netns]], results: dict[str, Any]
) -> None:
    """Each first end reaches its partner, and not the first end of the next pair (another line)."""

    def probe(i: int) -> tuple[int, int]:
        (one, two), (other, _) = pairs[i], pairs[(i + 1) % len(pairs)]
        partner4, _ = addresses(results[two.name])
        stranger4, _ = addresses(results[other.name])
        to_stranger = lab.ping(one, stranger4, count=1) if other is not one else 0
        return lab.ping(one, partner4, count=2, wait=2), to_stranger

    replies = parallel([lambda i=i: probe(i) for i in range(len(pairs))], workers=len(pairs))
    for (one, two), (to_partner, to_stranger) in zip(pairs, replies, strict=True):
        assert to_partner > 0, f"{one.name} does not reach its partner {two.name}"
        assert to_stranger == 0, f"{one.name} reaches another line"


# -- the tests ------------------------------------------------------------------


def test_mixed_load_keeps_every_line_wired_to_its_partner(node: Node, seed: int) -> None:
    """100 lines (200 ends), 5 rounds of calls interleaved 20 at a time: the first ADDs every end,
    CHECKs a quarter and DELs and re-ADDs an eighth; the others CHECK a quarter and DEL and re-ADD
    a quarter (≈ 1200 calls). Each round ends with every line wired to its own partner."""
    rng = random.Random(seed)
    calls = Calls(node, node.conf(subnet4="10.42.0.0/16", subnet6=None), seed)
    lines = [(f"load-{node.tag}-{i}", node.netns(), node.netns()) for i in range(LINES)]
    ends = [(ns, line) for line, one, two in lines for ns in (one, two)]
    started = time.monotonic()
    for rnd in range(ROUNDS):
        chains: list[list[Callable[[], None]]] = []
        for ns, line in rng.sample(ends, len(ends)):
            chain: list[Callable[[], None]] = []
            if rnd == 0:
                chain.append(lambda ns=ns, line=line: calls.add(ns, line))
            if rng.random() < 0.25:
                chain.append(lambda ns=ns, line=line: calls.check(ns, line))
            if rng.random() < (0.125 if rnd == 0 else 0.25):
                chain.append(lambda ns=ns, line=line: calls.delete(ns, line))
                chain.append(lambda ns=ns, line=line: calls.add(ns, line))
                if rng.random() < 0.5:
                    chain.append(lambda ns=ns, line=line: calls.check(ns, line))
            chains.append(chain)
        errors = interleave(chains)
        assert not errors, f"round {rnd} (seed {seed}): {len(errors)} failed calls, first: {errors[:3]}"
        by_line = assert_consistent(node, f"after round {rnd} (seed {seed})")
        assert len(by_line) == LINES
        for line, one, two in lines:
            a, b = sorted(by_line[line], key=lambda e: e.container_id != one.name)
            assert (a.container_id, b.container_id) == (one.name, two.name), line
        sample = rng.sample(lines, PING_SAMPLE)
        assert_pairs_talk(node, [(one, two) for _, one, two in sample], calls.results)
    errors = interleave([[lambda ns=ns, line=line: calls.delete(ns, line)] for ns, line in ends])
    assert not errors, f"final DEL (seed {seed}): {errors[:3]}"
    print(f"\nmixed load: {calls.count} calls in {time.monotonic() - started:.0f} s")
    assert node.leftovers() == {}


def test_third_end_race_exactly_two_win(node: Node, seed: int) -> None:
    """Three ADDs on one line at once, on ten lines at once: two win and are wired to each other, the
    third fails with code 100 and leaves nothing; its DEL then disturbs nobody."""
    calls = Calls(node, node.conf(subnet4="10.42.0.0/16", subnet6=None), seed)
    for attempt in range(3):
        lines = [f"third-{node.tag}-{attempt}-{i}" for i in range(10)]
        jobs = [(line, node.netns()) for line in lines for _ in range(3)]
        random.Random(seed + attempt).shuffle(jobs)
        runs = parallel([lambda j=j: calls.run("ADD", j[1], j[0]) for j in jobs], workers=len(jobs))
        losers = []
        for line in lines:
            mine = [(ns, run) for (ln, ns), run in zip(jobs, runs, strict=True) if ln == line]
            won = [ns for ns, run in mine if run.rc == 0]
            lost = [(ns, run) for ns, run in mine if run.rc != 0]
            assert len(won) == 2 and len(lost) == 1, (line, [(ns.name, run.out) for ns, run in mine])
            ns, run = lost[0]
            assert run.out.get("code") == Code.LINE_FULL, run.out
            assert "Traceback" not in run.stderr
            assert ns.run("ip", "-o", "link", "show", "eth0").returncode != 0
            losers.append((ns, line))
        loser_names = {ns.name for ns, _ in losers}
        by_line = assert_consistent(node, f"third-end race {attempt}")  # no device, end or lease of a loser
        assert set(by_line) == set(lines)
        assert not loser_names & {e.container_id for es in by_line.values() for e in es}
        pairs = [tuple(ns for ln, ns in jobs if ln == line and ns.name not in loser_names) for line in lines]
        assert_pairs_talk(node, pairs[:PING_SAMPLE], calls.results)  # type: ignore[arg-type]
        for ns, line in losers:  # a loser's DEL (a runtime sends one) must not hang up the winners
            calls.delete(ns, line)
        assert assert_consistent(node, f"after the losers' DEL {attempt}") == by_line
        parallel([lambda j=j: calls.delete(j[1], j[0]) for j in jobs], workers=PARALLEL)
        assert node.leftovers() == {}


def test_del_racing_add_on_the_same_line(node: Node, seed: int) -> None:
    """End A up (alone, or with A2 on a full line); then DEL A, ADD B and ADD C at once, on ten lines
    at once, many times: B and C win only the places left, and registry, map and devices agree."""
    calls = Calls(node, node.conf(subnet4="10.42.0.0/16", subnet6=None), seed)
    rng = random.Random(seed)
    for attempt in range(4):
        lines = [f"delrace-{node.tag}-{attempt}-{i}" for i in range(10)]
        full = {line for i, line in enumerate(lines) if i % 2}
        a = {line: node.netns() for line in lines}
        a2 = {line: node.netns() for line in full}
        parallel([lambda line=line, ns=ns: calls.add(ns, line) for line, ns in [*a.items(), *a2.items()]], 10)
        b = {line: node.netns() for line in lines}
        c = {line: node.netns() for line in lines}
        jobs = [("DEL", a[line], line) for line in lines]
        jobs += [("ADD", ns, line) for line in lines for ns in (b[line], c[line])]
        # A runtime's CHECK of the end that stays, while its partner goes and another comes.
        jobs += [("CHECK", ns, line) for line, ns in a2.items() for _ in range(2)]
        rng.shuffle(jobs)
        runs = parallel([lambda j=j: calls.run(*j) for j in jobs], workers=len(jobs))
        for (verb, ns, line), run in zip(jobs, runs, strict=True):
            lost = verb == "ADD" and run.out.get("code") == Code.LINE_FULL
            assert run.rc == 0 or lost, f"{verb} {ns.name} on {line} (seed {seed}): {run}"
        won = {
            ns.name for (verb, ns, _), run in zip(jobs, runs, strict=True) if verb == "ADD" and run.rc == 0
        }
        by_line = assert_consistent(node, f"DEL racing ADD {attempt} (seed {seed})")
        for line in lines:
            winners = {ns.name for ns in (b[line], c[line])} & won
            live = {e.container_id for e in by_line.get(line, [])}
            assert a[line].name not in live
            if line in full:  # one place freed: at most one of B and C took it
                assert len(winners) <= 1, line
                assert live == {a2[line].name, *winners}, line
            else:  # whoever came first, A's DEL leaves room for at least one
                assert 1 <= len(winners) <= 2, line
                assert live == winners, line
        wired = [
            tuple(ns for ns in (*a2.values(), *b.values(), *c.values()) if ns.name in live)
            for live in ({e.container_id for e in es} for es in by_line.values())
            if len(live) == 2
        ]
        if wired:
            assert_pairs_talk(node, wired[:PING_SAMPLE], calls.results)  # type: ignore[arg-type]
        everyone = [(ns, line) for group in (a, a2, b, c) for line, ns in group.items()]
        parallel([lambda ns=ns, line=line: calls.delete(ns, line) for ns, line in everyone], PARALLEL)
        assert node.leftovers() == {}
