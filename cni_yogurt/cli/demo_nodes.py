"""`yogurt demo --nodes 2`: one line across two nodes, on one machine.

The node lab (nodelab.py: nodes as network namespaces on an underlay, WireGuard -- the kernel's, else
wireguard-go -- and an external VXLAN device each) without WireGuard peers; a three-member etcd on the
underlay, in the hub's namespace (etcdlab.py); on each node a `yogurt agent --cluster`, entered into the
node's network namespace only (nsenter --net: `ip netns exec` would remount /sys and hide bpffs), with
its own stateDir and bpffsDir; one container per node, ADDed to one line through the CNI protocol. Then:
ping and TCP across, both ways; neither node's host reaches either container; a VXLAN frame with the
line's tunnel id sent in clear to a node's underlay address never arrives. Everything is torn down at
the end; exit 0 only if every check held.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cni_yogurt import lab
from cni_yogurt.agent import frontend
from cni_yogurt.cli.demo import Report
from cni_yogurt.nodelab import (
    STORE_ADDRESS,
    VXLAN_IF,
    VXLAN_PORT,
    NodeLab,
    NodeLabError,
    missing_tools,
    wireguard_kind,
)

LINE = "yogurt-across"
ADDRESSES = ("10.219.0.1", "10.219.0.2")  # the two containers (no test uses 10.219)
AGENT_START = 180.0


class _Agent:
    def __init__(self, index: int, netns: str, top: Path, tag: str) -> None:
        self.index, self.netns = index, netns
        self.dir = top / f"node{index}"
        self.dir.mkdir()
        self.state_dir = str(self.dir / "state")
        self.bpffs_dir = f"/sys/fs/bpf/yogurt-demo-{tag}-n{index}"
        self.cluster_file = self.dir / "cluster.json"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    def start(self) -> None:
        argv = [*lab.self_command(), "agent", "--state-dir", self.state_dir, "--bpffs-dir", self.bpffs_dir]
        with open(self.dir / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", *argv, "--cluster", str(self.cluster_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def ready(self) -> bool:
        deadline = time.monotonic() + AGENT_START
        while time.monotonic() < deadline:
            if frontend.info(self.state_dir, timeout=10) is not None:
                return True
            if self.proc is None or self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def last_log(self) -> str:
        return (self.dir / "agent.log").read_text(errors="replace").strip().splitlines()[-1:][0][:300]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.bpffs_dir, ignore_errors=True)

    def conf(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.1.0",
            "name": "yogurt-demo-nodes",
            "type": "yogurt",
            "cluster": True,
            "mode": "veth",
            "line": LINE,
            "stateDir": self.state_dir,
            "bpffsDir": self.bpffs_dir,
            "logFile": str(self.dir / "plugin.log"),
        }


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
    from cni_yogurt import etcdlab

    if not etcdlab.ETCD:
        return "no etcd: set YOGURT_ETCD to an etcd >= 3.4, or run packaging/fetch-etcd.sh in a checkout"
    return None


def _vxlan_frame(vni: int, src: str, dst: str, port: int, payload: bytes) -> bytes:
    """A VXLAN payload carrying Ethernet + IPv4 + UDP from src to dst:port, checksummed."""
    udp = struct.pack("!HHHH", 5555, port, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    csum = sum(struct.unpack("!10H", header))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    ip = header[:10] + struct.pack("!H", csum) + header[12:] + udp
    ether = bytes.fromhex("020000000001") + bytes.fromhex("02000000beef") + b"\x08\x00"
    return struct.pack("!B3xI", 0x08, vni << 8) + ether + ip


def _receives(ns: lab.Netns, address: str, port: int, send: Callable[[], None]) -> bytes | None:
    with lab.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        sock.settimeout(1.5)
        send()
        try:
            return sock.recv(100)
        except TimeoutError:
            return None


def _send(ns: lab.Netns, payload: bytes, address: str, port: int) -> None:
    with lab.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, (address, port))


def demo_nodes(n: int = 2) -> int:
    why = _missing()
    if why is not None:
        print(why)
        return 1
    from cni_yogurt import etcdlab
    from cni_yogurt.cluster.keys import Keys

    wireguard = "kernel WireGuard" if wireguard_kind() == "kernel" else "wireguard-go"
    print(f"yogurt demo across {n} nodes: netns nodes, {wireguard}, etcd {etcdlab.ETCD_FROM}")
    report = Report()
    top = Path(tempfile.mkdtemp(prefix="yogurt-demo-nodes-"))
    nodes = NodeLab(n, peers=False)
    store: etcdlab.EtcdLab | None = None
    agents: list[_Agent] = []
    containers: list[lab.Netns] = []
    added: list[tuple[_Agent, lab.Netns]] = []
    try:
        nodes.start()
        report.line(True, f"{n} nodes on the underlay 10.215.0.0/24, WireGuard without peers")
        store = etcdlab.EtcdLab(netns=nodes.hub.name, host=str(STORE_ADDRESS)).start()
        report.line(True, f"etcd, three members on {STORE_ADDRESS} (the underlay)")
        keys = Keys(f"/yogurt-demo-{nodes.tag}")
        for node in nodes.nodes:
            agent = _Agent(node.index, node.netns.name, top, nodes.tag)
            cfg = {
                "endpoints": store.endpoint_urls(),
                "node": agent.name,
                "prefix": keys.prefix,
                "address": str(node.underlay),
                "wireguardDevice": node.wg_if,
                "tunnelDevice": VXLAN_IF,
            }
            agent.cluster_file.write_text(json.dumps(cfg))
            agent.start()
            agents.append(agent)
        for agent in agents:
            ok = agent.ready()
            report.line(ok, f"agent on {agent.name}: " + ("registered, serving" if ok else agent.last_log()))
            if not ok:
                return 1
        a, b = agents[0], agents[1]
        for agent, address in ((a, ADDRESSES[0]), (b, ADDRESSES[1])):
            ctr = lab.Netns(f"{nodes.name}-c{agent.index}").create()
            containers.append(ctr)
            run = lab.run_plugin(
                "ADD", agent.conf(), container_id=ctr.name, netns=ctr.path, cni_args=f"IP={address}/24"
            )
            report.line(
                run.rc == 0,
                f"ADD {ctr.name} on {agent.name}: eth0 {address}" + ("" if run.rc == 0 else f" {run.out}"),
            )
            if run.rc != 0:
                return 1
            added.append((agent, ctr))
        ca, cb = containers
        client = store.client()
        kv = client.get(keys.line_vni(LINE))
        deadline = time.monotonic() + 15
        while kv is None and time.monotonic() < deadline:
            time.sleep(0.2)
            kv = client.get(keys.line_vni(LINE))
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
        for node in nodes.nodes:
            for ip in ADDRESSES:
                got = lab.ping(node.netns, ip, count=2, wait=1)
                report.line(got == 0, f"host of node-{node.index} -> {ip}: {got}/2 replies (locked out)")
        # An injector on the underlay (the hub) sends the line's own tunnel id in clear to node 0.
        frame = _vxlan_frame(vni, ADDRESSES[1], ADDRESSES[0], 7101, b"injected")
        node_a = nodes.nodes[0]
        got_in = _receives(
            ca, ADDRESSES[0], 7101, lambda: _send(nodes.hub, frame, str(node_a.underlay), VXLAN_PORT)
        )
        report.line(
            got_in is None,
            f"VXLAN frame, tunnel id {vni}, in clear to {node_a.underlay}: "
            + ("ARRIVED" if got_in else "never arrived"),
        )
        got_real = _receives(
            ca, ADDRESSES[0], 7102, lambda: _send(cb, b"from the partner", ADDRESSES[0], 7102)
        )
        report.line(
            got_real == b"from the partner", "control: the partner's own datagram, through the line, arrives"
        )
    except Exception as exc:  # noqa: BLE001  (a demo: say what failed, then tear down)
        report.line(False, f"{type(exc).__name__}: {exc}")
    finally:
        for agent, ctr in added:
            run = lab.run_plugin("DEL", agent.conf(), container_id=ctr.name, netns=ctr.path)
            report.line(run.rc == 0, f"DEL {ctr.name}")
        for agent in agents:
            agent.stop()
        for ctr in containers:
            ctr.delete()
        if store is not None:
            store.close()
        nodes.close()
        shutil.rmtree(top, ignore_errors=True)
        left = nodes.leftovers() + [a.bpffs_dir for a in agents if os.path.exists(a.bpffs_dir)]
        report.line(not left, "torn down" + (f", left: {left}" if left else ": nothing left"))
    print("a line across nodes works" if report.failures == 0 else f"{report.failures} check(s) failed")
    return 0 if report.failures == 0 else 1
