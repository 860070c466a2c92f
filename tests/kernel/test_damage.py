"""Damaged state heals by itself: a broken line file, pins removed or bpffs unmounted under live lines.

Each test runs on a state dir and a bpffs dir of its own: it breaks them on purpose,
and other tests (in parallel) must not see that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Node, addresses, plugin_log, private_dirs

from cni_yogurt import lab
from cni_yogurt.line.registry import Registry, _line_file

DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "garbage": lambda text: "\x00\xff not json at all {{{",
    "wrong shape": lambda text: json.dumps({"ends": [1, 2, 3]}),
    "unknown fields": lambda text: json.dumps({"ends": {"a/eth0": {"who": "knows"}}}),
}


@pytest.fixture
def private(node: Node, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with private_dirs(node, tmp_path, "damage") as conf:
        yield conf


def _damage(conf: dict[str, Any], how: str) -> Path:
    """Damage the file of the config's line (where its two ends are)."""
    path = Path(conf["stateDir"]) / "lines" / _line_file(conf["name"])
    path.write_text(DAMAGE[how](path.read_text()), encoding="utf-8", errors="surrogateescape")
    return path


def _doctor(conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    argv = [*lab.self_command(), "doctor", "--state-dir", conf["stateDir"], "--bpffs-dir", conf["bpffsDir"]]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60, env=dict(os.environ))


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_line_registry_is_rebuilt_from_the_kernel(
    node: Node, private: dict[str, Any], how: str
) -> None:
    conf = private
    one, two, other = node.netns(), node.netns(), node.netns()
    long_id = "c" * 294 + node.tag  # too long for the device's label: an anonymous end until a verb names it
    r1 = node.add(conf, one)
    node.runtime_ids.add(long_id)  # watched for leftovers like the others
    r2 = node.add(conf, two, container_id=long_id)
    path = _damage(conf, how)

    doctor = _doctor(conf)
    assert doctor.returncode == 1 and "damaged" in doctor.stdout, doctor.stdout

    # ADDs on other lines do not even read it.
    node.add(conf, other, cni_args="YOGURT_LINE=elsewhere")
    # The next verb on the damaged line heals it: membership comes back from the kernel, so
    # a third end finds the line full (code 100), and its two ends still talk.
    third = node.netns()
    run = node.run("ADD", conf, third)
    assert run.rc != 0 and run.out["code"] == 100, run.out
    assert (Path(conf["stateDir"]) / "lines.damaged" / "lines" / path.name).exists()
    assert any(e.get("event") == "line registry healed" for e in plugin_log([third.name]))
    assert lab.ping(one, addresses(r2)[0]) == 2
    assert node.run("CHECK", {**conf, "prevResult": r1}, one).rc == 0
    # The end with the long ID is adopted back by the verb that names it.
    assert node.run("CHECK", {**conf, "prevResult": r2}, two, container_id=long_id).rc == 0
    assert _doctor(conf).returncode == 0
    node.delete(conf, two, container_id=long_id)
    node.delete(conf, one)
    node.delete(conf, other)
    assert Registry(conf["stateDir"]).snapshot() == {}


@pytest.mark.parametrize("verb", ["ADD", "GC"])
def test_lost_pins_under_live_lines_are_restored(node: Node, private: dict[str, Any], verb: str) -> None:
    conf = private
    one, two = node.netns(), node.netns()
    r1, r2 = node.add(conf, one), node.add(conf, two)
    b4, _ = addresses(r2)
    assert lab.ping(one, b4) == 2
    shutil.rmtree(node.pins.root)  # as `rm -r` or an unmounted bpffs would
    # Links die with their pins (tc filters belong to the device): without the sender's, nothing
    # reaches the partner.  (split: the sender is a filter, only the guards went.)
    if r1["yogurt"]["attach"] in ("netkit", "tcx"):
        time.sleep(1)  # the kernel releases a link's last reference a little later
        assert lab.ping(one, b4) == 0
    if verb == "ADD":
        other = node.netns()
        node.add(conf, other, cni_args="YOGURT_LINE=elsewhere")
    else:
        valid = [{"containerID": ns.name, "ifname": "eth0"} for ns in (one, two)]
        run = node.run("GC", {**conf, "cni.dev/valid-attachments": valid}, None)
        assert run.rc == 0, run.out
    assert lab.ping(one, b4) == 2
    assert lab.ping(two, addresses(r1)[0]) == 2
    for ns, result in ((one, r1), (two, r2)):
        run = node.run("CHECK", {**conf, "prevResult": result}, ns)
        assert run.rc == 0, run.out
    node.delete(conf, one)
    node.delete(conf, two)
    if verb == "ADD":
        node.delete(conf, other)
