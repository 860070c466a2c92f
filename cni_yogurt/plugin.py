"""The CNI verbs, one function each: add, delete, check, status, gc.

The protocol layer (cni/) has already validated env and config; these
functions touch the kernel, through the device backend (backend.py) the
config and the kernel choose.  ADD builds in this order and undoes in the
reverse on any failure, so a failed ADD leaves nothing behind:

    reserve a place on the line -> device pair (closed: netkit blackhole,
    veth down; peer created in CNI_NETNS as CNI_IFNAME) -> attach + pin both
    programs -> IPAM -> addresses, routes, lo up -> mark ready, wire the map

In the node agent, the pair and its attached programs may come from its pool
instead (agent/pool.py: made ahead, moved into CNI_NETNS); the rest is the
same.

The IPAM delegate is an exec that needs nothing of ours: it runs in a thread
of its own while the device is made and the programs attached (each attach
waits for an RCU grace period in the kernel), and DEL's runs while the
device is deleted; each verb waits for it before it answers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cni_yogurt import backend, datapath
from cni_yogurt.cni import attachment
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.ipam import IPAM, find_plugin
from cni_yogurt.cni.result import Interface, IPConfig, Result, parse_result
from cni_yogurt.cni.skel import Invocation
from cni_yogurt.datapath import PairMap, Pins
from cni_yogurt.faults import crash_point
from cni_yogurt.kernel.netlink import Rtnl, link_kind
from cni_yogurt.kernel.netns import open_netns
from cni_yogurt.line import moving, naming, recovery, sweep, wiring
from cni_yogurt.line.registry import End, Registry, attachment_key

if TYPE_CHECKING:
    from cni_yogurt.agent.cluster import ClusterNode
    from cni_yogurt.cluster.claims import Claim
    from cni_yogurt.cni.netconf import NetConf

ZERO_MAC = "00:00:00:00:00:00"  # L3 netkit has no MAC; podman still wants the field
T = TypeVar("T")


class DevicePool(Protocol):
    """Pairs made ahead, with their programs attached (agent/pool.py)."""

    def take_into(
        self,
        kind: backend.Backend,
        pins: Pins,
        host: Rtnl,
        host_ifname: str,
        netns_fd: int,
        ifname: str,
        mtu: int | None,
        mac: str | None,
    ) -> int | None: ...


# The node agent's pool; the exec'd plugin has none and makes every pair itself.
device_pool: DevicePool | None = None


def _in_background(work: Callable[[], T]) -> Callable[[], T]:
    """Start `work` in a thread; returns the call that waits for it and gives its result
    (or raises its exception).  Used for the IPAM exec, which touches no state of ours."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001  (handed to the waiter)
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def wait() -> T:
        thread.join()
        if "error" in box:
            raise box["error"]
        result: T = box["result"]
        return result

    return wait


# The node agent's hold on the cluster store (agent/cluster.py), set when it runs with --cluster.
# None in an exec'd plugin: a network with "cluster": true then cannot ADD (code 11).
cluster_node: ClusterNode | None = None


def _cluster(inv: Invocation) -> ClusterNode | None:
    """The cluster side of this network's verbs: None for a node-local network; code 11 for a
    cluster network that no agent with a cluster configuration serves."""
    if not inv.conf.cluster:
        return None
    if cluster_node is None:
        raise CNIError(
            Code.TRY_AGAIN_LATER,
            f"network {inv.conf.name!r} spans nodes: start yogurt agent --cluster <file> on this node",
            f"its lines are claimed in etcd by the node agent; none with a cluster configuration "
            f"serves {inv.conf.state_dir}",
        )
    return cluster_node


def _pair_mtu(conf: NetConf, cluster: ClusterNode | None) -> int | None:
    """The pair's MTU: the config's, else the kernel's default; on a cluster network, what a line
    across nodes carries here (the tunnel inside WireGuard, ClusterNode.line_mtu) unless the
    config asks for less.  More is refused before anything exists: a redirect into the tunnel
    checks no size, so a larger packet would be lost on the way."""
    if cluster is None:
        return conf.mtu
    most = cluster.line_mtu()
    if conf.mtu is not None and conf.mtu > most:
        raise CNIError(
            Code.INVALID_CONFIG,
            f"invalid network config: mtu {conf.mtu} is more than a line across nodes carries here",
            f"at most {most} (the tunnel device's MTU, and WireGuard's less the tunnel's 50 bytes); "
            "leave mtu out to get it",
        )
    return conf.mtu if conf.mtu is not None else most


