"""Small helpers shared by the cluster tests, and the agents-on-the-node-lab cluster of the root ones
(test_cluster_lines.py, test_cnitool_across.py): cni_yogurt/lab/cluster.py, with the tests' etcd."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import etcdlab
import pytest

from cni_yogurt import lab
from cni_yogurt.agent import firewall
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.watch import Watcher
from cni_yogurt.lab import cluster as clusterlab
from cni_yogurt.lab.cluster import Cluster, NodeAgent
from cni_yogurt.lab.nodes import VXLAN_MTU, missing_tools
from cni_yogurt.line import naming

__all__ = [
    "CONTAINERS",
    "Cluster",
    "NodeAgent",
    "agents_on_nodes",
    "converged",
    "devices",
    "guard_drops",
    "line_across",
    "plugin",
    "remote_wired",
    "send_forged",
    "wait_until",
]

CONTAINERS = "10.218.0"  # the lines' container addresses: 10.218.0.<n>/24 (no other test uses it)

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
def agents_on_nodes(top: Path, count: int, command: list[str] | None = None, **kw: Any) -> Iterator[Cluster]:
    """cni_yogurt.lab.cluster's cluster with the tests' etcd and pins of this checkout's run
    (YOGURT_TEST_NODE_DIRS); asserts at the end that the lab left nothing.  `kw`: clusterlab's
    (owned, tls, cluster file keys)."""
    with clusterlab.agents_on_nodes(
        top, count, bpffs_prefix=f"/sys/fs/bpf/yogurt-cl-{SUFFIX}", command=command, etcd=etcdlab.ETCD, **kw
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


def plugin(command: str, conf: dict[str, Any], ctr: lab.Netns | None, cid: str, **kw: Any) -> lab.PluginRun:
    return lab.run_plugin(
        command, conf, container_id=cid, netns=f"/run/netns/{ctr.name}" if ctr else "", **kw
    )


@contextlib.contextmanager
def line_across(
    cluster: Cluster, x: NodeAgent, y: NodeAgent, line: str, n: int
) -> Iterator[tuple[lab.Netns, lab.Netns, str, str]]:
    """A line between a container on node x and one on node y, passing packets; DEL'd after."""
    cx, cy = cluster.container(f"{line}x"), cluster.container(f"{line}y")
    ip_x, ip_y = f"{CONTAINERS}.{n}", f"{CONTAINERS}.{n + 1}"
    try:
        for agent, ctr, ip, end in ((x, cx, ip_x, "x"), (y, cy, ip_y, "y")):
            run = plugin(
                "ADD", agent.conf(line=line, mtu=VXLAN_MTU), ctr, f"{line}-{end}", cni_args=f"IP={ip}/24"
            )
            assert run.rc == 0, run.out
        assert wait_until(lambda: lab.ping(cx, ip_y, count=1, wait=1) == 1, 15), x.log_text() + y.log_text()
        yield cx, cy, ip_x, ip_y
    finally:
        plugin("DEL", x.conf(line=line), cx, f"{line}-x")
        plugin("DEL", y.conf(line=line), cy, f"{line}-y")
    assert cluster.claims(line) == []


def send_forged(sender: lab.Netns, packet: bytes, to: str) -> None:
    """A raw IPv4 packet, its header as given (a forged source), sent from `sender`."""
    with lab.socket_in(sender, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        sock.sendto(packet, (to, 0))


def guard_drops(agent: NodeAgent) -> int:
    table = json.loads(agent.sh("nft", "-j", "list", "table", "inet", firewall.TABLE))
    return sum(
        int(e["counter"]["packets"])
        for item in table["nftables"]
        if "rule" in item
        for e in item["rule"]["expr"]
        if "counter" in e
    )
