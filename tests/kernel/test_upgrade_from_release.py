"""Upgrade in place from real earlier releases, not this code under another ABI.

Each release is built from its own commit into a wheel kept under tests/kernel/releases/
(`abi<N>-<commit>/`: build.sh there rebuilds one from git history), installed into a venv of
its own.  It makes a line; two containers stream sequenced UDP both ways across it, one
datagram per millisecond; then this release's `yogurt upgrade` moves the line onto its
programs.  YOGURT_RELEASE_MOVES (default 1: about 5 s per release and attach mode natively)
makes that many lines in a row, one after the other, each made by the old release and moved
by this one; the counts in docs/releases.md come from YOGURT_RELEASE_MOVES=20 and more.

ABI >= 4 (the secret in a map, handed on): not one datagram may be lost or reordered, and the
new programs must mark with the old ones' secret.

ABI 3 compiled its secret into its programs, so the new programs' mark differs from the old
ones': a datagram sent between the switch of one end's sender and the switch of the guard it
sends to is dropped.  The move switches those two back to back, so each direction loses at most
the datagrams of one such window.  Measured on veth natively (Linux 6.18, 2 cores shared with
other work, load 5 to 34), 17 moves each: 0-1 datagrams per direction with tcx, 0-8 with tc
(docs/releases.md, "Upgrade in place").  The bound below is that plus margin for a busier machine: a
window grown to tens of milliseconds (the two switches no longer back to back, say) fails it,
and a line the move broke fails the wait for datagrams after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, Node, private_dirs
from test_agent import Agent
from test_upgrade import link_programs, sent_by, yogurt

from cni_yogurt import __version__, lab
from cni_yogurt import release as this_release
from cni_yogurt.datapath import ABI, Pins, pinned_link_names, program_id, read_mark
from cni_yogurt.lab import releases
from cni_yogurt.lab.releases import Release
from cni_yogurt.lab.stream import Stream
from cni_yogurt.line.registry import Registry

RELEASES_DIR = Path(__file__).parent / "releases"
# Datagrams one direction of an ABI 3 line may lose while its sender and the guard it sends to
# switch (see above); lines of ABI 4 and later may lose none.
MAX_LOST_ABI_3 = 30
MOVES = int(os.environ.get("YOGURT_RELEASE_MOVES", "1"))


def kept_releases() -> list[Release]:
    return releases.kept(RELEASES_DIR)


def max_lost(release: Release) -> int:
    return MAX_LOST_ABI_3 if release.abi < 4 else 0


# A kept release of this release's ABI (the last one cut) shares its pins: nothing moves, so
# nothing to test until the ABI changes; then it is the real release the next one moves from.
RELEASES = [r for r in kept_releases() if r.abi < ABI]
# The kept releases know no "vethAttach": "split" (0.5.2): none of their lines is split.
BACKENDS_HERE = [b for b in BACKENDS if b != "veth-split"]
# The releases a line can be rolled back to in place: they can take this release's secret.
ROLLBACK_TO = [r for r in RELEASES if r.abi >= 4]


def _release_id(r: Release) -> str:
    return r.name


@pytest.fixture(scope="module", params=RELEASES, ids=_release_id)
def release(request: pytest.FixtureRequest) -> Release:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def old_release(release: Release, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The old release's `yogurt`, installed from its wheel into a venv of its own (lab/releases.py)."""
    exe = releases.install(release, tmp_path_factory.mktemp(f"release-{release.commit}") / "venv")
    version = subprocess.run([*exe, "version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0, version.stdout + version.stderr
    return exe


@pytest.fixture
def private(node: Node, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with private_dirs(node, tmp_path, "release") as conf:
        yield conf


def test_a_line_of_a_real_release_moves_in_place(
    node: Node, private: dict[str, Any], release: Release, old_release: list[str]
) -> None:
    """ABI >= 4: nothing lost or reordered either way; ABI 3: one bounded window each way."""
    assert release.abi < ABI
    new = node.pins
    assert new.root.endswith(f"v{ABI}")
    report = []
    for move in range(MOVES):
        losses, took, attach = _one_move(node, private, release, old_release, new, first=move == 0)
        report.append(losses)
        # What docs/releases.md's figures come from: run with -s to see them.
        print(
            f"\nmove {move + 1}/{MOVES} from ABI {release.abi} ({release.commit}) on {attach}"
            f" took {took:.2f} s; lost both ways: {losses}"
        )
    counts = [[len(lost) for lost in losses] for losses in report]
    print(f"\n{MOVES} moves from {release.commit}: datagrams lost per move and direction: {counts}")


def _one_move(
    node: Node, conf: dict[str, Any], release: Release, old_release: list[str], new: Pins, first: bool
) -> tuple[list[list[int]], float, str]:
    """A line made by the old release, moved by this one under UDP both ways, then hung up;
    what each direction lost, how long the move took and the attach mode."""
    old = Pins(os.path.join(conf["bpffsDir"], f"v{release.abi}"))
    node.pins = old  # what the old release's ADDs leave, for the leftover checks until the move
    one, two = node.netns(), node.netns()
    r1, r2 = node.add(conf, one, exe=old_release), node.add(conf, two, exe=old_release)
    assert os.path.isdir(old.root)
    # The first move loads this release's programs, which take the old ones' secret (ABI >= 4).
    # The next ones may find them loaded already: an ABI 3 release leaves a later one's pins.
    assert not first or not os.path.exists(new.root)
    a4, b4 = r1["ips"][0]["address"].split("/")[0], r2["ips"][0]["address"].split("/")[0]
    host_one = r1["interfaces"][0]["name"]
    assert lab.ping(one, b4) == 2 and lab.ping(two, a4) == 2
    streams = [Stream(one, two, b4).start(), Stream(two, one, a4).start()]
    try:
        for stream in streams:
            stream.wait_for(200)
        counted_before = sent_by(conf, host_one, exe=old_release)  # its counters, on its pins
        secret = read_mark(old)  # None before ABI 4: compiled into the programs
        started = time.monotonic()
        run = yogurt(conf, "upgrade")
        took = time.monotonic() - started
        assert run.returncode == 0, run.stdout + run.stderr
        assert "2 live ends moved" in run.stdout, run.stdout
        node.pins = new
        if release.abi >= 4:  # handed on: old and new programs mark and check alike
            assert secret is not None and read_mark(new) == secret
        moved_at = [len(s.received) for s in streams]
        for stream, count in zip(streams, moved_at, strict=True):
            stream.wait_for(count + 200)  # still flowing, on the new programs
    finally:
        for stream in streams:
            stream.stop()

    losses = [stream.lost() for stream in streams]
    attach = r1["yogurt"]["attach"]
    for stream, lost in zip(streams, losses, strict=True):
        assert stream.out_of_order() == 0, stream.problems()
        assert len(lost) <= max_lost(release), stream.problems()
        # One window per direction: what was lost was sent in one run, not scattered.
        assert not lost or lost[-1] - lost[0] < max_lost(release), stream.problems()

    assert not os.path.exists(old.root), "the older release's pins stayed"
    assert {e.pins for e in Registry(conf["stateDir"]).snapshot().values()} == {new.root}
    if attach != "tc":  # tc filters have no pins; CHECK below asks the kernel
        wanted = {program_id(new, "peer"), program_id(new, "veth_peer"), program_id(new, "primary")}
        links = link_programs(new)
        assert {n.rsplit("_", 1)[0] for n in links} >= {host_one, r2["interfaces"][0]["name"]}
        assert set(links.values()) <= wanted, links
    for ns, result in ((one, r1), (two, r2)):
        check = node.run("CHECK", {**conf, "prevResult": result}, ns)
        assert check.rc == 0, check.out
    assert sent_by(conf, host_one) >= counted_before  # the counters moved with the end
    assert lab.ping(one, b4) == 2 and lab.ping(two, a4) == 2
    doctor = yogurt(conf, "doctor")
    assert "another release" not in doctor.stdout, doctor.stdout
    for ns in (one, two):
        node.delete(conf, ns)
    assert pinned_link_names(new) == set()
    assert json.loads(yogurt(conf, "status", "--json").stdout)["older_pins"] == []
    return losses, took, attach


@pytest.mark.parametrize("release", ROLLBACK_TO, ids=_release_id, indirect=True, scope="module")
def test_a_line_moves_back_to_a_real_release_and_forward_again(
    node: Node, private: dict[str, Any], release: Release, old_release: list[str]
) -> None:
    """Rolling back: a line of this release moved onto a real release's programs by that
    release's `yogurt upgrade`, then forward again by this one's, under UDP both ways (not to
    ABI 3, which cannot take this release's secret: a rollback to it is not in place)."""
    conf = private
    new, old = node.pins, Pins(os.path.join(conf["bpffsDir"], f"v{release.abi}"))
    one, two = node.netns(), node.netns()
    r1, r2 = node.add(conf, one), node.add(conf, two)
    a4, b4 = r1["ips"][0]["address"].split("/")[0], r2["ips"][0]["address"].split("/")[0]
    assert lab.ping(one, b4) == 2 and lab.ping(two, a4) == 2
    secret = read_mark(new)
    streams = [Stream(one, two, b4).start(), Stream(two, one, a4).start()]
    try:
        for stream in streams:
            stream.wait_for(200)
        back = yogurt(conf, "upgrade", exe=old_release)
        assert back.returncode == 0 and "2 live ends moved" in back.stdout, back.stdout + back.stderr
        # It read this release's registry as its own (no healing) and switched every hook: this
        # release's pins went with the last end on them.
        assert "healed" not in back.stderr, back.stderr
        assert not os.path.exists(new.root), back.stdout
        node.pins = old
        assert read_mark(old) == secret
        for stream, count in zip(streams, [len(s.received) for s in streams], strict=True):
            stream.wait_for(count + 200)
        forward = yogurt(conf, "upgrade")
        assert forward.returncode == 0 and "2 live ends moved" in forward.stdout, (
            forward.stdout + forward.stderr
        )
        node.pins = new
        for stream, count in zip(streams, [len(s.received) for s in streams], strict=True):
            stream.wait_for(count + 200)
    finally:
        for stream in streams:
            stream.stop()
    for stream in streams:
        assert not stream.problems(), stream.problems()
    assert not os.path.exists(old.root)
    for ns, result in ((one, r1), (two, r2)):
        check = node.run("CHECK", {**conf, "prevResult": result}, ns)
        assert check.rc == 0, check.out
    for ns in (one, two):
        node.delete(conf, ns)


def test_the_agent_of_this_release_moves_a_real_release_line_when_it_starts(
    node: Node, private: dict[str, Any], release: Release, old_release: list[str]
) -> None:
    """The node agent as the upgrade's trigger: started on a node whose line an older release
    made, it moves the line onto this release's programs before it serves, under UDP both ways."""
    conf = private
    new, old = node.pins, Pins(os.path.join(conf["bpffsDir"], f"v{release.abi}"))
    node.pins = old
    one, two = node.netns(), node.netns()
    r1, r2 = node.add(conf, one, exe=old_release), node.add(conf, two, exe=old_release)
    a4, b4 = r1["ips"][0]["address"].split("/")[0], r2["ips"][0]["address"].split("/")[0]
    assert lab.ping(one, b4) == 2 and lab.ping(two, a4) == 2
    streams = [Stream(one, two, b4).start(), Stream(two, one, a4).start()]
    agent = None
    try:
        for stream in streams:
            stream.wait_for(200)
        agent = Agent(conf, "--pool", "0").ready()
        node.pins = new
        info = agent.info()
        assert info is not None
        # The agent says which release it is, as `yogurt version` does.
        assert (info["version"], info["abi"], info["commit"]) == (__version__, ABI, this_release.commit())
        for stream, count in zip(streams, [len(s.received) for s in streams], strict=True):
            stream.wait_for(count + 200)
    finally:
        for stream in streams:
            stream.stop()
        if agent is not None:
            assert agent.stop() == 0
    for stream in streams:
        lost = stream.lost()
        assert stream.out_of_order() == 0 and len(lost) <= max_lost(release), stream.problems()
    assert not os.path.exists(old.root), "the older release's pins stayed"
    assert {e.pins for e in Registry(conf["stateDir"]).snapshot().values()} == {new.root}
    for ns, result in ((one, r1), (two, r2)):
        check = node.run("CHECK", {**conf, "prevResult": result}, ns)
        assert check.rc == 0, check.out
    for ns in (one, two):
        node.delete(conf, ns)
