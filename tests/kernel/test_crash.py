"""kill -9 anywhere: a runtime kills a plugin that outlives its timeout, at whatever step it is.

For every crash point of ADD and DEL (cni_yogurt/faults.py) the plugin is
SIGKILLed there, then recovered the ways a runtime recovers: DEL with the same
arguments, a retried ADD (which either works or fails with a clear code, then
DEL), or GC with an empty list of valid attachments. The node fixture then
fails the test if anything is left: device, link pin, map entry, line end or
IP lease. Runs once per backend the kernel offers.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Node, addresses

from cni_yogurt import lab
from cni_yogurt.cni.errors import Code
from cni_yogurt.datapath import Pins, unload
from cni_yogurt.faults import ADD_POINTS, DEL_POINTS, ENV


@pytest.fixture
def crash_env() -> Iterator[Any]:
    """Set YOGURT_TEST_CRASH_AT for the plugin runs inside the block only."""

    class Crash:
        def at(self, point: str | None) -> None:
            if point is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = point

    yield Crash()
    os.environ.pop(ENV, None)


def _killed(run: lab.PluginRun) -> bool:
    return run.rc == -signal.SIGKILL


def _clean_error(run: lab.PluginRun) -> bool:
    """A failure as the spec wants it: a JSON error with a known code, no traceback."""
    return run.rc > 0 and run.out.get("code") not in (None, Code.INTERNAL) and "Traceback" not in run.stderr


def _recover(
    node: Node, conf: dict[str, Any], how: str, crashed: lab.Netns, partner: lab.Netns | None
) -> None:
    if how == "del":
        node.delete(conf, crashed)
        if partner is not None:
            node.delete(conf, partner)
    elif how == "retry":
        run = node.run("ADD", conf, crashed)
        if run.rc == 0:
            if partner is not None:
                b4, _ = addresses(run.out)
                assert lab.ping(partner, b4) == 2, "a retried ADD that succeeds must be wired"
        else:
            assert _clean_error(run), run
        node.delete(conf, crashed)
        if partner is not None:
            node.delete(conf, partner)
    else:  # GC that knows no attachment at all: everything of this network goes
        run = node.run("GC", {**conf, "cni.dev/valid-attachments": []}, None)
        assert run.rc == 0, run.out
    assert node.leases() == [], "every IP lease released"


@pytest.mark.parametrize("how", ["del", "retry", "gc"])
@pytest.mark.parametrize("point", ADD_POINTS)
def test_add_killed_at_each_step_is_cleaned_up(node: Node, crash_env: Any, point: str, how: str) -> None:
    conf = node.conf()
    partner = None
    if point == "add:loading":
        # Only the first ADD on a node loads the programs: a bpffs dir of its own.
        conf["bpffsDir"] = f"/sys/fs/bpf/cni-yogurt-crash-{node.tag}"
        node.pins = Pins.under(conf["bpffsDir"])
    else:
        partner = node.netns()
        node.add(conf, partner)
    crashed = node.netns()
    try:
        crash_env.at(point)
        run = node.run("ADD", conf, crashed)
        crash_env.at(None)
        assert _killed(run), f"ADD did not stop at {point}: {run}"
        _recover(node, conf, how, crashed, partner)
    finally:
        crash_env.at(None)
        if point == "add:loading":
            left = node.leftovers()
            unload(node.pins)
            os.rmdir(conf["bpffsDir"])
            assert left == {}


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("point", DEL_POINTS)
def test_del_killed_at_each_step_is_cleaned_up(node: Node, crash_env: Any, point: str, how: str) -> None:
    conf = node.conf()
    one, two = node.netns(), node.netns()
    node.add(conf, one)
    r2 = node.add(conf, two)
    b4, _ = addresses(r2)
    crash_env.at(point)
    run = node.run("DEL", conf, two)
    crash_env.at(None)
    assert _killed(run), f"DEL did not stop at {point}: {run}"
    assert lab.ping(one, b4, count=1) == 0, "half a DEL already hung up the line"
    _recover(node, conf, how, two, one)
