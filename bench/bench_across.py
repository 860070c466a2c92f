"""Across nodes: a line between two lab nodes against the bare WireGuard path between the same nodes;
ADD of a cross-node end against a node-local ADD, both through the agent on the same node.

The cluster is cni_yogurt/lab/cluster.py's (as `yogurt demo --nodes 2` and the cluster tests build
it): two nodes of the node lab (network namespaces on an underlay bridge, WireGuard between them --
the kernel's, else wireguard-go -- and an external VXLAN device each), a three-member etcd on the
underlay, a `yogurt agent --cluster` per node.  Every verb is one exec of the plugin (the venv's
entry point), as a runtime does it, forwarding to the node's agent.

- The wire: one container per node on one line of a `"cluster": true` network (the line's packets:
  veth, the tunnel program, VXLAN yvx0, WireGuard, the underlay, and back up on the other node),
  against iperf3/sockperf run in the two nodes' own netns between their WireGuard addresses (the
  same WireGuard, no line, no VXLAN).  bench_wire.py's rounds: line, bare, line, bare ...
- The verbs: per round, on node 0, the ADD (and then DEL) of a line's second end whose partner is
  up on node 1, and of a node-local line's second end (a network without "cluster") whose partner
  is up on node 0; the two take turns, which goes first alternating by round; round 0 warms up.

Addresses are given with CNI_ARGS IP= (no IPAM: neither side pays a host-local exec), in 10.206/16
(the bench's others are 10.201-205).  Everything, the lab, etcd, the agents and their pins, the
containers, goes at the end, even after a failure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_verbs import BPFFS, BenchError, Plugin, Samples, log, run
from bench_wire import Wire, measure, tools_missing

from cni_yogurt import lab
from cni_yogurt.lab.cluster import ClusterLabError, NodeAgent, agents_on_nodes
from cni_yogurt.lab.nodes import NodeLabError, missing_tools

WIRE_ADDRESSES = ("10.206.0.1", "10.206.0.2")  # the line's two containers, node 0 and node 1
CROSS = "cross-node end"
LOCAL = "local end"
NETWORKS = {CROSS: "ybench-across", LOCAL: "ybench-local"}


def missing() -> str | None:
    """Why the section cannot run here (None: it can)."""
    from cni_yogurt.lab import etcd as etcdlab

    if tools := missing_tools(extra=("nsenter",)):
        return f"{', '.join(tools)} missing (packaging/install-deps.sh)"
    if not etcdlab.ETCD:
        return "no etcd: packaging/fetch-etcd.sh (`make bench` runs it) or YOGURT_ETCD"
    if tools := tools_missing():
        return f"{', '.join(tools)} missing: `make bench` installs them"
    return None


@dataclass
class Attachment:
    agent: NodeAgent
    conf: dict[str, Any]
    cid: str
    netns: lab.Netns


@dataclass
class Across:
    wires: list[Wire]
    agents_ready_s: float
    load: list[float] = field(default_factory=list)  # 1-min load average at start and end
    adds: list[Attachment] = field(default_factory=list)  # up, not yet DELeted

    def report(self, rounds: int, seconds: int, rr_seconds: int, add_rounds: int) -> dict[str, Any]:
        return {
            "rounds": rounds,
            "seconds": seconds,
            "rr_seconds": rr_seconds,
            "add_rounds": add_rounds,
            "agents_ready_s": round(self.agents_ready_s, 2),
            "load": [round(x, 2) for x in self.load],
            "wireguard": "wireguard-go (userspace)",
            "links": [w.figures() for w in self.wires],
        }


def _conf(agent: NodeAgent, kind: str, line: str) -> dict[str, Any]:
    conf = agent.conf(NETWORKS[kind], line=line)  # a cluster line's MTU: the agent's (line_mtu)
    if kind == LOCAL:
        del conf["cluster"]  # a node-local network, through the same agent
    return conf


def _add(
    plugin: Plugin, state: Across, agent: NodeAgent, kind: str, line: str, cid: str, ns: lab.Netns, ip: str
) -> float:
    conf = _conf(agent, kind, line)
    state.adds.append(Attachment(agent, conf, cid, ns))
    elapsed, _ = run(
        plugin, "ADD", conf, cid, ns.path, cni_path=lab.CNI_PATH_DEFAULT, cni_args=f"IP={ip}", check=True
    )
    return elapsed


def _del(plugin: Plugin, state: Across, att: Attachment) -> float:
    elapsed, _ = run(
        plugin, "DEL", att.conf, att.cid, att.netns.path, cni_path=lab.CNI_PATH_DEFAULT, check=True
    )
    state.adds.remove(att)
    return elapsed


def _wait(what: str, cond: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def bench(
    plugin: Plugin,
    top: Path,
    samples: Samples,
    *,
    rounds: int,
    seconds: int,
    rr_seconds: int,
    add_rounds: int,
) -> dict[str, Any]:
    """The section; `plugin` is the exec'd front end (the venv's entry point), `top` a scratch dir
    of the caller's.  The ADD/DEL samples land in `samples` under the key "across"."""
    top.mkdir(parents=True, exist_ok=True)
    load = [os.getloadavg()[0]]
    started = time.perf_counter()
    try:
        with agents_on_nodes(top, 2, bpffs_prefix=f"{BPFFS}-across") as cluster:
            ready = time.perf_counter() - started
            log(f"across: 2 nodes, etcd, 2 agents ready after {ready:.1f} s")
            a, b = cluster.agents
            n0, n1 = cluster.nodes.nodes
            ca, cb = cluster.container("wa"), cluster.container("wb")
            state = Across([], ready, load)
            try:
                for agent, ns, ip in ((a, ca, WIRE_ADDRESSES[0]), (b, cb, WIRE_ADDRESSES[1])):
                    _add(plugin, state, agent, CROSS, "wire", f"ybench-across-{ns.name}", ns, f"{ip}/24")
                # The agents wire the remote partner and set WireGuard's peers from etcd: bounded waits.
                _wait("ping across the line", lambda: lab.ping(ca, WIRE_ADDRESSES[1], 1, 1) == 1)
                _wait(
                    "ping between the WireGuard addresses",
                    lambda: lab.ping(n0.netns, str(n1.wg_addr), 1, 1) == 1,
                )
                state.wires = [
                    Wire("yogurt line across nodes", ca, cb, WIRE_ADDRESSES[1]),
                    Wire("bare WireGuard, node to node", n0.netns, n1.netns, str(n1.wg_addr)),
                ]
                measure(state.wires, rounds, seconds, rr_seconds, what="across: wire")
                _verbs(plugin, state, cluster.container, a, b, add_rounds, samples)
                state.load.append(os.getloadavg()[0])
            finally:
                for att in list(state.adds):  # best effort: the lab's teardown removes it all anyway
                    try:
                        _del(plugin, state, att)
                    except BenchError as exc:
                        log(f"across cleanup: {exc}")
    except BenchError:
        raise
    except (ClusterLabError, NodeLabError, RuntimeError) as exc:  # the lab or etcd did not come up
        raise BenchError(f"across: {exc}") from exc
    left = cluster.nodes.leftovers() + [a.bpffs_dir for a in cluster.agents if os.path.exists(a.bpffs_dir)]
    if left:
        log(f"across: left after teardown: {left}")
    return state.report(rounds, seconds, rr_seconds, add_rounds) | {"leftovers": left}