def _ipam(inv: Invocation) -> IPAM | None:
    return IPAM(inv.conf, inv.env, inv.environ, inv.stdin) if inv.conf.ipam else None


def _open_netns(path: str) -> int:
    try:
        return open_netns(path)
    except OSError as exc:
        raise CNIError(Code.INVALID_ENV, f"failed to open netns {path!r}", str(exc)) from exc


def _kernel_error(what: str, exc: OSError) -> CNIError:
    code = Code.TRY_AGAIN_LATER if exc.errno == errno.EBUSY else Code.KERNEL
    return CNIError(code, f"{what}: {exc.strerror or exc}", f"errno {exc.errno}")


def _node(inv: Invocation) -> tuple[Pins, Registry]:
    """The pins and the line registry of this config; a damaged registry heals from the kernel."""
    pins = Pins.under(inv.conf.bpffs_dir)
    registry = Registry(
        inv.conf.state_dir,
        recover=lambda: recovery.rebuild(pins, inv.conf.state_dir),
        on_heal=lambda what: inv.log.error("line registry healed", detail=what),
    )
    return pins, registry


def _no_ipv6_on_host_side(host_ifname: str) -> None:
    """The host has nothing to say on the wire: without IPv6 its stack sends no router
    solicitation, MLD or DAD into it (the guard would drop them, counted as "unmarked")."""
    path = f"/proc/sys/net/ipv6/conf/{host_ifname}/disable_ipv6"
    with contextlib.suppress(FileNotFoundError), open(path, "w", encoding="ascii") as f:  # no IPv6 at all
        f.write("1")


def _ensure_programs(pins: Pins, registry: Registry, inv: Invocation) -> None:
    """Load the programs unless they are pinned, and move live ends onto them: ends of an
    older release (upgrade in place), or ends whose programs were lost with their pins
    (removed, bpffs unmounted) when this call had to load them again."""
    try:
        lost = datapath.ensure_loaded(pins, inv.conf.state_dir)
        if moving.needed(registry, pins, lost):
            moved = moving.move(registry, pins, inv.log, lost)
            if moved:
                inv.log.warning("live ends moved onto this release's programs", ends=moved, pins=pins.root)
    except Exception as exc:
        raise CNIError(Code.DATAPATH, "cannot load the yogurt BPF programs", str(exc)) from exc


def _stop_counters(pins: Pins, host_ifindex: int) -> None:
    with datapath.CounterMap(pins) as counters:
        counters.stop(host_ifindex)


def _mac(link: Any) -> str:
    mac = link.get_attr("IFLA_ADDRESS")
    return str(mac) if mac else ZERO_MAC


