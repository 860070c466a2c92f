"""A cluster on one machine: nodes as network namespaces, joined by an underlay, each running
WireGuard (the kernel's where the kernel has it, else userspace wireguard-go) and a VXLAN device in
external (metadata) mode whose outer packets go over the WireGuard addresses.

Groundwork for the wire between nodes (lines across nodes) and for `yogurt demo --nodes 2`, which is
why it lives in the package (as lab/__init__.py does for the demo) and not under tests/.  Nothing here
knows about lines: tests/cluster/test_wire_across.py runs the plugin on these nodes and wires lines
across them with line/remote.py (the tunnel programs then send through yvx0); test_nodelab.py steers
frames into the VXLAN device itself.

Layout (every address inside the lab's namespaces; the host netns gets nothing):
    <name>-hub        a bridge, br0, with one veth port per node; 10.215.0.250/24 on it, where a
                  cluster store may listen (tests/cluster/etcdlab.py runs etcd in this netns)
    <name>-<i>        node i: under0 (underlay 10.215.0.<i+1>/24) on that bridge; WireGuard
                      <wg_if> (10.216.0.<i+1>/24, UDP 51820); VXLAN yvx0 (external, UDP 4789);
                      nftables: WireGuard's port only from under0, VXLAN's only from <wg_if>
Which WireGuard: `wireguard="auto"` (the default; YOGURT_LAB_WIREGUARD overrides it) takes the
kernel's if a `wireguard` link can be made (after `modprobe wireguard`; probed once), else
wireguard-go; "kernel" and "go" insist.  Both are driven alike by `wg` (keys, port, peers, and every
`wg show` of the lab and the agent), run inside the node's netns: the kernel's answers there by
netlink, wireguard-go by its control socket.  That socket is /var/run/wireguard/<wg_if>.sock, one
directory for every netns: so each node's WireGuard interface has a name unique on the host (the
lab's random tag in it), and `wg` is always given that name (a bare `wg show` lists other labs'
interfaces too).  A kernel WireGuard device has no socket or process: it goes with its netns.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cni_yogurt.lab import Netns, ping

UNDERLAY = ipaddress.IPv4Network("10.215.0.0/24")  # node i: .i+1 (no other test uses 10.215-217)
STORE_ADDRESS = UNDERLAY[250]  # the hub's own address: the cluster store's, reachable from every node
WIREGUARD = ipaddress.IPv4Network("10.216.0.0/24")  # node i's WireGuard address: .i+1
WG_PORT = 51820
VXLAN_PORT = 4789
UNDERLAY_IF = "under0"
VXLAN_IF = "yvx0"
WG_MTU = 1420  # the kernel's and wireguard-go's default: 1500 minus WireGuard's 80 bytes (IPv6 outer)
VXLAN_MTU = WG_MTU - 50  # VXLAN over IPv4: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14
WG_SOCKET_DIR = Path("/var/run/wireguard")
NFT_TABLE = "yogurt_node"
START_TIMEOUT = 10.0
WIREGUARD_KINDS = ("auto", "kernel", "go")
WIREGUARD_ENV = "YOGURT_LAB_WIREGUARD"
LAB_TOOLS = ("wg", "nft", "ip")


class NodeLabError(RuntimeError):
    pass


@functools.cache
def kernel_wireguard() -> bool:
    """Whether this kernel makes `wireguard` links: tried in a throw-away netns (unshare), after
    loading the module where it is one that nothing loaded yet (the test VM).  Needs root."""
    if not os.path.exists("/sys/module/wireguard"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["modprobe", "wireguard"], capture_output=True, check=False, timeout=30)
    try:
        probe = subprocess.run(
            ["unshare", "--net", "ip", "link", "add", "ywgprobe", "type", "wireguard"],
            capture_output=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def wireguard_kind(wanted: str | None = None) -> str:
    """ "kernel" or "go": what a lab asked for `wanted` (None: YOGURT_LAB_WIREGUARD, else "auto")
    runs.  NodeLabError for an unknown kind, or "kernel" where the kernel has no WireGuard."""
    wanted = wanted or os.environ.get(WIREGUARD_ENV) or "auto"
    if wanted not in WIREGUARD_KINDS:
        raise NodeLabError(f"WireGuard {wanted!r}: not one of {', '.join(WIREGUARD_KINDS)}")
    if wanted == "go":
        return "go"
    if kernel_wireguard():
        return "kernel"
    if wanted == "kernel":
        raise NodeLabError("kernel WireGuard asked for, but this kernel makes no wireguard link")
    return "go"


def missing_tools(wanted: str | None = None, *, extra: tuple[str, ...] = ()) -> list[str]:
    """The lab's tools (and `extra`) not on PATH; wireguard-go only where the lab would run it."""
    try:
        go = wireguard_kind(wanted) == "go"
    except NodeLabError:
        go = False  # NodeLab says why when it starts
    tools = (*(("wireguard-go",) if go else ()), *LAB_TOOLS, *extra)
    return [t for t in tools if shutil.which(t) is None]


