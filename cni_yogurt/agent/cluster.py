"""The node agent's hold on the cluster store: the node's registration, the claims of its ends, and
the reconciler that keeps the node's maps and WireGuard peers equal to what etcd says.

- At start the node publishes itself (cluster/nodes.py) under its lease, kept alive from a thread:
  its underlay address (configured), and its WireGuard public key, port and address, read from the
  WireGuard device (the private key is never read).  An agent restarted within the lease's TTL finds
  its own record (same public key) and adopts that lease: its ends' claims never lapse.  A record of
  the same name with another key and a live lease is another node: the agent refuses to start.
- The verbs of a network with `"cluster": true` reach the store through it (plugin.py): `claim`
  reserves the end cluster-wide before anything is built, `ready` moves it under the node's lease
  once it is, `abandon` undoes a failed ADD, `release` is DEL's (and frees the line's tunnel id with
  its last end).
- A watch mirrors the prefix (cluster/watch.py); every change, every re-list and a periodic tick
  wake one reconciling thread, which compares the whole view with the node, idempotently: peers
  from the nodes registered; for each end of this node whose partner is ready on another node, the
  line's tunnel id (allocated on first need) and that node's WireGuard address, wired through
  line/remote.py; whatever is wired that etcd no longer says is cut (the partner's DEL, its node's
  lease gone).  Claims of this node whose end is not on the node any more are released.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster import lease as leases
from cni_yogurt.cluster import nodes, vni
from cni_yogurt.cluster.claims import Claim, LineClaims
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.config import ClusterConfig
from cni_yogurt.cluster.errors import StoreError
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.watch import Snapshot, Watcher
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.datapath import Pins
from cni_yogurt.line.registry import End, Registry

CLAIM_TTL = 30  # an ADD's own lease: a claim of an ADD killed half-way ages out after this
NODE_TTL = 10  # the node's: its ends fail closed at their partners this long after it dies
TICK = 5.0  # the reconciler runs at least this often (a failed step is retried)
STATUS_TIMEOUT = 3.0
RELEASE_TIMEOUT = 3.0  # DEL does not wait longer for the store: the reconciler releases later
WG_TIMEOUT = 10.0
# VXLAN over IPv4, what a line across nodes gives up of WireGuard's MTU: outer IP 20 + UDP 8 +
# VXLAN 8 + the inner Ethernet header 14 (line_mtu).
TUNNEL_OVERHEAD = 50


class ClusterStartError(Exception):
    """The agent cannot take part in the cluster: the configuration or the node is wrong."""


# -- the view: what etcd says, parsed (pure) ----------------------------------------------------


@dataclass
class View:
    nodes: dict[str, nodes.NodeInfo] = field(default_factory=dict)
    ends: dict[str, list[Claim]] = field(default_factory=dict)  # by line
    vnis: dict[str, int] = field(default_factory=dict)  # by line


def parse_view(keys: Keys, snap: Snapshot) -> View:
    """The mirror's keys as nodes, claims by line and tunnel ids; what does not parse is left out."""
    view = View()
    node_head, lines_head = keys.nodes(), keys.lines()
    for key, kv in sorted(snap.items()):
        try:
            if key.startswith(node_head):
                info = nodes.NodeInfo.decode(kv.value)
                view.nodes[info.name] = info
            elif key.startswith(lines_head):
                line = keys.line_of(key)
                if line is None:
                    continue
                if key == keys.line_vni(line):
                    view.vnis[line] = int(kv.value)
                elif key.startswith(keys.line_ends(line)):
                    view.ends.setdefault(line, []).append(Claim.decode(kv))
        except (ValueError, TypeError):
            continue
    return view


@dataclass
class Plan:
    wire: dict[int, tuple[str, str]]  # host-side ifindex -> (line, partner's node)
    orphans: list[Claim]  # this node's ready claims whose end is not on the node
    peers: dict[str, nodes.NodeInfo]  # every other node


