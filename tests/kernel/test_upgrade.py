"""Upgrade in place: live lines move to a new release's programs without losing a packet.

The next release is this code pinned under another ABI (YOGURT_TEST_ABI=5):
its own programs, maps and pin dir, loaded by its first ADD (or by `yogurt
upgrade`) while two containers stream sequenced UDP both ways across a live
line.  Every datagram must arrive, in order; afterwards the links run the new
programs, the old pin dir is gone and the ends are recorded on the new one.

Each test runs on a state dir and a bpffs dir of its own: it loads programs
of two releases there, and other tests (in parallel) must not see them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Node, Phone, addresses, private_dirs

from cni_yogurt import lab
from cni_yogurt.datapath import ABI, Pins, pinned_link_names, program_id
from cni_yogurt.faults import ENV as CRASH_ENV
from cni_yogurt.faults import MOVE_POINTS
from cni_yogurt.kernel import bpf
from cni_yogurt.lab.stream import Stream
from cni_yogurt.line.registry import Registry

NEXT_ABI = ABI + 1


@pytest.fixture
def private(node: Node, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with private_dirs(node, tmp_path, "upgrade") as conf:
        yield conf


def yogurt(
    conf: dict[str, Any], *argv: str, exe: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The admin CLI of this release (or of the one `exe` runs) on the test's dirs."""
    where = ["--state-dir", conf["stateDir"], "--bpffs-dir", conf["bpffsDir"]]
    return subprocess.run(
        [*(exe or lab.self_command()), *argv, *where],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def link_programs(pins: Pins) -> dict[str, int]:
    """Which program each pinned link of a pin dir runs."""
    found = {}
    for name in sorted(os.listdir(pins.links_dir)):
        fd = bpf.obj_get(os.path.join(pins.links_dir, name))
        try:
            found[name] = bpf.link_prog_id(fd)
        finally:
            os.close(fd)
    return found


def sent_by(conf: dict[str, Any], host_ifname: str, exe: list[str] | None = None) -> int:
    status = json.loads(yogurt(conf, "status", "--json", exe=exe).stdout)
    ends = [e for line in status["lines"].values() for e in line if e["host_ifname"] == host_ifname]
    return int(ends[0]["counters"]["redirected_packets"])


@pytest.mark.parametrize("trigger", ["ADD", "upgrade-command"])
def test_live_line_moves_to_the_next_release_without_losing_a_packet(
    node: Node, private: dict[str, Any], trigger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = private
    phone = Phone(node, conf=conf)
    # Neighbours resolved before the streams start.
    assert lab.ping(phone.one, phone.b4) == 2 and lab.ping(phone.two, phone.a4) == 2
    old, new = node.pins, Pins(os.path.join(conf["bpffsDir"], f"v{NEXT_ABI}"))
    streams = [Stream(phone.one, phone.two, phone.b4).start(), Stream(phone.two, phone.one, phone.a4).start()]
    try:
        for stream in streams:
            stream.wait_for(200)
        counted_before = sent_by(conf, phone.host_one)

        monkeypatch.setenv("YOGURT_TEST_ABI", str(NEXT_ABI))  # the next release, from here on
        if trigger == "ADD":
            node.add(conf, node.netns(), cni_args="YOGURT_LINE=elsewhere")
        else:
            run = yogurt(conf, "upgrade")
            assert run.returncode == 0, run.stdout + run.stderr
            assert "2 live ends moved" in run.stdout, run.stdout
        node.pins = new
        moved_at = [len(s.received) for s in streams]
        for stream, count in zip(streams, moved_at, strict=True):
            stream.wait_for(count + 200)  # still flowing, on the new programs
    finally:
        for stream in streams:
            stream.stop()
    for stream in streams:
        assert not stream.problems(), stream.problems()

    assert not os.path.exists(old.root), "the older release's pins stayed"
    assert {e.pins for e in Registry(conf["stateDir"]).snapshot().values()} == {new.root}
    if phone.r1["yogurt"]["attach"] != "tc":  # tc filters have no pins; CHECK below asks the kernel
        wanted = {program_id(new, "peer"), program_id(new, "veth_peer"), program_id(new, "primary")}
        links = link_programs(new)
        assert {n.rsplit("_", 1)[0] for n in links} >= {phone.host_one, phone.host_two}
        assert set(links.values()) <= wanted, links
    # CHECK of the new release: its programs, its map.
    for ns, result in ((phone.one, phone.r1), (phone.two, phone.r2)):
        run = node.run("CHECK", {**conf, "prevResult": result}, ns)
        assert run.rc == 0, run.out
    assert sent_by(conf, phone.host_one) >= counted_before  # the counters moved with the end
    assert lab.ping(phone.one, phone.b4) == 2
    doctor = yogurt(conf, "doctor")
    assert "another release" not in doctor.stdout, doctor.stdout
    for ns in node.namespaces:
        node.delete(conf, ns)
    assert pinned_link_names(new) == set()


def test_doctor_names_older_pins_until_they_are_moved(
    node: Node, private: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = private
    one = node.netns()
    node.add(conf, one)
    monkeypatch.setenv("YOGURT_TEST_ABI", str(NEXT_ABI))
    doctor = yogurt(conf, "doctor")
    assert f"also holds v{ABI} of another release" in doctor.stdout, doctor.stdout
    assert "yogurt upgrade" in doctor.stdout
    status = json.loads(yogurt(conf, "status", "--json").stdout)
    assert status["older_pins"] == [node.pins.root]
    # The end waits alone on its line: it moves too, and keeps its place.
    run = yogurt(conf, "upgrade", "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["moved"] == 1, run.stdout + run.stderr
    assert not os.path.exists(node.pins.root)
    node.pins = Pins(os.path.join(conf["bpffsDir"], f"v{NEXT_ABI}"))
    two = node.netns()
    r2 = node.add(conf, two)
    assert lab.ping(one, addresses(r2)[0]) == 2
    node.delete(conf, one)
    node.delete(conf, two)


@pytest.mark.parametrize("point", MOVE_POINTS)
def test_a_move_cut_short_leaves_a_working_line_and_the_next_call_finishes_it(
    node: Node, private: dict[str, Any], point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = private
    phone = Phone(node, conf=conf)
    monkeypatch.setenv("YOGURT_TEST_ABI", str(NEXT_ABI))
    monkeypatch.setenv(CRASH_ENV, point)
    run = yogurt(conf, "upgrade")
    assert run.returncode == -9, run.stdout + run.stderr
    monkeypatch.delenv(CRASH_ENV)
    # Half moved: after switches 1 and 3 an old program and a new one face each other (the
    # old sender's mark meets the new guard, or the other way round), and both must agree.
    assert lab.ping(phone.one, phone.b4) == 2 and lab.ping(phone.two, phone.a4) == 2
    run = yogurt(conf, "upgrade")
    assert run.returncode == 0 and "2 live ends moved" in run.stdout, run.stdout + run.stderr
    assert not os.path.exists(node.pins.root), "the older release's pins stayed"
    node.pins = Pins(os.path.join(conf["bpffsDir"], f"v{NEXT_ABI}"))
    assert lab.ping(phone.one, phone.b4) == 2 and lab.ping(phone.two, phone.a4) == 2
    for ns, result in ((phone.one, phone.r1), (phone.two, phone.r2)):
        check = node.run("CHECK", {**conf, "prevResult": result}, ns)
        assert check.rc == 0, check.out
    phone.hang_up()


def test_ends_of_another_bpffs_dir_on_the_same_state_dir_are_left_where_they_are(
    node: Node, private: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two networks, one stateDir, two bpffsDirs: neither the other's first load (which
    re-attaches its own live ends) nor its upgrade may take this one's ends."""
    conf = private
    elsewhere = {**conf, "name": f"{conf['name']}-b", "bpffsDir": f"{conf['bpffsDir']}-b"}
    one, two = node.netns(), node.netns()
    r1 = node.add(conf, one)
    try:
        r2 = node.add(elsewhere, two)  # the first ADD on that bpffsDir loads its programs
        run = node.run("CHECK", {**conf, "prevResult": r1}, one)
        assert run.rc == 0, run.out  # still on this bpffsDir's programs
        monkeypatch.setenv("YOGURT_TEST_ABI", str(NEXT_ABI))
        upgrade = yogurt(elsewhere, "upgrade", "--json")
        report = json.loads(upgrade.stdout)
        assert report["moved"] == 1, upgrade.stdout + upgrade.stderr
        assert upgrade.returncode == 0 and report["not_moved"] == [], report  # the other end is not its own
        assert os.path.exists(node.pins.root)  # this bpffsDir's release was not touched
        monkeypatch.delenv("YOGURT_TEST_ABI")
        run = node.run("CHECK", {**conf, "prevResult": r1}, one)
        assert run.rc == 0, run.out
        monkeypatch.setenv("YOGURT_TEST_ABI", str(NEXT_ABI))
        run = node.run("CHECK", {**elsewhere, "prevResult": r2}, two)
        assert run.rc == 0, run.out
        node.delete(elsewhere, two)
        monkeypatch.delenv("YOGURT_TEST_ABI")
        node.delete(conf, one)
    finally:
        shutil.rmtree(elsewhere["bpffsDir"], ignore_errors=True)
