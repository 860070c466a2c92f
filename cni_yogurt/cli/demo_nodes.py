"""`yogurt demo --nodes 2`: one line across two nodes, on one machine.

lab/cluster.py's cluster: the node lab (lab/nodes.py: nodes as network namespaces on an underlay,
WireGuard -- the kernel's, else wireguard-go -- and an external VXLAN device each) without WireGuard
peers; a three-member etcd on the underlay, in the hub's namespace (lab/etcd.py); on each node a
`yogurt agent --cluster`, entered into the node's network namespace only, with its own stateDir and
bpffsDir; one container per node, ADDed to one line through the CNI protocol.  Then: ping and TCP
across, both ways; neither node's host reaches either container; a VXLAN frame with the line's tunnel
id sent in clear to a node's underlay address never arrives.  Everything is torn down at the end; exit
0 only if every check held.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cni_yogurt import lab
from cni_yogurt.cli.demo import Report
from cni_yogurt.lab.nodes import (
    STORE_ADDRESS,
    VXLAN_PORT,
    NodeLabError,
    ipv4_udp,
    missing_tools,
    vxlan_packet,
    wireguard_kind,
)

if TYPE_CHECKING:
    from cni_yogurt.lab.cluster import Cluster, NodeAgent

LINE = "yogurt-across"
ADDRESSES = ("10.219.0.1", "10.219.0.2")  # the two containers (no test uses 10.219)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "yogurt demo --nodes 2 needs root (netns, netlink, bpf)"
    tools = missing_tools(extra=("ping",))
    if tools:
        return f"missing {', '.join(tools)}: apt-get install wireguard-go wireguard-tools nftables util-linux"
    try:
        wireguard_kind()  # YOGURT_LAB_WIREGUARD: a kind this kernel can run
    except NodeLabError as e:
        return str(e)
    from cni_yogurt.lab import etcd as etcdlab

    if not etcdlab.ETCD:
        return "no etcd: set YOGURT_ETCD to an etcd >= 3.4, or run packaging/fetch-etcd.sh in a checkout"
    return None


def demo_nodes(n: int = 2) -> int:
    why = _missing()
    if why is not None:
        print(why)
        return 1
    from cni_yogurt.lab import etcd as etcdlab
    from cni_yogurt.lab.cluster import agents_on_nodes

    wireguard = "kernel WireGuard" if wireguard_kind() == "kernel" else "wireguard-go"
    print(f"yogurt demo across {n} nodes: netns nodes, {wireguard}, etcd {etcdlab.ETCD_FROM}")
    report = Report()
    top = Path(tempfile.mkdtemp(prefix="yogurt-demo-nodes-"))
    made: Cluster | None = None
    try:
        with agents_on_nodes(top, n, bpffs_prefix="/sys/fs/bpf/yogurt-demo") as cluster:
            made = cluster
            report.line(True, f"{n} nodes on the underlay 10.215.0.0/24, WireGuard without peers")
            report.line(True, f"etcd, three members on {STORE_ADDRESS} (the underlay)")
            for agent in cluster.agents:
                report.line(True, f"agent on {agent.name}: registered, serving")
            _across(cluster, report)
    except Exception as exc:  # noqa: BLE001  (a demo: say what failed; the lab tore itself down)
        report.line(False, f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(top, ignore_errors=True)
        left = [] if made is None else made.nodes.leftovers()
        left += [a.bpffs_dir for a in made.agents if os.path.exists(a.bpffs_dir)] if made else []
        report.line(not left, "torn down" + (f", left: {left}" if left else ": nothing left"))
    print("a line across nodes works" if report.failures == 0 else f"{report.failures} check(s) failed")
    return 0 if report.failures == 0 else 1


def _conf(agent: NodeAgent) -> dict[str, Any]:
    return agent.conf("yogurt-demo-nodes", line=LINE)


def _across(cluster: Cluster, report: Report) -> None:
    """One container per node on the line, the checks, and the DELs (whatever failed)."""
    a, b = cluster.agents[0], cluster.agents[1]
    containers: list[lab.Netns] = []
    added: list[tuple[NodeAgent, lab.Netns]] = []
    try:
        for agent, address in ((a, ADDRESSES[0]), (b, ADDRESSES[1])):
            ctr = cluster.container(str(agent.index))
            containers.append(ctr)
            run = lab.run_plugin(
                "ADD", _conf(agent), container_id=ctr.name, netns=ctr.path, cni_args=f"IP={address}/24"
            )
            report.line(
                run.rc == 0,
                f"ADD {ctr.name} on {agent.name}: eth0 {address}" + ("" if run.rc == 0 else f" {run.out}"),
            )
            if run.rc != 0:
                return
            added.append((agent, ctr))
        _checks(cluster, report, containers)
    finally:
        for agent, ctr in added:
            run = lab.run_plugin("DEL", _conf(agent), container_id=ctr.name, netns=ctr.path)
            report.line(run.rc == 0, f"DEL {ctr.name}")


def _checks(cluster: Cluster, report: Report, containers: list[lab.Netns]) -> None:
    ca, cb = containers
    kv = None
    deadline = time.monotonic() + 15
    while kv is None and time.monotonic() < deadline:
        kv = cluster.client.get(cluster.keys.line_vni(LINE))
        if kv is None:
            time.sleep(0.2)
    vni = int(kv.value) if kv else 0
    report.line(vni > 0, f"line {LINE!r}: both ends claimed in etcd, tunnel id {vni}")
    reached = False
    deadline = time.monotonic() + 15
    while not reached and time.monotonic() < deadline:
        reached = lab.ping(ca, ADDRESSES[1], count=1, wait=1) == 1
    for src, dst, ip in ((ca, cb, ADDRESSES[1]), (cb, ca, ADDRESSES[0])):
        got = lab.ping(src, ip, count=3, wait=2)
        report.line(got == 3, f"ping {src.name} -> {dst.name} {ip}: {got}/3 replies, through WireGuard")
    report.line(
        lab.tcp_exchange(cb, ADDRESSES[1], ca), f"TCP {ca.name} -> {cb.name} {ADDRESSES[1]}:4242 echoed"
    )
    report.line(
        lab.tcp_exchange(ca, ADDRESSES[0], cb, port=4243),
        f"TCP {cb.name} -> {ca.name} {ADDRESSES[0]}:4243 echoed",
    )
    for node in cluster.nodes.nodes:
        for ip in ADDRESSES:
            got = lab.ping(node.netns, ip, count=2, wait=1)
            report.line(got == 0, f"host of node-{node.index} -> {ip}: {got}/2 replies (locked out)")
    # An injector on the underlay (the hub) sends the line's own tunnel id in clear to node 0.
    frame = vxlan_packet(vni, "02:00:00:00:00:01", ipv4_udp(ADDRESSES[1], ADDRESSES[0], 7101, b"injected"))
    node_a = cluster.nodes.nodes[0]
    got_in = lab.udp_receive(
        ca,
        ADDRESSES[0],
        7101,
        lambda: lab.udp_send(cluster.nodes.hub, frame, str(node_a.underlay), VXLAN_PORT),
    )
    report.line(
        got_in is None,
        f"VXLAN frame, tunnel id {vni}, in clear to {node_a.underlay}: "
        + ("ARRIVED" if got_in else "never arrived"),
    )
    got_real = lab.udp_receive(
        ca, ADDRESSES[0], 7102, lambda: lab.udp_send(cb, b"from the partner", ADDRESSES[0], 7102)
    )
    report.line(
        got_real == b"from the partner", "control: the partner's own datagram, through the line, arrives"
    )