def plan(view: View, me: str, local: dict[str, End]) -> Plan:
    """What the node should look like, given what etcd says and the ends the node has."""
    wire: dict[int, tuple[str, str]] = {}
    orphans: list[Claim] = []
    for line, claims in view.ends.items():
        for c in claims:
            if c.node != me or not c.ready:
                continue
            end = local.get(c.end_key)
            if end is None or end.line != line:
                orphans.append(c)
                continue
            if not end.ready or end.leaving or not end.host_ifindex:
                continue  # DEL is taking it down
            partner = next(
                (o for o in claims if o.node != me and o.ready and o.node in view.nodes),
                None,
            )
            if partner is not None and view.nodes[partner.node].wg_address:
                wire[end.host_ifindex] = (line, partner.node)
    peers = {name: info for name, info in view.nodes.items() if name != me}
    return Plan(wire, orphans, peers)


# -- WireGuard ----------------------------------------------------------------------------------


def _wg(*argv: str) -> str:
    proc = subprocess.run(
        ["wg", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=WG_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode:
        raise OSError(f"wg {' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def wg_peers(dev: str) -> dict[str, tuple[str, str]]:
    """The device's peers: public key -> (endpoint, allowed ips), as `wg show dump` says."""
    out: dict[str, tuple[str, str]] = {}
    for line in _wg("show", dev, "dump").splitlines()[1:]:  # the first line is the device itself
        fields = line.split("\t")
        if len(fields) >= 4:
            out[fields[0]] = (fields[2], fields[3])
    return out


def wanted_peers(others: dict[str, nodes.NodeInfo]) -> dict[str, tuple[str, str]]:
    return {
        info.wg_public_key: (info.tunnel_endpoint, f"{info.wg_address}/32")
        for info in others.values()
        if info.wg_address
    }


def sync_peers(dev: str, want: dict[str, tuple[str, str]]) -> list[str]:
    """Make the device's peers `want`; what changed."""
    have = wg_peers(dev)
    changed = []
    for key in sorted(set(have) - set(want)):
        _wg("set", dev, "peer", key, "remove")
        changed.append(f"-{key}")
    for key, (endpoint, allowed) in sorted(want.items()):
        if have.get(key) != (endpoint, allowed):
            _wg("set", dev, "peer", key, "endpoint", endpoint, "allowed-ips", allowed)
            changed.append(f"+{key}")
    return changed


def read_wireguard(dev: str) -> tuple[str, int, str]:
    """The device's public key, port and IPv4 address; ClusterStartError naming what is wrong."""
    from cni_yogurt.kernel.netlink import Rtnl

    try:
        public_key = _wg("show", dev, "public-key").strip()
        port = int(_wg("show", dev, "listen-port").strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        raise ClusterStartError(f"wireguardDevice {dev!r} is not a WireGuard device here: {e}") from None
    if not public_key or public_key == "(none)" or not port:
        raise ClusterStartError(f"wireguardDevice {dev!r} has no private key or no listen port set")
    with Rtnl() as rtnl:
        link = rtnl.link(dev)
        found = [a for a in rtnl.addresses(link["index"]) if a.version == 4] if link is not None else []
    if not found:
        raise ClusterStartError(f"wireguardDevice {dev!r} has no IPv4 address")
    return public_key, port, str(found[0].ip)


# -- the node -----------------------------------------------------------------------------------


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, state_dir: str, bpffs_dir: str, log: Any) -> None:
        self.cfg, self.state_dir, self.log = cfg, state_dir, log
        self.pins = Pins.under(bpffs_dir)
        self.client = Client.from_config(cfg)
        self.keys = Keys(cfg.prefix)
        self.me = cfg.node
        self.claims = LineClaims(self.client, self.keys, self.me)
        self.info: nodes.NodeInfo | None = None
        self.lease: leases.Lease | None = None
        self.keepalive: leases.KeepAlive | None = None
        self.watcher: Watcher | None = None
        self.tunnel_ifindex = 0
        self.reconciles = 0
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lease_lost = threading.Event()
        self._lock = threading.Lock()  # one reconcile at a time
        # The ends this node holds a ready claim for, as it last knew them: what it claims again
        # if its lease runs out while it lives.  Kept apart from the mirror, which loses them then.
        self._held: dict[tuple[str, str], Claim] = {}
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> ClusterNode:
        from cni_yogurt.cluster.probe import probe

        found = probe(self.cfg, expect_node=False, timeout=min(self.cfg.timeout, 5.0))
        if not found.ok:
            raise ClusterStartError("cluster store not usable: " + "; ".join(found.problems))
        public_key, port, wg_address = read_wireguard(self.cfg.wireguard_device)
        self.info = nodes.NodeInfo(
            self.me, self.cfg.address, public_key, port, f"{self.cfg.address}:{port}", wg_address
        )
        self._guard_tunnel_port()
        self.tunnel_ifindex = self._attach_tunnel()
        try:
            self.lease = self._register(self.info)
        except StoreError as e:
            raise ClusterStartError(f"cannot register node {self.me!r}: {e.msg}: {e.details}") from None
        self.keepalive = leases.KeepAlive(self.client, self.lease, on_lost=self._on_lease_lost).start()
        self.watcher = Watcher(
            self.client,
            self.keys.all(),
            on_reset=lambda *_: self._wake.set(),
            on_event=lambda _: self._wake.set(),
        ).start()
        self._thread.start()
        return self

    def _guard_tunnel_port(self) -> None:
        """The tunnel's UDP port open to WireGuard alone (agent/firewall.py), before any line
        is wired through it."""
        from cni_yogurt.agent import firewall

        try:
            firewall.install(firewall.tunnel_device(self.cfg.tunnel_device), self.cfg.wireguard_device)
        except firewall.FirewallError as e:
            raise ClusterStartError(f"cannot guard the tunnel's port: {e}") from None

    def _attach_tunnel(self) -> int:
        from cni_yogurt.kernel.netlink import Rtnl
        from cni_yogurt.line import remote

        dev = self.cfg.tunnel_device
        with Rtnl() as rtnl:
            if rtnl.link(dev) is None:
                raise ClusterStartError(f"tunnelDevice {dev!r} does not exist on this node")
        try:
            return remote.attach_tunnel(self.pins, dev)
        except OSError as e:
            raise ClusterStartError(f"cannot attach the tunnel program to {dev!r}: {e}") from None

    def _register(self, info: nodes.NodeInfo) -> leases.Lease:
        """Publish the node; adopt the lease of its own earlier life if that is still alive."""
        kv = self.client.get(self.keys.node(self.me))
        if kv is not None and kv.lease:
            try:
                old = nodes.NodeInfo.decode(kv.value)
            except (ValueError, TypeError):
                old = None
            if old is not None and old.wg_public_key != info.wg_public_key:
                raise ClusterStartError(
                    f"node name {self.me!r} is held by another live node (address {old.address}, "
                    f"WireGuard key {old.wg_public_key[:8]}...): check `node` in the cluster file"
                )
            if old is not None:
                mine = leases.Lease(kv.lease, NODE_TTL)
                try:
                    leases.keep_alive_once(self.client, mine)
                    nodes.register(self.client, self.keys, info, mine)
                    self.log.info(
                        "cluster: node lease adopted from the agent's earlier life", lease=f"{kv.lease:x}"
                    )
                    return mine
                except leases.LeaseLost:
                    pass
        fresh = leases.grant(self.client, NODE_TTL)
        nodes.register(self.client, self.keys, info, fresh)
        return fresh

    def _on_lease_lost(self) -> None:
        self._lease_lost.set()
        self._wake.set()

    def _renew(self) -> None:
        """The node's lease expired (the store was out of reach longer than its TTL): its record and
        its ends' claims are gone.  Register again, then claim again the ends the node still has."""
        assert self.info is not None
        local = Registry(self.state_dir).snapshot()
        self.lease = leases.grant(self.client, NODE_TTL)
        nodes.register(self.client, self.keys, self.info, self.lease)
        if self.keepalive is not None:
            self.keepalive.stop()
        self.keepalive = leases.KeepAlive(self.client, self.lease, on_lost=self._on_lease_lost).start()
        self._lease_lost.clear()
        again = 0
        for (line, end_key), c in sorted(self._held.items()):
            end = local.get(end_key)
            if end is None or end.line != line or not end.ready or end.leaving:
                self._held.pop((line, end_key), None)
                continue
            try:
                self.claims.ready(self.claims.claim(line, end_key, self.lease, c.network), self.lease)
                again += 1
            except CNIError as e:
                self.log.error("cluster: end not claimed again", line=line, end=end_key, error=e.msg)
        self.log.warning("cluster: node lease renewed", lease=f"{self.lease.id:x}", ends=again)

    def stop(self) -> None:
        """Stop following the store; the lease is left to run out (a restart adopts it)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.client.timeout + 2)
        if self.watcher is not None:
            self.watcher.stop()
        if self.keepalive is not None:
            self.keepalive.stop()

    # -- the verbs' side ---------------------------------------------------------------------

    def claim(self, line: str, end_key: str, network: str) -> Claim:
        """Reserve the end cluster-wide under an ADD's own lease: 100 if the line is full, 11 if
        the store does not answer in time (the whole claim within one deadline)."""
        with self.client.deadline():
            lease = leases.grant(self.client, CLAIM_TTL)
            try:
                return self.claims.claim(line, end_key, lease, network)
            except BaseException:
                self._revoke(lease.id)
                raise

    def ready(self, claim: Claim) -> Claim:
        """The end is built: from now on it lives with the node's lease."""
        assert self.lease is not None
        done = self.claims.ready(claim, self.lease)
        self._held[(claim.line, claim.end_key)] = done
        self._revoke(claim.lease)
        self._wake.set()
        return done

    def abandon(self, claim: Claim) -> None:
        """ADD's rollback: remove the claim if it is still this one (it ages out otherwise)."""
        key = self.keys.line_end(claim.line, claim.end_key)
        try:
            self.client.txn([gw.compare(key, "CREATE", "EQUAL", claim.revision)], [gw.op_delete(key)])
        except StoreError as e:
            self.log.warning("cluster: claim left to age out", line=claim.line, error=e.msg)
        if self.lease is None or claim.lease != self.lease.id:  # never the node's own
            self._revoke(claim.lease)

    def release(self, end_key: str, line: str | None) -> None:
        """DEL's: the end's claims go, and the line's tunnel id with its last end.  A store out of
        reach does not fail the DEL: the reconciler releases claims with no end later."""
        lines = {line} if line else set()
        lines |= {c.line for c in self._mine() if c.end_key == end_key}
        lines |= {held_line for held_line, key in self._held if key == end_key}
        for name in sorted(lines):
            self._held.pop((name, end_key), None)
            try:
                with self.client.deadline(RELEASE_TIMEOUT):
                    self.claims.release(name, end_key)
                    vni.release_if_unused(self.client, self.keys, name)
            except StoreError as e:
                self.log.warning("cluster: claim released later", line=name, end=end_key, error=e.msg)
        self._wake.set()

    def cut(self, host_ifindex: int) -> None:
        if self.tunnel_ifindex and host_ifindex:
            from cni_yogurt.line import remote

            remote.cut_remote(self.pins, host_ifindex)

    def line_mtu(self) -> int:
        """The largest packet a line across nodes carries from this node: it leaves in the tunnel
        (VXLAN over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 bytes), which goes
        inside WireGuard, whose device MTU already leaves room for WireGuard's own header.  Read
        at every ADD, so an operator's change to either device counts from the next one."""
        from cni_yogurt.kernel.netlink import Rtnl

        with Rtnl() as rtnl:
            tunnel = rtnl.link(self.cfg.tunnel_device)
            wireguard = rtnl.link(self.cfg.wireguard_device)
        if tunnel is None or wireguard is None:
            gone = self.cfg.tunnel_device if tunnel is None else self.cfg.wireguard_device
            raise CNIError(
                Code.TRY_AGAIN_LATER, f"device {gone} of the cluster's wire is gone from this node"
            )
        return min(int(tunnel.get_attr("IFLA_MTU")), int(wireguard.get_attr("IFLA_MTU")) - TUNNEL_OVERHEAD)

    def status_error(self) -> CNIError | None:
        """STATUS's answer for a cluster network: None if the node can use the store."""
        if self._lease_lost.is_set():
            return CNIError(Code.NOT_AVAILABLE, "cluster: the node's lease expired", "re-registering")
        try:
            with self.client.deadline(STATUS_TIMEOUT):
                kv = self.client.get(self.keys.node(self.me))
        except StoreError as e:
            return CNIError(Code.NOT_AVAILABLE, "cluster store not reachable", f"{e.msg}: {e.details}")
        if kv is None:
            return CNIError(Code.NOT_AVAILABLE, f"cluster: node {self.me!r} is not registered")
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.me,
            "lease": f"{self.lease.id:x}" if self.lease else "",
            "tunnel": self.cfg.tunnel_device if self.tunnel_ifindex else "",
            "reconciles": self.reconciles,
            "relists": self.watcher.relists if self.watcher is not None else 0,
            "resumes": self.watcher.resumes if self.watcher is not None else 0,
            "revision": self.watcher.revision if self.watcher is not None else 0,
            "watch_error": self.watcher.last_error if self.watcher is not None else "",
            "last_error": self.last_error,
        }

    # -- the reconciler ------------------------------------------------------------------------

    def _mine(self) -> list[Claim]:
        if self.watcher is None:
            return []
        view = parse_view(self.keys, self.watcher.snapshot())
        return [c for claims in view.ends.values() for c in claims if c.node == self.me]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._lease_lost.is_set():
                    self._renew()
                self.reconcile()
                self.last_error = ""
            except Exception as e:  # noqa: BLE001  (one failed pass must not stop the reconciler)
                self.last_error = f"{type(e).__name__}: {e}"
                self.log.error("cluster: reconcile failed", error=self.last_error)

    def reconcile(self) -> None:
        """Bring the node to what the mirror says (idempotent: the whole view every time)."""
        if self.watcher is None or not self.watcher.wait_synced(0):
            return
        with self._lock:
            self.reconciles += 1
            view = parse_view(self.keys, self.watcher.snapshot())
            local = Registry(self.state_dir).snapshot()
            todo = plan(view, self.me, local)
            for line, claims in view.ends.items():
                for c in claims:
                    if c.node == self.me and c.ready and c.end_key in local:
                        self._held[(line, c.end_key)] = c
            self._cut_stale(todo)  # first: failing closed must not wait for wg(8) or the store
            changed = sync_peers(self.cfg.wireguard_device, wanted_peers(todo.peers))
            if changed:
                self.log.info("cluster: WireGuard peers set", changes=changed)
            for c in todo.orphans:
                self.log.warning(
                    "cluster: releasing a claim with no end on this node", line=c.line, end=c.end_key
                )
                self._release_orphan(c)
            self._wire(view, todo)

    def _cut_stale(self, todo: Plan) -> None:
        """Cut every remote wiring the view no longer wants (the partner's DEL, its node gone)."""
        if not self.tunnel_ifindex:
            return
        from cni_yogurt.line import remote

        for index in sorted(set(remote.remote_partners(self.pins)) - set(todo.wire)):
            remote.cut_remote(self.pins, index)
            self.log.info("cluster: remote partner cut", host_ifindex=index)

    def _wire(self, view: View, todo: Plan) -> None:
        """The line's tunnel id for each end whose partner is on another node (allocated on first
        need), then the datapath: wired as planned, the rest cut."""
        want: dict[int, tuple[int, ipaddress.IPv4Address]] = {}
        for index, (line, node) in todo.wire.items():
            n = view.vnis.get(line)
            if n is None:
                try:
                    n = vni.allocate(self.client, self.keys, line)
                except CNIError as e:
                    self.log.warning("cluster: no tunnel id yet", line=line, error=e.msg)
                    continue
            want[index] = (n, ipaddress.IPv4Address(view.nodes[node].wg_address))
        if not self.tunnel_ifindex:
            return
        from cni_yogurt.line import remote

        wanted = {index: remote.RemotePartner(n, address) for index, (n, address) in want.items()}
        have = remote.remote_partners(self.pins)
        for index in sorted(set(have) - set(wanted)):
            remote.cut_remote(self.pins, index)
            self.log.info("cluster: remote partner cut", host_ifindex=index)
        for index, partner in wanted.items():
            if have.get(index) != partner:
                remote.wire_remote(self.pins, index, partner, self.tunnel_ifindex)
                self.log.info(
                    "cluster: remote partner wired",
                    host_ifindex=index,
                    vni=partner.vni,
                    node=str(partner.node_address),
                )

    def _release_orphan(self, c: Claim) -> None:
        self._held.pop((c.line, c.end_key), None)
        try:
            self.claims.release(c.line, c.end_key)
            vni.release_if_unused(self.client, self.keys, c.line)
        except StoreError as e:
            self.log.warning("cluster: claim released later", line=c.line, error=e.msg)

    def _revoke(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            leases.revoke(self.client, leases.Lease(lease_id, 0))
        except StoreError as e:
            self.log.warning("cluster: lease left to run out", lease=f"{lease_id:x}", error=e.msg)
