"""Small helpers shared by the cluster tests, and the agents-on-the-node-lab cluster of the root ones
(test_cluster_lines.py, test_cnitool_across.py): cni_yogurt/clusterlab.py, with the tests' etcd."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import etcdlab
import pytest

from cni_yogurt import clusterlab
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.watch import Watcher
from cni_yogurt.clusterlab import Cluster, NodeAgent
from cni_yogurt.line import naming
from cni_yogurt.nodelab import missing_tools

__all__ = ["Cluster", "NodeAgent", "agents_on_nodes", "converged", "devices", "remote_wired", "wait_until"]

SUFFIX = os.environ.get("YOGURT_TEST_NODE_DIRS", "")


def wait_until(cond: Callable[[], object], timeout: float, pause: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(pause)
    return bool(cond())


def store_view(client: Client, prefix: bytes) -> dict[bytes, bytes]:
    kvs, _ = client.get_prefix(prefix)
    return {kv.key: kv.value for kv in kvs}


def mirror_view(watcher: Watcher) -> dict[bytes, bytes]:
    return {k: kv.value for k, kv in watcher.snapshot().items()}


def converged(watcher: Watcher, client: Client, prefix: bytes, timeout: float = 10.0) -> bool:
    """True once the watcher's mirror equals what the store holds under prefix."""
    return wait_until(lambda: mirror_view(watcher) == store_view(client, prefix), timeout, pause=0.2)


# -- agents on the node lab (root) ----------------------------------------------------------------


def require_node_lab(*artefacts: tuple[Path, str]) -> None:
    """Skip the calling module where the lab cannot run; fail instead under YOGURT_REQUIRE_KERNEL=1.

    `artefacts`: (file, how to build it), executables the module needs besides the lab's tools.
    """
    why = None
    if os.geteuid() != 0:
        why = "the node lab needs root"
    elif tools := missing_tools(extra=("nsenter",)):
        why = f"missing {', '.join(tools)} (packaging/install-deps.sh)"
    elif built := [f"{path}: {how}" for path, how in artefacts if not os.access(path, os.X_OK)]:
        why = "missing " + "; ".join(built)
    if why is not None:
        if os.environ.get("YOGURT_REQUIRE_KERNEL") == "1":
            raise pytest.UsageError(f"YOGURT_REQUIRE_KERNEL=1 but {why}")
        pytest.skip(why, allow_module_level=True)


@contextlib.contextmanager
def agents_on_nodes(top: Path, count: int, command: list[str] | None = None) -> Iterator[Cluster]:
    """cni_yogurt.clusterlab's cluster with the tests' etcd and pins of this checkout's run
    (YOGURT_TEST_NODE_DIRS); asserts at the end that the lab left nothing."""
    with clusterlab.agents_on_nodes(
        top, count, bpffs_prefix=f"/sys/fs/bpf/yogurt-cl-{SUFFIX}", command=command, etcd=etcdlab.ETCD
    ) as made:
        yield made
    assert made.nodes.leftovers() == []


def devices(agent: NodeAgent) -> list[str]:
    """The host ends of lines on the node (not the agent's pooled pairs, named ygp…)."""
    out = json.loads(agent.sh("ip", "-j", "link", "show"))
    return [link["ifname"] for link in out if naming.is_ours(link["ifname"])]


def remote_wired(agent: NodeAgent) -> dict[int, Any]:
    from cni_yogurt.datapath import Pins
    from cni_yogurt.line import remote

    return dict(remote.remote_partners(Pins.under(agent.bpffs_dir)))
