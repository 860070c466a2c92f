"""The node agent's hold on the cluster store: the node's registration, the claims of its ends, and
the reconciler that keeps the node's maps and WireGuard peers equal to what etcd says.

- At start the agent makes or adopts the node's WireGuard and tunnel devices (agent/devices.py: the
  key made once and kept in dataDir, the address configured or allocated from the cluster's range),
  then publishes the node (cluster/nodes.py) under its lease, kept alive from a thread: its underlay
  address, and its WireGuard public key, port and address (the private key never leaves the node).
  An agent restarted within the lease's TTL finds its own record (same public key) and adopts that
  lease.  A record of the same name with another key and a live lease is another node: the agent
  refuses to start.
- The verbs of a network with `"cluster": true` reach the store through it (plugin.py): `claim`
  reserves the end cluster-wide before anything is built, `ready` moves it under the node's lease
  once it is, `abandon` undoes a failed ADD, `release` is DEL's (and frees the line's tunnel id with
  its last end).
- A watch mirrors the prefix (cluster/watch.py); every change, every re-list and a periodic tick
  wake one reconciling thread, which compares the whole view with the node (agent/plan.py, pure;
  agent/peers.py), idempotently: peers
  from the nodes registered; for each end of this node whose partner is ready on another node, the
  line's tunnel id (allocated on first need) and that node's WireGuard address, wired through
  line/remote.py; whatever is wired that etcd no longer says is cut (the partner's DEL, its node's
  lease gone).  Claims of this node whose end is not on the node any more are released.
- The node's own registry (line/registry.py) is the truth about which ends live on the node, not
  the agent's memory: at every start, fresh lease or adopted, and after every lost lease, the agent
  claims again every ready end of a cluster network it finds there (`claim_local_ends`: kept if its
  claim is there, made again under the node's lease if absent), and the reconciler cuts or releases
  nothing until that is done and the watch has read the store's whole view once.  An agent away
  longer than the node's lease (a rolling update, a crash loop, a reboot of the agent alone) thus
  brings its lines back by itself.  Only an end whose line two other ends took meanwhile stays
  closed: it is "lost" (status, metrics and the log name the holders) until its DEL.
- Mixed releases (cluster/compat.py): the agent publishes its release beside the node's record;
  an end whose partner's node speaks another cluster protocol is never wired to it, an ADD that
  would make such a line fails (code 106), and status, metrics and the log name the node.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import asdict, dataclass
from typing import Any

from cni_yogurt.agent import devices
from cni_yogurt.agent.peers import sync_peers, wanted_peers
from cni_yogurt.agent.plan import Plan, View, parse_view, plan
from cni_yogurt.cluster import compat, nodes, vni, wgaddress
from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster import lease as leases
from cni_yogurt.cluster.claims import Claim, LineClaims
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.config import ClusterConfig
from cni_yogurt.cluster.errors import StoreError
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.watch import Watcher
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.datapath import Pins
from cni_yogurt.line.registry import End, Registry

CLAIM_TTL = 30  # an ADD's own lease: a claim of an ADD killed half-way ages out after this
TICK = 5.0  # the reconciler runs at least this often (a failed step is retried)
STATUS_TIMEOUT = 3.0
RELEASE_TIMEOUT = 3.0  # DEL does not wait longer for the store: the reconciler releases later


class ClusterStartError(Exception):
    """The agent cannot take part in the cluster: the configuration or the node is wrong."""


@dataclass(frozen=True)
class LostEnd:
    """An end on the node whose line two other ends took while the node's claims were gone."""

    end_key: str
    line: str
    holders: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {"end": self.end_key, "line": self.line, "holders": list(self.holders)}


# -- the node -----------------------------------------------------------------------------------


