"""One line across two nodes, driven by the CNI project's own runtime, `cnitool`, on each node.

Two nodes of the lab, etcd on its underlay and an agent per node, as in test_cluster_lines.py, but
all of it the one-file binary `dist/yogurt` (`make binary`; the lab's etcd speaks http here, TLS in
tests/kernel/test_image_cluster.py): the agents are dist/yogurt, and cnitool (`make cnitool`), run
inside each node's network namespace (nsenter --net), execs dist/yogurt as the plugin from a CNI
bin dir that holds only it and host-local.  Each node has its own conflist for the one network:
same line, same subnet, a host-local range of its own, so the two containers get addresses on one
subnet.

Root, wireguard-go, wg, nft, an etcd, dist/yogurt and cnitool (`make cluster-net` builds the last two).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, NodeAgent, agents_on_nodes, devices, remote_wired, require_node_lab, wait_until

from cni_yogurt import lab
from cni_yogurt.datapath import PairMap, Pins, pinned_link_names
from cni_yogurt.lab.nodes import VXLAN_MTU
from cni_yogurt.line.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "dist" / "yogurt"
CNITOOL = ROOT / ".cache" / "cnitool" / "bin" / "cnitool"
NETWORK = "across"
LINE = "cnitool-across"
SUBNET = "10.218.2.0/24"  # no other test uses it
RANGES = ("10.218.2.10", "10.218.2.19"), ("10.218.2.20", "10.218.2.29")  # node 0's, node 1's

require_node_lab((BINARY, "build it with `make binary`"), (CNITOOL, "build it with `make cnitool`"))


@dataclass
class NodeCnitool:
    """cnitool on one node: its own conflist, CNI bin dir, IPAM data and result cache."""

    agent: NodeAgent
    top: Path

    @property
    def netconf(self) -> Path:
        return self.top / "net.d"

    @property
    def cni_path(self) -> Path:
        return self.top / "bin"

    @property
    def ipam_dir(self) -> Path:
        return self.top / "ipam"

    @property
    def var_lib(self) -> Path:
        return self.top / "var-lib"

    def setup(self, first: str, last: str) -> NodeCnitool:
        for d in (self.netconf, self.cni_path, self.var_lib):
            d.mkdir(parents=True)
        conf = self.agent.conf(NETWORK, line=LINE, mtu=VXLAN_MTU)
        conf["ipam"] = {
            "type": "host-local",
            "dataDir": str(self.ipam_dir),
            "ranges": [[{"subnet": SUBNET, "rangeStart": first, "rangeEnd": last}]],
        }
        del conf["name"], conf["cniVersion"]
        conflist = {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [conf]}
        (self.netconf / "10-across.conflist").write_text(json.dumps(conflist, indent=2))
        (self.cni_path / "yogurt").symlink_to(BINARY)
        host_local = lab.have_host_local()
        assert host_local, "no host-local plugin (containernetworking-plugins)"
        found = host_local if host_local.endswith("/host-local") else os.path.join(host_local, "host-local")
        (self.cni_path / "host-local").symlink_to(found)
        return self

    def __call__(self, verb: str, ctr: lab.Netns) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(NETCONFPATH=str(self.netconf), CNI_PATH=str(self.cni_path))
        # In the node's network namespace only; libcni caches ADD results in /var/lib/cni: a private
        # mount namespace puts this node's directory there, so CHECK and DEL get them and nothing
        # lands on the machine.
        argv = ["nsenter", f"--net=/run/netns/{self.agent.netns}",
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$0" /var/lib && exec "$@"', str(self.var_lib),
                str(CNITOOL), verb, NETWORK, f"/run/netns/{ctr.name}"]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=120)

    def cached(self) -> list[str]:
        results = self.var_lib / "cni" / "results"
        return sorted(p.name for p in results.iterdir()) if results.exists() else []

    def leases(self) -> list[str]:
        return sorted(p.name for p in self.ipam_dir.rglob("10.218.*")) if self.ipam_dir.exists() else []


def container_id(ctr: lab.Netns) -> str:
    """What cnitool passes as CNI_CONTAINERID: a hash of the absolute netns path (cnitool.go)."""
    return "cnitool-" + hashlib.sha512(f"/run/netns/{ctr.name}".encode()).hexdigest()[:20]


def node_state(agent: NodeAgent) -> dict[str, Any]:
    """What of the line the node holds: devices, link pins, pairing/remote map entries, ends."""
    pins = Pins.under(agent.bpffs_dir)
    pairs: dict[int, Any] = {}
    if pins.loaded():
        with PairMap(pins) as pair_map:
            pairs = dict(pair_map.items())
    found = {
        "devices": devices(agent),
        "link pins": sorted(pinned_link_names(pins)),
        "pair entries": pairs,
        "remote entries": remote_wired(agent),
        "line ends": sorted(Registry(agent.state_dir).snapshot()),
    }
    return {k: v for k, v in found.items() if v}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with agents_on_nodes(tmp_path_factory.mktemp("cnitool-across"), 2, [str(BINARY)]) as made:
        yield made


def test_cnitool_on_two_nodes_drives_one_line_across(cluster: Cluster, tmp_path: Path) -> None:
    assert BINARY.read_bytes()[:4] == b"\x7fELF", f"{BINARY} is not the one-file binary"
    for agent in cluster.agents:  # nsenter exec'd it: the agent is the binary, not the package
        assert agent.proc is not None and os.readlink(f"/proc/{agent.proc.pid}/exe") == str(BINARY.resolve())
    tools = [NodeCnitool(a, tmp_path / a.name).setup(*r) for a, r in zip(cluster.agents, RANGES, strict=True)]
    assert [sorted(os.listdir(t.cni_path)) for t in tools] == [["host-local", "yogurt"]] * 2
    ctrs = [cluster.container(f"ct{i}") for i in range(2)]
    added: list[int] = []
    try:
        ips = []
        for i, (cnitool, ctr) in enumerate(zip(tools, ctrs, strict=True)):
            run = cnitool("add", ctr)
            assert run.returncode == 0, f"cnitool add on {cnitool.agent.name}: {run.stdout} {run.stderr}"
            added.append(i)
            [ip] = json.loads(run.stdout)["ips"]
            ips.append(ip["address"].split("/")[0])
        assert ips[0].startswith("10.218.2.1") and ips[1].startswith("10.218.2.2"), ips  # each node's range
        claims = sorted((c.node, c.end_key, c.ready) for c in cluster.claims(LINE))
        assert claims == [(f"node-{i}", f"{container_id(ctrs[i])}/eth0", True) for i in range(2)], claims
        assert wait_until(lambda: cluster.vni(LINE) is not None, 10)

        a, b = ctrs
        logs = "".join(agent.log_text() for agent in cluster.agents)
        assert wait_until(lambda: lab.ping(a, ips[1], count=1, wait=1) == 1, 15), logs
        assert lab.ping(b, ips[0], count=3, wait=2) == 3
        assert lab.tcp_exchange(b, ips[1], a)
        assert lab.tcp_exchange(a, ips[0], b, port=4243)

        for cnitool, ctr in zip(tools, ctrs, strict=True):
            run = cnitool("check", ctr)
            assert run.returncode == 0, f"cnitool check on {cnitool.agent.name}: {run.stdout} {run.stderr}"
        # What the end-of-test check looks at does show the line while it is up.
        for agent in cluster.agents:
            up = node_state(agent)
            assert [len(up[k]) for k in ("devices", "remote entries", "line ends")] == [1, 1, 1], up
    finally:
        dels = [tools[i]("del", ctrs[i]) for i in added]
    for run in dels:
        assert run.returncode == 0, f"cnitool del: {run.stdout} {run.stderr}"

    # Nothing left: in etcd, on either node, in cnitool's cache or host-local's leases.
    assert cluster.claims(LINE) == []
    assert cluster.vni(LINE) is None
    assert [node_state(agent) for agent in cluster.agents] == [{}, {}]
    assert [(t.cached(), t.leases()) for t in tools] == [([], []), ([], [])]
    assert lab.ping(ctrs[0], ips[1], count=1, wait=1) == 0
    # Every verb reached dist/yogurt through cnitool, on its own node's agent, and succeeded.
    for agent, ctr in zip(cluster.agents, ctrs, strict=True):
        assert plugin_calls(agent, container_id(ctr)) >= {"ADD", "CHECK", "DEL"}, agent.log_text()


def plugin_calls(agent: NodeAgent, cid: str) -> set[str]:
    """The verbs for this container that the node's plugin log says ended "ok"."""
    events = [json.loads(line) for line in (agent.dir / "plugin.log").read_text().splitlines() if cid in line]
    return {e["verb"] for e in events if e.get("outcome") == "ok" and e.get("container_id") == cid}