def add(inv: Invocation) -> Result:
    env, conf, log = inv.env, inv.conf, inv.log
    ipam = _ipam(inv)
    if ipam is not None:
        find_plugin(ipam.type, env.path)  # a missing IPAM plugin fails before anything exists
    # What this attachment asks for; anything invalid fails before anything exists.
    line, line_source = attachment.line_for(conf.args, env.args, conf.line, conf.name)
    wanted_ips = attachment.requested_ips(conf.args, conf.runtime_config, env.args)
    wanted_mac = attachment.requested_mac(conf.args, conf.runtime_config, env.args)
    pod = attachment.pod_of(env.args)
    starts_down = conf.starts_down()
    impair = conf.impairment_spec()
    kind = backend.resolve(conf.mode, conf.veth_attach, conf.state_dir)
    attachment.refuse_mac_on(kind.device, wanted_mac)
    cluster = _cluster(inv)
    mtu = _pair_mtu(conf, cluster)
    netns_fd = _open_netns(env.netns)
    pins, registry = _node(inv)
    host_ifname = naming.host_ifname(env.container_id, env.ifname)
    end = End(
        env.container_id, env.ifname, line, conf.name, env.netns, host_ifname, pins=pins.root,
        cluster=cluster is not None,
    )  # fmt: skip
    if pod is not None:
        end.pod_namespace, end.pod_name, end.pod_uid = pod.namespace, pod.name, pod.uid
    end.down = "line" if starts_down else ""
    end.impair = impair
    undo: list[tuple[str, Callable[[], object]]] = []
    # Both sockets outlive the rollback below, which needs them.
    host, cont = Rtnl(), Rtnl.in_netns(netns_fd)
    claim: Claim | None = None
    try:
        wiring.reserve(registry, end)
        undo.append(("leave line", lambda: wiring.leave(registry, pins, end)))
        if cluster is not None:  # the line's ends across the cluster: at most two, as locally
            claim = cluster.claim(line, end.key, conf.name)
            undo.append(("release claim", lambda: cluster.abandon(claim) if claim else None))
        crash_point("add:reserved")
        _ensure_programs(pins, registry, inv)
        end.device, end.attach = kind.device, kind.attach
        if cont.link(env.ifname) is not None:
            raise CNIError(Code.KERNEL, f"interface {env.ifname} already exists in {env.netns}")
        ipam_done: Callable[[], Result] | None = None
        if ipam is not None:
            ipam_done = _in_background(ipam.add)
            undo.append(("IPAM DEL", _ipam_undo(ipam, ipam_done)))
        index = None
        if device_pool is not None:
            index = device_pool.take_into(
                kind, pins, host, host_ifname, netns_fd, env.ifname, mtu, wanted_mac
            )
        pooled = index is not None
        if index is None:
            try:
                index = backend.create_pair(kind, host, host_ifname, env.ifname, netns_fd, mtu, wanted_mac)
            except OSError as exc:
                raise _kernel_error(f"cannot create {kind.device} pair {host_ifname}", exc) from exc
        made = index
        undo.append(("delete device", lambda: host.delete_link(made)))
        undo.append(("detach programs", lambda: datapath.detach(pins, host_ifname)))
        host_link, cont_link = host.link(host_ifname), cont.link(env.ifname)
        if host_link is None or cont_link is None:  # someone deleted it (or its netns) right away
            raise CNIError(Code.KERNEL, f"the new {kind.device} pair {host_ifname} vanished")
        end.host_ifindex, end.peer_ifindex = host_link["index"], cont_link["index"]
        # The label says whose it is: a damaged registry is rebuilt from it (line/recovery.py),
        # and GC sweeps only devices labelled for its own registry and network.
        host.set_alias(end.host_ifindex, recovery.alias(end, conf.state_dir))
        crash_point("add:device")

        pair = backend.Pair(host_ifname, end.host_ifindex, end.peer_ifindex, host, cont, netns_fd)
        try:
            with datapath.CounterMap(pins) as counters:
                counters.start(end.host_ifindex)
            undo.append(("stop counters", lambda: _stop_counters(pins, end.host_ifindex)))
            if pooled:  # attached and pinned already
                for hook in kind.hooks:
                    crash_point(f"add:link-{hook.name}")
            else:
                backend.attach(kind, pins, pair)
        except OSError as exc:
            raise _kernel_error(f"cannot attach programs to {host_ifname} ({kind.attach})", exc) from exc
        _no_ipv6_on_host_side(host_ifname)
        if end.down:  # no carrier in the container until `yogurt link up` (a pooled pair was up)
            host.set_down(end.host_ifindex)
        else:
            host.set_up(end.host_ifindex)

        ipam_result = Result(ips=[IPConfig(ip) for ip in wanted_ips])  # set as asked, without IPAM
        if ipam is not None and ipam_done is not None:
            ipam_result = ipam_done()
            crash_point("add:ipam")
            _require_requested(ipam.type, ipam_result, wanted_ips)
        _configure_container(cont, end.peer_ifindex, ipam_result)
        crash_point("add:configured")
        partner = wiring.connect(registry, pins, end)
        if cluster is not None and claim is not None:
            # Ready from now on under the node's lease; a partner on another node is wired by the
            # agent's reconciler once both ends are ready (agent/cluster.py).
            claim = cluster.ready(claim)
        crash_point("add:wired")
    except BaseException:
        for what, step in reversed(undo):
            try:
                step()
            except Exception as exc:  # noqa: BLE001  (keep undoing; the first error is reported)
                log.error("rollback step failed", step=what, error=str(exc))
        raise
    finally:
        host.close()
        cont.close()
        os.close(netns_fd)
    log.info(
        "joined line",
        line=end.line,
        host_ifname=host_ifname,
        backend=end.device,
        attach=end.attach,
        partner=partner.key if partner else None,
        line_from=line_source,
        requested_ips=[str(ip) for ip in wanted_ips] or None,
        mac=wanted_mac,
        pod=end.pod or None,
        pod_uid=end.pod_uid or None,
    )
    return Result(
        interfaces=[
            Interface(host_ifname, _mac(host_link), mtu=mtu),
            Interface(env.ifname, _mac(cont_link), sandbox=env.netns, mtu=mtu),
        ],
        ips=[IPConfig(ip.address, ip.gateway, interface=1) for ip in ipam_result.ips],
        routes=ipam_result.routes,
        dns=ipam_result.dns if ipam_result.dns.to_json() else parse_result({"dns": conf.dns}).dns,
        extra={"yogurt": {"line": end.line, "backend": end.device, "attach": end.attach}},
    )