def this_release() -> compat.NodeRelease:
    """What this node publishes of its release (cluster/compat.py)."""
    from cni_yogurt import release
    from cni_yogurt.datapath import ABI

    return compat.NodeRelease(release.VERSION, ABI, compat.PROTOCOL, release.commit())


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, state_dir: str, bpffs_dir: str, log: Any) -> None:
        self.cfg, self.state_dir, self.log = cfg, state_dir, log
        self.pins = Pins.under(bpffs_dir)
        self.client = Client.from_config(cfg)
        self.keys = Keys(cfg.prefix)
        self.me = cfg.node
        self.claims = LineClaims(self.client, self.keys, self.me)
        self.info: nodes.NodeInfo | None = None
        self.wire: devices.Wire | None = None
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
        # Set until the node's ends are claimed again (start, lost lease): the reconciler cuts and
        # releases nothing meanwhile.
        self._reclaim = threading.Event()
        self.lost: dict[str, LostEnd] = {}  # by end key
        self.own_release = this_release()
        # Nodes of another cluster protocol that partner ends of this node: (their release, lines).
        self.refused: dict[str, tuple[compat.NodeRelease, tuple[str, ...]]] = {}
        self._view = View()  # the last reconcile's
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> ClusterNode:
        from cni_yogurt.cluster.probe import probe

        found = probe(self.cfg, expect_node=False, timeout=min(self.cfg.timeout, 5.0))
        if not found.ok:
            raise ClusterStartError("cluster store not usable: " + "; ".join(found.problems))
        self.wire = self._ensure_devices()
        port, address = self.wire.port, self.cfg.address
        endpoint = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.info = nodes.NodeInfo(self.me, address, self.wire.public_key, port, endpoint, self.wire.address)
        self._guard_tunnel_port()
        self.tunnel_ifindex = self._attach_tunnel()
        try:
            self.lease = self._register(self.info)
        except StoreError as e:
            raise ClusterStartError(f"cannot register node {self.me!r}: {e.msg}: {e.details}") from None
        self._reclaim.set()
        self._claim_again()  # before the agent serves; retried by the reconciler if the store failed
        self.keepalive = leases.KeepAlive(self.client, self.lease, on_lost=self._on_lease_lost).start()
        self.watcher = Watcher(
            self.client,
            self.keys.all(),
            on_reset=lambda *_: self._wake.set(),
            on_event=lambda _: self._wake.set(),
        ).start()
        self._thread.start()
        return self

    def _ensure_devices(self) -> devices.Wire:
        """The node's WireGuard and tunnel devices, made or adopted (agent/devices.py), with the
        node's WireGuard address: configured, or allocated from the cluster's range (kept across
        restarts: the store's allocation has no lease, and the node remembers it)."""
        address = self.cfg.wireguard_address
        try:
            if self.cfg.wireguard_range:
                net = ipaddress.IPv4Network(self.cfg.wireguard_range)
                ip = wgaddress.allocate(
                    self.client, self.keys, self.me, str(net), devices.remembered_address(self.cfg)
                )
                devices.remember_address(self.cfg, ip)
                address = f"{ip}/{net.prefixlen}"
            wire = devices.ensure(self.cfg, address)
        except (devices.DeviceError, OSError) as e:
            raise ClusterStartError(str(e)) from None
        except (CNIError, StoreError) as e:
            raise ClusterStartError(f"no WireGuard address for node {self.me!r}: {e.msg}") from None
        if wire.made:
            self.log.info("cluster: devices made", made=wire.made)
        self.log.info(
            "cluster: wire ready",
            wireguard=self.cfg.wireguard_device,
            port=wire.port,
            address=wire.address,
            wireguard_mtu=wire.wireguard_mtu,
            tunnel=self.cfg.tunnel_device,
            tunnel_mtu=wire.tunnel_mtu,
        )
        return wire

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
                mine = leases.Lease(kv.lease, self.cfg.lease_seconds)
                try:
                    leases.keep_alive_once(self.client, mine)
                    self._publish(info, mine)
                    self.log.info(
                        "cluster: node lease adopted from the agent's earlier life", lease=f"{kv.lease:x}"
                    )
                    return mine
                except leases.LeaseLost:
                    pass
        fresh = leases.grant(self.client, self.cfg.lease_seconds)
        self._publish(info, fresh)
        return fresh

    def _publish(self, info: nodes.NodeInfo, lease: leases.Lease) -> None:
        """The node's record and its release's, both under the node's lease."""
        nodes.register(self.client, self.keys, info, lease)
        self.client.put(self.keys.release(self.me), self.own_release.encode(), lease.id)

    def _on_lease_lost(self) -> None:
        self._lease_lost.set()
        self._wake.set()

    def _renew(self) -> None:
        """The node's lease expired (the store was out of reach longer than its TTL): its record and
        its ends' claims are gone.  Register again; the ends are claimed again before any reconcile."""
        assert self.info is not None
        self._reclaim.set()
        self.lease = leases.grant(self.client, self.cfg.lease_seconds)
        self._publish(self.info, self.lease)
        if self.keepalive is not None:
            self.keepalive.stop()
        self.keepalive = leases.KeepAlive(self.client, self.lease, on_lost=self._on_lease_lost).start()
        self._lease_lost.clear()
        self.log.warning("cluster: node lease renewed", lease=f"{self.lease.id:x}")

    def _claim_again(self) -> bool:
        """Claim again, under the node's lease, every ready end of a cluster network in the node's
        registry (and every end the store says is this node's: ends recorded before registries said
        "cluster").  True once done; False if the store failed (the reconciler tries again)."""
        try:
            self.claim_local_ends()
        except (StoreError, CNIError) as e:
            self.last_error = f"claiming the node's ends again: {getattr(e, 'msg', e)}"
            self.log.error("cluster: ends not claimed again yet", error=self.last_error)
            return False
        self._reclaim.clear()
        return True

    def claim_local_ends(self) -> dict[str, int]:
        """One pass of it: how many ends were kept, made again and lost."""
        assert self.lease is not None
        local = Registry(self.state_dir).snapshot()
        by_line = self.claims.by_line()
        theirs = {c.end_key for claims in by_line.values() for c in claims if c.node == self.me}
        counts = {"kept": 0, "made": 0, "lost": 0}
        for key, end in sorted(local.items()):
            if not end.ready or end.leaving or not (end.cluster or key in theirs):
                continue
            got = self.claims.reclaim(
                Claim(end.line, key, self.me, end.network), self.lease, by_line.get(end.line)
            )
            counts[got.outcome] += 1
            if got.outcome == "lost":
                holders = tuple(c.holder() for c in got.holders)
                self.lost[key] = LostEnd(key, end.line, holders)
                self.cut(end.host_ifindex)  # stays closed: its line is someone else's now
                self.log.error(
                    "cluster: end lost, its line is held by two other ends",
                    end=key,
                    line=end.line,
                    holders=holders,
                )
            else:
                self.lost.pop(key, None)
        self.log.info("cluster: the node's ends claimed again", lease=f"{self.lease.id:x}", **counts)
        self._wake.set()
        return counts

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
                claim = self.claims.claim(line, end_key, lease, network)
            except BaseException:
                self._revoke(lease.id)
                raise
        try:
            self._refuse_partner_of_other_protocol(claim)
        except CNIError:
            self.abandon(claim)
            raise
        return claim

    def _refuse_partner_of_other_protocol(self, claim: Claim) -> None:
        """Code 106 if the line's other end is on a node whose release cannot carry the line with
        this one's (as the mirror says: a partner that comes later is refused by the reconciler)."""
        if self.watcher is None:
            return
        wanted = (self.keys.line_ends(claim.line), self.keys.releases())  # not the whole cluster's
        view = parse_view(
            self.keys, {k: kv for k, kv in self.watcher.snapshot().items() if k.startswith(wanted)}
        )
        for other in view.ends.get(claim.line, []):
            theirs = compat.of(view.releases, other.node)
            if other.node != self.me and not theirs.compatible:
                raise CNIError(
                    Code.INCOMPATIBLE_RELEASE,
                    f"line {claim.line!r}: its other end is on node {other.node}, whose release "
                    "cannot carry a line with this node's",
                    compat.refusal(other.node, theirs, self.own_release),
                )

    def ready(self, claim: Claim) -> Claim:
        """The end is built: from now on it lives with the node's lease."""
        assert self.lease is not None
        done = self.claims.ready(claim, self.lease)
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
        self.lost.pop(end_key, None)
        for name in sorted(lines):
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
        return min(
            int(tunnel.get_attr("IFLA_MTU")), int(wireguard.get_attr("IFLA_MTU")) - devices.TUNNEL_OVERHEAD
        )

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
            "lease_seconds": self.cfg.lease_seconds,
            "lost": [lost.describe() for lost in self.lost.values()],
            "release": self._describe_release(self.me, self.own_release),
            "nodes": [
                self._describe_release(node, compat.of(self._view.releases, node))
                for node in sorted(self._view.nodes)
                if node != self.me
            ],
            "refused": [
                {"node": node, "lines": list(lines), "why": compat.refusal(node, theirs, self.own_release)}
                for node, (theirs, lines) in sorted(self.refused.items())
            ],
        }

    @staticmethod
    def _describe_release(node: str, r: compat.NodeRelease) -> dict[str, Any]:
        return {"node": node, **asdict(r), "compatible": r.compatible}

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
                if self._reclaim.is_set() and not self._claim_again():
                    continue
                self.reconcile()
                self.last_error = ""
            except Exception as e:  # noqa: BLE001  (one failed pass must not stop the reconciler)
                self.last_error = f"{type(e).__name__}: {e}"
                self.log.error("cluster: reconcile failed", error=self.last_error)

    def reconcile(self) -> None:
        """Bring the node to what the mirror says (idempotent: the whole view every time).  Not
        before the node's ends are claimed again and the watch has read the whole view once."""
        if self._reclaim.is_set() or self.watcher is None or not self.watcher.wait_synced(0):
            return
        with self._lock:
            self.reconciles += 1
            view = parse_view(self.keys, self.watcher.snapshot())
            registry = Registry(self.state_dir)
            local = registry.snapshot()
            if self._follow_link_state(view, registry, local):
                local = registry.snapshot()  # ends went down or up: plan from what they are now
            todo = plan(view, self.me, local)
            self._view = view
            self._note_refused(view, todo.refused)
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

    def _follow_link_state(self, view: View, registry: Registry, local: dict[str, End]) -> bool:
        """Lines set down across nodes (line/linkstate.py): publish in its claim the state of each
        end of this node set down for its whole line, and follow the far ends that are: an end
        whose partner on another node is down for the line goes down too ("partner"), and comes
        up again when that one does (or goes).  True if an end of the node changed."""
        from cni_yogurt.line import linkstate

        assert self.lease is not None
        follow: dict[str, list[str]] = {"partner": [], "": []}
        for line, claims in view.ends.items():
            for c in claims:
                end = local.get(c.end_key) if c.node == self.me and c.ready else None
                if end is None or end.line != line or not end.ready or end.leaving:
                    continue
                if c.down != (end.down == "line"):
                    self.claims.set_down(c, end.down == "line", self.lease)
                far = next((o for o in claims if o.node != self.me and o.ready), None)
                if far is not None and far.down and not end.down:
                    follow["partner"].append(end.key)
                elif not (far is not None and far.down) and end.down == "partner":
                    follow[""].append(end.key)
        for down, keys in follow.items():
            if keys:
                linkstate.apply(registry, self.pins, keys, down)
                self.log.info(
                    "cluster: ends follow their line's state on another node",
                    ends=keys,
                    state="down" if down else "up",
                )
        return any(follow.values())

    def wake(self) -> None:
        """Reconcile now (the admin CLI changed an end's link state)."""
        self._wake.set()

    def _note_refused(self, view: View, refused: dict[str, list[str]]) -> None:
        """Keep and log (once per change) the nodes whose lines this node does not carry."""
        now = {
            node: (compat.of(view.releases, node), tuple(sorted(lines))) for node, lines in refused.items()
        }
        for node, (theirs, lines) in now.items():
            if self.refused.get(node) != (theirs, lines):
                self.log.error(
                    "cluster: lines to a node of another cluster protocol stay closed",
                    node=node,
                    lines=list(lines),
                    why=compat.refusal(node, theirs, self.own_release),
                )
        self.refused = now

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