def _verbs(
    plugin: Plugin, state: Across, container: Any, a: NodeAgent, b: NodeAgent, rounds: int, samples: Samples
) -> None:
    # Per kind: where the partner sits, the two containers, the line's prefix and subnet.
    setups = {
        CROSS: (b, container("xa"), container("xb"), "x", "10.206.1"),  # partner on node 1
        LOCAL: (a, container("la"), container("lb"), "l", "10.206.2"),  # partner on node 0 too
    }

    def one(kind: str, i: int) -> tuple[float, float]:
        """The partner's ADD, then the timed ADD and DEL of the end on node 0; the partner goes."""
        partner_node, mine, partners, tag, subnet = setups[kind]
        _add(plugin, state, partner_node, kind, f"{tag}{i}", f"ybench-{tag}{i}-b", partners, f"{subnet}.2/24")
        add = _add(plugin, state, a, kind, f"{tag}{i}", f"ybench-{tag}{i}-a", mine, f"{subnet}.1/24")
        first, second = state.adds[-2:]
        dele = _del(plugin, state, second)
        _del(plugin, state, first)
        return add, dele

    for i in range(1 + rounds):  # round 0 warms up
        if i:
            log(f"across: verbs round {i}/{rounds}")
        for kind in (CROSS, LOCAL)[:: 1 if i % 2 else -1]:
            add, dele = one(kind, i)
            if i:
                samples.add("across", f"ADD, {kind}", add)
                samples.add("across", f"DEL, {kind}", dele)