def _run(argv: list[str], *, input: str | None = None, timeout: float = 10) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode:
        raise NodeLabError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Node:
    index: int
    netns: Netns
    dir: Path  # the node's own: its private key, wireguard-go's log (if it runs one)
    wg_if: str
    underlay: ipaddress.IPv4Address
    wg_addr: ipaddress.IPv4Address
    public_key: str = ""
    wireguard: subprocess.Popen[bytes] | None = field(default=None, repr=False)  # wireguard-go's

    @property
    def private_key_file(self) -> Path:
        return self.dir / "private.key"

    @property
    def wg_socket(self) -> Path:
        return WG_SOCKET_DIR / f"{self.wg_if}.sock"

    def sh(self, *argv: str, timeout: float = 10) -> str:
        """Run a command in the node's netns; its stdout, or NodeLabError."""
        return _run(["ip", "netns", "exec", self.netns.name, *argv], timeout=timeout)

    def link_stats(self, ifname: str) -> dict[str, int]:
        """The device's counters (rx_packets, tx_bytes, ...) as `ip -s` reports them."""
        [link] = json.loads(_run(["ip", "-n", self.netns.name, "-j", "-s", "link", "show", "dev", ifname]))
        stats = link["stats64"]
        return {f"{d}_{k}": int(v) for d in ("rx", "tx") for k, v in stats[d].items()}

    def mac(self, ifname: str) -> str:
        [link] = json.loads(_run(["ip", "-n", self.netns.name, "-j", "link", "show", "dev", ifname]))
        return str(link["address"])

    def dropped(self, rule: str) -> int:
        """Packets the node's nftables rule `rule` (its comment) dropped so far."""
        table = json.loads(self.sh("nft", "-j", "list", "table", "inet", NFT_TABLE))
        for item in table["nftables"]:
            r = item.get("rule")
            if r and r.get("comment") == rule:
                for expr in r["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        raise NodeLabError(f"no nftables rule {rule!r} in node {self.index}")


class NodeLab:
    """`n` nodes; `start` builds them (and removes everything again if any step fails), `close`
    removes netns, processes, control sockets and the nodes' dirs; `leftovers` names what is left."""

    def __init__(
        self,
        n: int = 2,
        *,
        wireguard: str | None = None,
        wireguard_go: str = "wireguard-go",
        tag: str | None = None,
        peers: bool = True,
        devices: bool = True,
    ) -> None:
        """`wireguard`: "auto", "kernel" or "go" (None: YOGURT_LAB_WIREGUARD, else "auto"); which one
        runs is `self.wireguard` once started.  `peers=False`: each node's WireGuard knows no peer
        (the node agent sets them from etcd).  `devices=False`: the nodes get their underlay and
        nothing else — no WireGuard, no VXLAN, no firewall: the node agent makes its own."""
        if not 1 < n < 250:
            raise ValueError("a lab has 2 to 249 nodes")
        self.wanted_wireguard = wireguard
        self.wireguard = ""  # "kernel" | "go", set by start
        self.tag = tag or secrets.token_hex(3)
        self.name = f"yn-{self.tag}"
        self.wireguard_go = wireguard_go
        self.with_peers = peers and devices
        self.with_devices = devices
        self.hub = Netns(f"{self.name}-hub")
        self.dir = Path(tempfile.mkdtemp(prefix=f"yogurt-nodes-{self.tag}-"))
        self.nodes = [
            Node(
                index=i,
                netns=Netns(f"{self.name}-{i}"),
                dir=self.dir / f"node{i}",
                wg_if=f"ywg{self.tag}n{i}",  # at most 13 bytes (IFNAMSIZ: 15)
                underlay=UNDERLAY[i + 1],
                wg_addr=WIREGUARD[i + 1],
            )
            for i in range(n)
        ]

    # --- building ---

    def start(self) -> NodeLab:
        try:
            self.wireguard = wireguard_kind(self.wanted_wireguard)
            self._underlay()
            for node in self.nodes:
                node.dir.mkdir(mode=0o700)
            if not self.with_devices:
                return self
            for node in self.nodes:
                self._wireguard(node)
            for node in self.nodes:
                if self.with_peers:
                    self._peers(node)
                self._vxlan(node)
                self._firewall(node)
            if self.with_peers:
                self.greet()
        except BaseException:
            self.close()
            raise
        return self

    def _underlay(self) -> None:
        self.hub.create()
        _run(["ip", "-n", self.hub.name, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub.name, "link", "set", "br0", "up"])
        _run(["ip", "-n", self.hub.name, "link", "set", "lo", "up"])
        _run(
            ["ip", "-n", self.hub.name, "addr", "add", f"{STORE_ADDRESS}/{UNDERLAY.prefixlen}", "dev", "br0"]
        )
        for node in self.nodes:
            node.netns.create()
            ns = node.netns.name
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # Both ends made straight in their netns: the host netns never sees them.
            port = f"n{node.index}"
            _run(
                ["ip", "link", "add", UNDERLAY_IF, "netns", ns, "type", "veth"]
                + ["peer", "name", port, "netns", self.hub.name]
            )
            _run(["ip", "-n", self.hub.name, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{node.underlay}/{UNDERLAY.prefixlen}", "dev", UNDERLAY_IF])
            _run(["ip", "-n", ns, "link", "set", UNDERLAY_IF, "up"])

    def _wireguard(self, node: Node) -> None:
        key = _run(["wg", "genkey"]).strip()
        fd = os.open(node.private_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        node.public_key = _run(["wg", "pubkey"], input=key).strip()
        ns = node.netns.name
        if self.wireguard == "kernel":
            # Made in the node's netns, so its UDP socket is there too (it stays in the netns the
            # device was made in).
            _run(["ip", "-n", ns, "link", "add", node.wg_if, "type", "wireguard"])
        else:
            self._wireguard_go(node)
        node.sh(
            "wg", "set", node.wg_if, "private-key", str(node.private_key_file), "listen-port", str(WG_PORT)
        )
        _run(["ip", "-n", ns, "addr", "add", f"{node.wg_addr}/{WIREGUARD.prefixlen}", "dev", node.wg_if])
        _run(["ip", "-n", ns, "link", "set", node.wg_if, "mtu", str(WG_MTU), "up"])

    def _wireguard_go(self, node: Node) -> None:
        if not os.path.exists("/dev/net/tun"):
            # A kernel with tun as a module and nothing that loads it at boot (the test VM):
            # loading it makes the device node.
            subprocess.run(["modprobe", "tun"], capture_output=True, check=False, timeout=30)
        if node.wg_socket.exists():
            raise NodeLabError(f"{node.wg_socket} exists: another wireguard-go has the name {node.wg_if}")
        with open(node.dir / "wireguard-go.log", "wb") as log:
            # -f: stays in the foreground, so it is our child and its pid the one to stop.
            node.wireguard = subprocess.Popen(
                ["ip", "netns", "exec", node.netns.name, self.wireguard_go, "-f", node.wg_if],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not node.wg_socket.exists():
            if node.wireguard.poll() is not None or time.monotonic() > deadline:
                text = (node.dir / "wireguard-go.log").read_text(errors="replace").strip()
                raise NodeLabError(f"wireguard-go for node {node.index} did not come up: {text[-500:]}")
            time.sleep(0.02)

    def _peers(self, node: Node) -> None:
        args: list[str] = []
        for peer in self.nodes:
            if peer is not node:
                args += ["peer", peer.public_key, "endpoint", f"{peer.underlay}:{WG_PORT}"]
                args += ["allowed-ips", f"{peer.wg_addr}/32"]
        node.sh("wg", "set", node.wg_if, *args)

    def greet(self, timeout: float = 20) -> None:
        """One ping over WireGuard per pair of nodes, from the lower-numbered one, until it is
        answered: every pair has its session before anyone uses the lab. Two nodes whose first
        packets to each other leave at the same instant make both initiate a handshake; seen with
        wireguard-go 0.0.20220316 about one lab start in four: one direction's data then went
        unaccepted for ≈ 15 s, until the next handshake (a ping across a line right after the lab
        started got no answer)."""
        for i, node in enumerate(self.nodes):
            for peer in self.nodes[i + 1 :]:
                deadline = time.monotonic() + timeout
                while ping(node.netns, str(peer.wg_addr), count=1, wait=1) != 1:
                    if time.monotonic() > deadline:
                        raise NodeLabError(f"node {node.index} cannot reach node {peer.index} over WireGuard")

    def _vxlan(self, node: Node) -> None:
        """External (metadata) mode: no VNI or remote of its own; whoever sends through it says
        both per packet (the tunnel programs; a route's `encap ip` in test_nodelab.py)."""
        ns = node.netns.name
        _run(
            ["ip", "-n", ns, "link", "add", VXLAN_IF, "type", "vxlan", "external", "dstport", str(VXLAN_PORT)]
        )
        _run(["ip", "-n", ns, "link", "set", VXLAN_IF, "mtu", str(VXLAN_MTU), "up"])

    def _firewall(self, node: Node) -> None:
        """WireGuard's port answers only on the underlay; VXLAN is taken only from inside WireGuard
        (the kernel's VXLAN socket listens on every address: a frame sent in clear over the
        underlay would otherwise be taken as if it had come through the tunnel)."""
        rules = f"""
        table inet {NFT_TABLE} {{
            chain input {{
                type filter hook input priority filter; policy accept;
                udp dport {WG_PORT} iifname != "{UNDERLAY_IF}" counter drop comment "wireguard-off-underlay"
                udp dport {VXLAN_PORT} iifname != "{node.wg_if}" counter drop comment "vxlan-off-wireguard"
            }}
        }}
        """
        _run(["ip", "netns", "exec", node.netns.name, "nft", "-f", "-"], input=rules)

    # --- tearing down ---

    def close(self) -> None:
        for node in self.nodes:
            proc = node.wireguard
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # its own session: ip netns exec execs it
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
                # wireguard-go removes its socket on SIGTERM; not after SIGKILL or a crash.
                with contextlib.suppress(FileNotFoundError):
                    node.wg_socket.unlink()
            self._stop_agents_wireguard_go(node)
            node.netns.delete()  # a kernel WireGuard device (and its socket) goes with it
        self.hub.delete()
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _stop_agents_wireguard_go(node: Node) -> None:
        """A wireguard-go a node agent started for the node's device (it outlives the agent, by
        design): found by its control socket, stopped, its socket removed."""
        from cni_yogurt.agent.devices import wireguard_go_pid

        pid = wireguard_go_pid(node.wg_if)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            node.wg_socket.unlink()

    def leftovers(self) -> list[str]:
        """What of this lab still exists: netns (and so any kernel WireGuard device), wireguard-go's
        control sockets and live processes, files."""
        left = [str(p) for p in Path("/run/netns").glob(f"{self.name}-*")]
        left += [str(n.wg_socket) for n in self.nodes if n.wg_socket.exists()]
        left += [f"pid {n.wireguard.pid}" for n in self.nodes if n.wireguard and n.wireguard.poll() is None]
        left += [str(self.dir)] if self.dir.exists() else []
        return left

    def __enter__(self) -> NodeLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- crafted frames: what an injector on the underlay sends (`yogurt demo --nodes 2`, the tests) ----


def ipv4_udp(src: str, dst: str, port: int, payload: bytes) -> bytes:
    """An IPv4 + UDP packet from src to dst:port (source port 5555), header checksummed."""
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
