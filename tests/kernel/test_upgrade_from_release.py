"""Upgrade in place from a real earlier release, not this code under another ABI.

The release is the last one before ABI 4 (commit 34494bf, ABI 3), from the wheel kept in
tests/kernel/releases/ (build.sh there rebuilds it from git history), installed into a venv of
its own.  It makes a line; two containers stream sequenced UDP both ways across it, one datagram
per millisecond; then this release's `yogurt upgrade` moves the line onto its programs.

ABI 3 compiled its secret into its programs, so the new programs' mark differs from the old
ones': a datagram sent between the switch of one end's sender and the switch of the guard it
sends to is dropped.  The move switches those two back to back, so each direction loses at most
the datagrams of one such window.  Measured on veth natively (Linux 6.18, 2 cores shared with
other work, load 5 to 34), 17 moves each: 0-1 datagrams per direction with tcx, 0-8 with tc
(README, "Upgrade in place").  The bound below is that plus margin for a busier machine: a
window grown to tens of milliseconds (the two switches no longer back to back, say) fails it,
and a line the move broke fails the wait for datagrams after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Node, private_dirs
from test_upgrade import Stream, link_programs, sent_by, yogurt

from cni_yogurt import lab
from cni_yogurt.datapath import ABI, Pins, pinned_link_names, program_id
from cni_yogurt.line.registry import Registry

OLD_ABI = 3
WHEEL = Path(__file__).parent / "releases" / "abi3-34494bf" / "cni_yogurt-0.1.0-py3-none-any.whl"
# Datagrams one direction may lose while its sender and the guard it sends to switch (see above).
MAX_LOST = 30


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The old release's `yogurt`, installed from its wheel into a venv of its own.

    The venv sees the system's bcc (--system-site-packages) and, through a .pth, the
    dependencies of this checkout's venv (pyroute2, structlog: offline, no index), which come
    after its own site-packages: its cni_yogurt is the old one.
    """
    assert WHEEL.is_file(), f"{WHEEL} is missing: tests/kernel/releases/build.sh 34494bf"
    venv = tmp_path_factory.mktemp("release") / "venv"
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True
    )
    target = subprocess.run(
        [venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(target, "current-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q"]
    subprocess.run([*pip, "--no-deps", "--no-index", str(WHEEL)], check=True, capture_output=True)
    exe = [str(venv / "bin/yogurt")]
    version = subprocess.run([*exe, "version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0, version.stdout + version.stderr
    where = subprocess.run(  # -P: not from the current dir (this checkout), as its `yogurt` script
        [venv / "bin/python", "-P", "-c", "import cni_yogurt.datapath as d; print(d.ABI, d.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0] == str(OLD_ABI) and where[1].startswith(target), where  # the old code, not ours
    return exe


@pytest.fixture
def private(node: Node, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with private_dirs(node, tmp_path, "release") as conf:
        yield conf


def test_a_line_of_the_last_release_before_abi_4_moves_with_a_bounded_loss(
    node: Node, private: dict[str, Any], old_release: list[str]
) -> None:
    conf = private
    old, new = Pins(os.path.join(conf["bpffsDir"], f"v{OLD_ABI}")), node.pins
    assert new.root.endswith(f"v{ABI}") and ABI > OLD_ABI
    node.pins = old  # what the old release's ADDs leave, for the leftover checks until the move
    one, two = node.netns(), node.netns()
    r1, r2 = node.add(conf, one, exe=old_release), node.add(conf, two, exe=old_release)
    assert os.path.isdir(old.root) and not os.path.exists(new.root)
    a4, b4 = r1["ips"][0]["address"].split("/")[0], r2["ips"][0]["address"].split("/")[0]
    host_one = r1["interfaces"][0]["name"]
    assert lab.ping(one, b4) == 2 and lab.ping(two, a4) == 2
    streams = [Stream(one, two, b4).start(), Stream(two, one, a4).start()]
    try:
        for stream in streams:
            stream.wait_for(200)
        counted_before = sent_by(conf, host_one, exe=old_release)  # its counters, on its pins
        started = time.monotonic()
        run = yogurt(conf, "upgrade")
        took = time.monotonic() - started
        assert run.returncode == 0, run.stdout + run.stderr
        assert "2 live ends moved" in run.stdout, run.stdout
        node.pins = new
        moved_at = [len(s.received) for s in streams]
        for stream, count in zip(streams, moved_at, strict=True):
            stream.wait_for(count + 200)  # still flowing, on the new programs
    finally:
        for stream in streams:
            stream.stop()

    losses = [stream.lost() for stream in streams]
    attach = r1["yogurt"]["attach"]
    # What the README's figure comes from: run with -s to see it.
    print(f"\nupgrade from ABI {OLD_ABI} on {attach} took {took:.2f} s; lost both ways: {losses}")
    for stream, lost in zip(streams, losses, strict=True):
        assert stream.out_of_order() == 0, stream.problems()
        assert len(lost) <= MAX_LOST, stream.problems()
        # One window per direction: what was lost was sent in one run, not scattered.
        assert not lost or lost[-1] - lost[0] < MAX_LOST, stream.problems()

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
