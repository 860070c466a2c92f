"""What `yogurt status` and `yogurt doctor` say about the node agent of a stateDir."""

from __future__ import annotations

import os
import time
from typing import Any

from cni_yogurt import __version__, datapath
from cni_yogurt.agent import frontend, protocol
from cni_yogurt.health import Finding


def describe(info: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
    pool = info.get("pool")
    pooled = (
        f", {len(pool['ready'])}/{pool['size']} pairs ready in its pool ({pool['taken']} taken)"
        if isinstance(pool, dict)
        else ""
    )
    text = (
        f"pid {info['pid']}, release {info['version']} (ABI {info['abi']}"
        + (f", commit {info['commit']}" if info.get("commit") else "")
        + f"), since {started}, "
        f"{info['served']} calls served{pooled}"
    )
    cluster = info.get("cluster")
    if isinstance(cluster, dict):  # started with --cluster
        text += f"; cluster node {cluster.get('node')}, lease {cluster.get('lease')}"
        lost = cluster.get("lost") or []
        if lost:
            text += f", {len(lost)} end(s) LOST (their lines were taken while the node was away)"
        if cluster.get("last_error") or cluster.get("watch_error"):
            text += f", last error: {cluster.get('last_error') or cluster.get('watch_error')}"
    return text


def finding(state_dir: str) -> Finding:
    """Non-fatal either way: the agent is optional, every exec can do the work itself."""
    path = os.path.join(state_dir, protocol.SOCKET_NAME)
    info = frontend.info(state_dir)
    if info is None:
        if os.path.exists(path):
            return Finding(
                "agent",
                False,
                f"{path} exists but no agent answers: each exec waits for nothing, then works alone",
                "start it again (systemctl restart cni-yogurt-agent), or remove the socket",
                fatal=False,
            )
        return Finding(
            "agent", True, "none: each plugin exec does the work itself (optional: `yogurt agent`)"
        )
    if info.get("abi") != datapath.ABI or info.get("version") != __version__:
        return Finding(
            "agent",
            False,
            f"serves {state_dir} with another release: {describe(info)}",
            "restart the agent after installing a release (systemctl restart cni-yogurt-agent)",
            fatal=False,
        )
    return Finding("agent", True, f"serves {state_dir}: {describe(info)}")
