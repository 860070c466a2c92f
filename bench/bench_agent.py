"""The node agent for the bench: `yogurt agent` on the bench's own agent dirs, and the plugins
that reach it (the entry point, dist/yogurt and the compiled front end, their configs naming its
stateDir)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_verbs import AGENT_BPFFS, AGENT_STATE, BenchError, Plugin, log

from cni_yogurt.agent import frontend

# Subnets of their own beside 10.201 (entry point), 10.202 (dist/yogurt), 10.203 (ptp).
SUBNETS = {"venv": "10.204.0.0/16", "bin": "10.205.0.0/16"}
KEYS = {"venv": "agent", "bin": "agentbin"}
FRONT_SUBNET = "10.207.0.0/16"  # 10.206: bench_across
# The veth attach modes, each through the compiled front end: "modes" in bench.py.
MODES = {"tcx": "10.208.0.0/16", "split": "10.209.0.0/16", "tc": "10.210.0.0/16"}
NETKIT_SUBNET = "10.211.0.0/16"


def through_agent(plugins: list[Plugin]) -> list[Plugin]:
    """The yogurt plugins again, as execs that forward to the agent."""
    return [
        dataclasses.replace(
            p, key=KEYS[p.key], label=f"{p.label} → agent", subnet=SUBNETS[p.key], via_agent=True
        )
        for p in plugins
        if p.key in KEYS
    ]


def compiled_front(front: Path, plugins: list[Plugin]) -> Plugin | None:
    """The compiled front end (`make front`) as a node has it: `yogurt` in a bin dir of its own,
    `yogurt-full` beside it (dist/yogurt where the bench has it, else the entry point)."""
    if not front.exists():
        log(f"{front} missing (`make front`): no compiled front end figures")
        return None
    full = next((p for p in plugins if p.key == "bin"), plugins[0])
    bin_dir = Path(tempfile.mkdtemp(prefix="ybench-front-"))
    atexit.register(shutil.rmtree, bin_dir, True)
    shutil.copy2(front, bin_dir / "yogurt")
    os.symlink(full.exe[0], bin_dir / "yogurt-full")
    return Plugin(
        "front",
        "compiled front end → agent",
        [str(bin_dir / "yogurt")],
        "yogurt",
        FRONT_SUBNET,
        front.stat().st_size,
        via_agent=True,
    )


def per_mode(front: Plugin, netkit: bool) -> list[Plugin]:
    """The compiled front end once per veth attach mode (backend.py: what each attaches how),
    and for netkit first where the kernel has it."""
    on_netkit = dataclasses.replace(
        front, key="front-netkit", label="front end → agent, netkit", subnet=NETKIT_SUBNET,
        conf_keys={"mode": "netkit"},
    )  # fmt: skip
    return [
        *([on_netkit] if netkit else []),
        *[
            dataclasses.replace(
                front,
                key=f"front-{mode}",
                label=f'front end → agent, "vethAttach": "{mode}"',
                subnet=subnet,
                conf_keys={"mode": "veth", "vethAttach": mode},
            )
            for mode, subnet in MODES.items()
        ],
    ]


@contextlib.contextmanager
def running(entry: list[str], log_path: str) -> Iterator[float]:
    """`yogurt agent` (the venv entry point) until the block ends; yields its start-up seconds
    (programs compiled and loaded before it listens). Its own log goes to `log_path`."""
    start = time.perf_counter()
    argv = [*entry, "agent", "--state-dir", AGENT_STATE, "--bpffs-dir", AGENT_BPFFS]
    with open(log_path, "ab") as agent_log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=agent_log)
    try:
        while frontend.info(AGENT_STATE) is None:
            if proc.poll() is not None:
                raise BenchError(f"yogurt agent exited {proc.returncode}")
            if time.perf_counter() - start > 300:
                raise BenchError("yogurt agent did not start serving")
            time.sleep(0.02)
        ready = time.perf_counter() - start
        log(f"agent serving after {ready:.2f} s")
        yield ready
    finally:
        proc.send_signal(signal.SIGTERM)
        if proc.wait(60) != 0:
            log(f"agent exited {proc.returncode}")