def _quietly(wait: Callable[[], object] | None) -> None:
    """Wait for a background call whose outcome no longer matters (a rollback)."""
    if wait is not None:
        with contextlib.suppress(Exception):
            wait()


def _ipam_undo(ipam: IPAM, done: Callable[[], object]) -> Callable[[], None]:
    """ADD's rollback of a lease: once the delegate's ADD has ended, DEL whatever it did
    (DEL of no lease is harmless)."""

    def undo() -> None:
        _quietly(done)
        ipam.delete()

    return undo


def _require_requested(ipam_type: str, result: Result, wanted: tuple[attachment.IPInterface, ...]) -> None:
    """The delegate got the request (runtimeConfig.ips, args.cni.ips: the very config we
    got); one that ignored it must not leave the container on other addresses."""
    missing = attachment.missing_from([ip.address for ip in result.ips], wanted)
    if missing:
        raise CNIError(
            Code.IPAM_FAILED,
            f"IPAM plugin {ipam_type} did not assign the requested addresses",
            f"missing {', '.join(missing)}; it gave {[str(i.address) for i in result.ips]}",
        )


def _configure_container(cont: Rtnl, index: int, ipam_result: Result) -> None:
    try:
        lo = cont.link("lo")
        if lo is not None:
            cont.set_up(lo["index"])
        for ip in ipam_result.ips:
            cont.add_address(index, ip.address)
        cont.set_up(index)
        for route in ipam_result.routes:
            try:
                cont.add_route(
                    route.dst, route.gw, index, priority=route.priority, table=route.table, scope=route.scope
                )
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
    except OSError as exc:
        raise _kernel_error("cannot configure the container interface", exc) from exc


def delete(inv: Invocation) -> None:
    """Idempotent: succeeds for a gone netns, a gone device or an attachment never added.

    The end stays on record (marked leaving) until device, pins and lease are gone:
    killed half-way, the next DEL or a GC still finds what to clean up."""
    env = inv.env
    pins, registry = _node(inv)
    host_ifname = naming.host_ifname(env.container_id, env.ifname)
    # A cluster network's DEL without the agent still does its local part: the claim is released
    # by the agent's reconciler later (a claim with no end), or ages out with the node's lease.
    cluster = cluster_node if inv.conf.cluster else None
    line = _line_of(registry, env.container_id, env.ifname) if cluster is not None else None
    ipam = _ipam(inv)
    ipam_done: Callable[[], None] | None = None
    try:
        with Rtnl() as host:
            link = host.link(host_ifname)
            index = link["index"] if link is not None and link_kind(link) in backend.DEVICE_KINDS else 0
            own = wiring.hang_up(registry, pins, env.container_id, env.ifname, index)
            if cluster is not None:
                cluster.cut(index)
            crash_point("del:left")
            if ipam is not None:  # the lease goes while the device does (a veth teardown: tens of ms)
                ipam_done = _in_background(ipam.delete)
            datapath.detach(own, host_ifname)
            if own != pins:
                datapath.detach(pins, host_ifname)  # and any of this release's, to be sure
            crash_point("del:detached")
            if index:
                host.delete_link(index)  # takes the container end with it
            crash_point("del:device")
    except BaseException:
        _quietly(ipam_done)
        raise
    if ipam_done is not None:
        ipam_done()
    wiring.forget(registry, env.container_id, env.ifname)
    if cluster is not None:
        cluster.release(attachment_key(env.container_id, env.ifname), line)


