"""`yogurt demo --nodes 2` passes every check and leaves nothing (root, the node lab's tools, etcd)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from cni_yogurt import lab
from cni_yogurt.lab.nodes import missing_tools


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the demo needs root"
    tools = missing_tools(extra=("ping",))
    return f"missing {', '.join(tools)}" if tools else None


if (_why := _missing()) is not None:
    if os.environ.get("YOGURT_REQUIRE_KERNEL") == "1":
        raise pytest.UsageError(f"YOGURT_REQUIRE_KERNEL=1 but {_why}")
    pytest.skip(_why, allow_module_level=True)


def test_the_demo_across_two_nodes_passes_and_leaves_nothing() -> None:
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
    # Its own lab's namespaces (named after the containers it printed), not other labs running meanwhile.
    [lab_name] = set(re.findall(r"ADD (yn-[0-9a-f]+)-c0 ", proc.stdout))
    assert [n for n in os.listdir("/run/netns") if n.startswith(f"{lab_name}-")] == []
