"""Agents on the node lab: the node lab (lab/nodes.py), a three-member etcd on its underlay (in the hub's
netns, lab/etcd.py), and on each node a `yogurt agent --cluster`, entered into the node's network
namespace only (nsenter --net: `ip netns exec` would remount /sys and hide bpffs), with a stateDir
and bpffsDir of its own.

In the package, beside lab/nodes.py and lab/etcd.py, because three callers build this same cluster:
the root cluster tests (tests/cluster/helpers.py), `yogurt demo --nodes 2` and `make bench`'s
section across nodes (bench/bench_across.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_yogurt import lab
from cni_yogurt.agent import frontend
from cni_yogurt.cluster.claims import Claim
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.lab.etcd import EtcdLab
from cni_yogurt.lab.nodes import STORE_ADDRESS, VXLAN_IF, VXLAN_PORT, WG_PORT, WIREGUARD, Node, NodeLab

AGENT_START = 180.0  # seconds: the first agent on a machine compiles the programs (bcc)


class ClusterLabError(RuntimeError):
    pass


@dataclass
class NodeAgent:
    index: int
    netns: str  # the node's
    dir: Path
    bpffs_dir: str
    cluster_file: Path
    command: list[str] = field(default_factory=lab.self_command)  # the package, or dist/yogurt
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def state_dir(self) -> str:
        return str(self.dir / "state")

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def configure(
        self, store: EtcdLab, keys: Keys, node: Node, *, owned: bool = False, **extra: Any
    ) -> NodeAgent:
        """Write the agent's cluster file: the store (its TLS files if it has them), the node's name,
        address and devices.  `owned`: the agent makes its devices (the lab made none), its
        WireGuard address allocated from the lab's range; else it adopts the lab's."""
        cfg: dict[str, Any] = {
            "endpoints": store.endpoint_urls(),
            "node": self.name,
            "prefix": keys.prefix,
            "address": str(node.underlay),
            "wireguardDevice": node.wg_if,
            "tunnelDevice": VXLAN_IF,
            "dataDir": str(self.data_dir),
        }
        if owned:
            cfg |= {"wireguardRange": str(WIREGUARD), "wireguardPort": WG_PORT, "tunnelPort": VXLAN_PORT}
        if store.tls is not None:
            cfg |= {
                "caFile": store.tls.ca,
                "certFile": store.tls.client_cert,
                "keyFile": store.tls.client_key,
            }
        self.cluster_file.write_text(json.dumps(cfg | extra))
        return self

    def start(self, *extra: str) -> NodeAgent:
        """Start the agent (`extra`: more of its arguments, e.g. --metrics-socket)."""
        argv = [*self.command, "agent", "--state-dir", self.state_dir, "--bpffs-dir", self.bpffs_dir]
        argv += ["--cluster", str(self.cluster_file), *extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return self

    def ready(self, timeout: float = AGENT_START) -> NodeAgent:
        """Once the agent serves its stateDir; ClusterLabError (with its log) if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if frontend.info(self.state_dir, timeout=10) is not None:
                return self
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise ClusterLabError(f"agent {self.name} exited {rc}: {self.log_text()}")
            time.sleep(0.1)
        raise ClusterLabError(f"agent {self.name} did not start: {self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def conf(self, network: str = "xnet", **extra: Any) -> dict[str, Any]:
        """A network through this agent: `"cluster": true` unless `extra` says otherwise."""
        return {
            "cniVersion": "1.1.0",
            "name": network,
            "type": "yogurt",
            "cluster": True,
            "mode": "veth",
            "stateDir": self.state_dir,
            "bpffsDir": self.bpffs_dir,
            "logFile": str(self.dir / "plugin.log"),
            **extra,
        }

    def sh(self, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, check=True, timeout=30
        ).stdout


@dataclass
class Cluster:
    nodes: NodeLab
    store: EtcdLab
    agents: list[NodeAgent]
    keys: Keys
    client: Client
    containers: list[lab.Netns]

    def container(self, name: str) -> lab.Netns:
        """A container's netns (not inside any node's): removed with the cluster."""
        ns = lab.Netns(f"{self.nodes.name}-c{name}").create()
        self.containers.append(ns)
        return ns

    def claims(self, line: str) -> list[Claim]:
        kvs, _ = self.client.get_prefix(self.keys.line_ends(line))
        return [Claim.decode(kv) for kv in kvs]

    def vni(self, line: str) -> int | None:
        kv = self.client.get(self.keys.line_vni(line))
        return int(kv.value) if kv else None


@contextlib.contextmanager
def agents_on_nodes(
    top: Path,
    count: int,
    *,
    bpffs_prefix: str = "/sys/fs/bpf/yogurt-cl",
    command: list[str] | None = None,
    etcd: str | None = None,
    agent_start: float = AGENT_START,
    owned: bool = False,
    tls: bool = False,
    **cluster_file: Any,
) -> Iterator[Cluster]:
    """`count` nodes of the lab, a three-member etcd on its underlay, and on each node a ready
    `yogurt agent --cluster` run as `command` (default: this package), its files under `top`/node<i>
    and its pins under `bpffs_prefix`-<lab tag>-n<i>.  Everything is removed at the end, whatever
    happened: agents, containers made by `Cluster.container`, etcd, the lab, the agents' pins (what is
    under `top` is the caller's); `NodeLab.leftovers` says whether the lab left anything.
    `owned`: the nodes get an underlay only, each agent makes its WireGuard and tunnel devices;
    `tls`: etcd serves https with client certificates; `cluster_file`: more keys for every agent's."""
    with NodeLab(count, peers=False, devices=not owned) as nodes:
        store = EtcdLab(tls=tls, netns=nodes.hub.name, host=str(STORE_ADDRESS), etcd=etcd).start()
        keys = Keys(f"/yogurt-{nodes.tag}")
        agents: list[NodeAgent] = []
        made = Cluster(nodes, store, agents, keys, store.client(), [])
        try:
            for node in nodes.nodes:
                d = top / f"node{node.index}"
                d.mkdir()
                agent = NodeAgent(
                    node.index,
                    node.netns.name,
                    d,
                    f"{bpffs_prefix}-{nodes.tag}-n{node.index}",
                    d / "cluster.json",
                    command or lab.self_command(),
                )
                agents.append(agent.configure(store, keys, node, owned=owned, **cluster_file).start())
            for agent in agents:
                agent.ready(agent_start)
            yield made
        finally:
            for agent in agents:
                agent.stop()
            for ns in made.containers:
                ns.delete()
            store.close()
            for agent in agents:
                shutil.rmtree(agent.bpffs_dir, ignore_errors=True)