def _line_of(registry: Registry, container_id: str, ifname: str) -> str | None:
    with registry.transaction(host_ifname=naming.host_ifname(container_id, ifname)) as ends:
        end = ends.get(attachment_key(container_id, ifname))
        return end.line if end is not None else None


def check(inv: Invocation) -> None:
    env, conf = inv.env, inv.conf
    prev = conf.prev_result
    if prev is None:
        raise CNIError(Code.INVALID_CONFIG, "required prevResult missing")
    pins, registry = _node(inv)
    host_ifname = naming.host_ifname(env.container_id, env.ifname)
    netns_fd = _open_netns(env.netns)
    problems: list[str] = []
    ipam = _ipam(inv)
    # The delegate's CHECK reads only its own state: it runs while we look at ours.
    ipam_done = _in_background(ipam.check) if ipam is not None else None
    try:
        with Rtnl() as host, Rtnl.in_netns(netns_fd) as cont:
            with registry.transaction(host_ifname=host_ifname) as ends:
                key = attachment_key(env.container_id, env.ifname)
                end = ends.get(key) or recovery.adopt(ends, env.container_id, env.ifname)
            if end is None:
                raise CNIError(Code.CHECK_FAILED, f"{env.container_id}/{env.ifname} is on no line")
            kind = backend.BY_ATTACH.get(end.attach)
            host_link, cont_link = host.link(host_ifname), cont.link(env.ifname)
            if kind is None:
                raise CNIError(Code.CHECK_FAILED, f"the line records an unknown attach method {end.attach!r}")
            if host_link is None or link_kind(host_link) != kind.device:
                raise CNIError(Code.CHECK_FAILED, f"host device {host_ifname}: missing or not {kind.device}")
            if cont_link is None or link_kind(cont_link) != kind.device:
                raise CNIError(
                    Code.CHECK_FAILED, f"{env.ifname} in {env.netns}: missing or not {kind.device}"
                )
            pair = backend.Pair(host_ifname, host_link["index"], cont_link["index"], host, cont, netns_fd)
            problems += backend.attach_problems(kind, pins, pair)
            present = set(cont.addresses(cont_link["index"]))
            problems += [f"address {ip.address} missing" for ip in prev.ips if ip.address not in present]
            routes = set(cont.routes(cont_link["index"]))
            problems += [
                f"route {r.dst} missing"
                for r in prev.routes
                if (r.dst.with_prefixlen, str(r.gw) if r.gw else None) not in routes
            ]
            problems += _line_problems(registry, pins, env, host_ifname, host_link["index"])
    except BaseException:
        _quietly(ipam_done)
        raise
    finally:
        os.close(netns_fd)
    if problems:
        _quietly(ipam_done)
        raise CNIError(
            Code.CHECK_FAILED, f"{env.container_id}/{env.ifname} is not as ADD left it", "; ".join(problems)
        )
    if ipam_done is not None:
        ipam_done()


