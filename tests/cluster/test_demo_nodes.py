"""`yogurt demo --nodes 2` passes every check and leaves nothing (root, the node lab's tools, etcd)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from cni_yogurt import lab
from cni_yogurt.cli.demo_nodes import TOOLS


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the demo needs root"
    tools = [t for t in TOOLS if shutil.which(t) is None]
    return f"missing {', '.join(tools)}" if tools else None


if (_why := _missing()) is not None:
    if os.environ.get("YOGURT_REQUIRE_KERNEL") == "1":
        raise pytest.UsageError(f"YOGURT_REQUIRE_KERNEL=1 but {_why}")
    pytest.skip(_why, allow_module_level=True)


def test_the_demo_across_two_nodes_passes_and_leaves_nothing() -> None:
    before = set(os.listdir("/run/netns"))
    proc = subprocess.run(
        [*lab.self_command(), "demo", "--nodes", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "a line across nodes works" in proc.stdout
    assert "torn down: nothing left" in proc.stdout
    assert "✘" not in proc.stdout
    assert {n for n in set(os.listdir("/run/netns")) - before if n.startswith("yn-")} == set()
