"""Small helpers shared by the cluster tests, and the agents-on-the-node-lab cluster of the root ones
(test_cluster_lines.py, test_cnitool_across.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from etcdlab import EtcdLab

from cni_yogurt import lab
from cni_yogurt.agent import frontend
from cni_yogurt.cluster.claims import Claim
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.watch import Watcher
from cni_yogurt.line import naming
from cni_yogurt.nodelab import STORE_ADDRESS, VXLAN_IF, NodeLab, missing_tools

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

    def start(self) -> NodeAgent:
        argv = [*self.command, "agent", "--state-dir", self.state_dir, "--bpffs-dir", self.bpffs_dir]
        argv += ["--cluster", str(self.cluster_file)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return self

    def ready(self, timeout: float = 180) -> NodeAgent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if frontend.info(self.state_dir, timeout=10) is not None:
                return self
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent {self.name} exited {self.proc.returncode}: {self.log_text()}")
            time.sleep(0.1)
        raise AssertionError(f"agent {self.name} did not start: {self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(60)
        self.proc = None
        return rc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def conf(self, network: str = "xnet", **extra: Any) -> dict[str, Any]:
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
def agents_on_nodes(top: Path, count: int, command: list[str] | None = None) -> Iterator[Cluster]:
    """`count` nodes of the lab, a three-member etcd on its underlay (in the hub's netns), and on each
    node a ready `yogurt agent --cluster` run as `command` (default: this package).  Asserts at the
    end that the lab left nothing."""
    with NodeLab(count, peers=False) as nodes:
        store = EtcdLab(netns=nodes.hub.name, host=str(STORE_ADDRESS)).start()
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
                    f"/sys/fs/bpf/yogurt-cl-{SUFFIX}-{nodes.tag}-n{node.index}",
                    d / "cluster.json",
                    command or lab.self_command(),
                )
                agent.cluster_file.write_text(
                    json.dumps(
                        {
                            "endpoints": store.endpoint_urls(),
                            "node": agent.name,
                            "prefix": keys.prefix,
                            "address": str(node.underlay),
                            "wireguardDevice": node.wg_if,
                            "tunnelDevice": VXLAN_IF,
                        }
                    )
                )
                agents.append(agent.start())
            for agent in agents:
                agent.ready()
            yield made
        finally:
            for agent in agents:
                agent.stop()
            for ns in made.containers:
                ns.delete()
            store.close()
            for agent in agents:
                shutil.rmtree(agent.bpffs_dir, ignore_errors=True)
    assert nodes.leftovers() == []


def devices(agent: NodeAgent) -> list[str]:
    """The host ends of lines on the node (not the agent's pooled pairs, named ygp…)."""
    out = json.loads(agent.sh("ip", "-j", "link", "show"))
    return [link["ifname"] for link in out if naming.is_ours(link["ifname"])]


def remote_wired(agent: NodeAgent) -> dict[int, Any]:
    from cni_yogurt.datapath import Pins
    from cni_yogurt.line import remote

    return dict(remote.remote_partners(Pins.under(agent.bpffs_dir)))


# -- crafted packets ----------------------------------------------------------------------------


def ipv4_udp(src: str, dst: str, port: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 5555, port, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    csum = sum(struct.unpack("!10H", header))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    return header[:10] + struct.pack("!H", csum) + header[12:] + udp


def vxlan_packet(vni: int, dst_mac: str, inner: bytes) -> bytes:
    """A VXLAN UDP payload: the header with `vni`, an Ethernet frame carrying an IPv4 packet."""
    ether = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("02000000beef") + b"\x08\x00"
    return struct.pack("!B3xI", 0x08, vni << 8) + ether + inner