def _line_problems(
    registry: Registry, pins: Pins, env: Any, host_ifname: str, host_ifindex: int
) -> list[str]:
    # The line and the map are read under the one lock that ADD wires and DEL cuts under:
    # read apart, CHECK of a healthy end whose partner was just going or coming saw half
    # of that change ("map wires X but line has no partner") and failed (test_load.py).
    with registry.transaction(host_ifname=host_ifname) as ends, PairMap(pins) as pairs:
        end = ends.get(attachment_key(env.container_id, env.ifname))
        if end is None:
            return ["attachment is on no line"]
        if end.host_ifindex != host_ifindex:
            return [f"line records ifindex {end.host_ifindex}, device has {host_ifindex}"]
        partner = next(
            (o for o in ends.values() if o.line == end.line and o.key != end.key and o.ready), None
        )
        mine = pairs.get(end.host_ifindex)
        if partner is None:
            return [] if mine is None else [f"map wires {end.key} but line {end.line!r} has no partner"]
        want = datapath.Partner(*partner.wire)
        problems = []
        if mine != want:
            problems.append(f"map sends {end.key} to {mine}, line says {want}")
        if pairs.get(partner.host_ifindex) != datapath.Partner(*end.wire):
            problems.append(f"map does not send {partner.key} back to {end.key}")
        return problems


def status(inv: Invocation) -> None:
    from cni_yogurt import health

    conf = inv.conf
    if conf.cluster:
        if cluster_node is None:
            raise CNIError(
                Code.NOT_AVAILABLE,
                f"network {conf.name!r} spans nodes and no node agent with --cluster serves it",
                "start yogurt agent --cluster <file> on this node",
            )
        unreachable = cluster_node.status_error()
        if unreachable is not None:
            raise unreachable
    findings = health.node_findings(conf.bpffs_dir, conf.state_dir, conf.mode, conf.veth_attach)
    inv.log.info("status", **{f.name: f.detail for f in findings})
    failed = [f for f in findings if not f.ok and f.fatal]
    if failed:
        raise CNIError(
            Code.NOT_AVAILABLE,
            "cni-yogurt cannot add containers on this node",
            "; ".join(f"{f.name}: {f.detail} (fix: {f.fix})" for f in failed),
        )
    ipam = _ipam(inv)
    if ipam is not None:
        ipam.status()


def _release_leases(ipam: IPAM | None, ends: list[End]) -> list[tuple[End, CNIError | None]]:
    """IPAM DEL for each end (what DEL would have done), a few delegates at a time:
    each is an exec, and a thousand of them one by one take seconds."""
    if ipam is None:
        return [(end, None) for end in ends]

    def release(end: End) -> tuple[End, CNIError | None]:
        if end.container_id == recovery.ANONYMOUS:
            return end, None  # its identity did not fit its label: nothing to name the lease by
        try:
            ipam.release(end.container_id, end.ifname)
        except CNIError as err:
            return end, err
        return end, None

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(release, ends))


def gc(inv: Invocation) -> None:
    """Remove every end, link pin, device and IP lease the runtime no longer knows."""
    conf, log = inv.conf, inv.log
    attachments = conf.valid_attachments or ()
    valid = {attachment_key(c, i) for c, i in attachments}
    pins, registry = _node(inv)
    ipam = _ipam(inv)
    with registry.transaction() as known:
        for c, i in attachments:  # ends a damaged registry lost their names
            recovery.adopt(known, c, i)
        ends = list(known.values())
    stale = [e for e in ends if e.network == conf.name and e.key not in valid]
    keep = {e.host_ifname for e in ends if e.network != conf.name or e.key in valid}
    keep |= {naming.host_ifname(c, i) for c, i in attachments}
    if any(e.key in valid and e.ready and pins.sibling(e.pins) for e in ends):
        _ensure_programs(pins, registry, inv)  # live ends of an older release, or whose programs were lost
    failed: list[str] = []
    with Rtnl() as host:
        released = []
        for end, error in _release_leases(ipam, stale):
            if error is None:
                released.append(end)
                continue
            # An end whose lease cannot be released stays, for the next GC.
            log.error("gc: IPAM DEL failed", end=end.key, error=error.msg, details=error.details)
            failed.append(f"{end.key}: {error.msg}")
            keep.add(end.host_ifname)
        sweep.remove_ends(registry, pins, host, released, log)
        sweep.leftovers(registry, pins, host, conf.state_dir, conf.name, keep)
    if conf.cluster and cluster_node is not None:
        cluster_node.reconcile()  # releases the claims of ends that are gone from this node
    if failed:
        raise CNIError(Code.IPAM_FAILED, "GC could not release every IP lease", "; ".join(failed))
    if ipam is not None:
        ipam.gc()
