"""Two device kinds behind one datapath: how a pair is made, where the programs attach.

Everything else — lines, the pairing map, the cb mark, the secret and the
sender check — is shared; see bpf/yogurt.bpf.c for why each program sits
where it does.

    backend  device pair                      sender (container tx)        guard (into the container)
    netkit   netkit, both ends blackhole      peer hook, bpf_redirect      primary hook (host-side device)
    veth     veth, both ends down until wired host-side tc ingress,        container-side tc ingress
                                              bpf_redirect_peer

netkit (Linux >= 6.7) is the default wherever the kernel can create one.
veth programs attach with tcx links (Linux >= 6.6), pinned like netkit's;
older kernels get clsact + direct-action cls_bpf filters, which live and die
with the device and need no pins.  "split" puts the sender on a cls_bpf
filter and the guard on a tcx link: every tcx attach waits for an RCU grace
period under the rtnl lock (most of a veth ADD), a filter waits for none, and
the sender sits on the host-side device, which no container can reach, while
the guard's link is out of reach of a container's `tc` (a filter in the
container's netns is not: CAP_NET_ADMIN there can delete it).  What each mode
costs per ADD and DEL is in docs/performance.md.  The mode is resolved once per ADD
(`resolve`) and recorded with the end; every later verb works from that
record or from the device itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from cni_yogurt.datapath import Pins, program_id
from cni_yogurt.faults import crash_point
from cni_yogurt.kernel import bpf, tc
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.kernel.netns import create_in, open_netns

DEVICE_KINDS = ("netkit", "veth")
T = TypeVar("T")


@dataclass(frozen=True)
class Hook:
    name: str  # "peer" (the sender) or "primary" (the guard); names the link pin
    program: str  # pinned program, a key of datapath.PROGRAMS
    on_container_side: bool  # attached to the device inside the container's netns
    attach_type: int  # netkit / tcx attach type (the tc path: ingress, like tcx)
    linked: bool = True  # by a bpf link, pinned (netkit, tcx); else a cls_bpf filter on clsact


@dataclass(frozen=True)
class Backend:
    device: str  # link kind: "netkit" | "veth"
    attach: str  # "netkit" | "tcx" | "tc" | "split"
    hooks: tuple[Hook, ...]

    @property
    def pins_links(self) -> bool:
        """Whether any of its hooks is a pinned link (whether it needs tcx, on veth)."""
        return any(hook.linked for hook in self.hooks)


NETKIT = Backend(
    "netkit",
    "netkit",
    (Hook("peer", "peer", False, bpf.NETKIT_PEER), Hook("primary", "primary", False, bpf.NETKIT_PRIMARY)),
)
_VETH_HOOKS = (
    Hook("peer", "veth_peer", False, bpf.TCX_INGRESS),
    Hook("primary", "primary", True, bpf.TCX_INGRESS),
)
VETH_TCX = Backend("veth", "tcx", _VETH_HOOKS)
VETH_TC = Backend("veth", "tc", tuple(dataclasses.replace(h, linked=False) for h in _VETH_HOOKS))
VETH_SPLIT = Backend("veth", "split", (dataclasses.replace(_VETH_HOOKS[0], linked=False), _VETH_HOOKS[1]))
BY_ATTACH = {b.attach: b for b in (NETKIT, VETH_TCX, VETH_TC, VETH_SPLIT)}


@dataclass
class Pair:
    """One end's two devices, with a netlink socket on each side."""

    host_ifname: str
    host_ifindex: int
    peer_ifindex: int
    host: Rtnl
    cont: Rtnl
    netns_fd: int

    def on_side(self, hook: Hook, call: Callable[[], T]) -> T:
        """Run a bpf() call in the netns of the hook's device (ifindexes are per netns)."""
        return create_in(self.netns_fd, call) if hook.on_container_side else call()

    def ifindex(self, hook: Hook) -> int:
        return self.peer_ifindex if hook.on_container_side else self.host_ifindex

    def rtnl(self, hook: Hook) -> Rtnl:
        return self.cont if hook.on_container_side else self.host


@contextlib.contextmanager
def opened_pair(
    host: Rtnl, host_ifname: str, host_ifindex: int, peer_ifindex: int, netns: str
) -> Iterator[Pair]:
    """A recorded end's pair, with a socket in its container's netns (OSError if that is gone)."""
    netns_fd = open_netns(netns)
    try:
        with Rtnl.in_netns(netns_fd) as cont:
            yield Pair(host_ifname, host_ifindex, peer_ifindex, host, cont, netns_fd)
    finally:
        os.close(netns_fd)


# -- choosing ---------------------------------------------------------------


def probe_netkit() -> OSError | None:
    """Create and delete a throw-away netkit pair; the error if the kernel cannot."""
    name, peer = f"ygprobe{os.getpid() % 100000}", f"ygprobp{os.getpid() % 100000}"
    try:
        with Rtnl() as nl:
            nl.create_netkit(name, peer, None)
            link = nl.link(name)
            if link is not None:
                nl.delete_link(link["index"])
    except OSError as exc:
        return exc
    return None


def netkit_supported(state_dir: str) -> bool:
    """probe_netkit, remembered for this boot (stateDir is on tmpfs)."""
    for answer in (True, False):
        if os.path.exists(_marker(state_dir, answer)):
            return answer
    supported = probe_netkit() is None
    os.makedirs(state_dir, mode=0o700, exist_ok=True)  # root-only, as the registry makes it
    with open(_marker(state_dir, supported), "w"):
        pass
    return supported


def _marker(state_dir: str, supported: bool) -> str:
    return os.path.join(state_dir, "netkit.ok" if supported else "netkit.missing")


def tcx_supported() -> bool:
    """Asking which tcx programs `lo` has fails with EINVAL on kernels before 6.6."""
    try:
        bpf.prog_query(1, bpf.TCX_INGRESS)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def resolve(mode: str, veth_attach: str, state_dir: str, netkit: bool | None = None) -> Backend:
    """The backend an ADD uses: the config's choice, else netkit where the kernel has it.
    `netkit`: whether it has, if the caller already asked (else the per-boot answer)."""
    if mode == "auto" and netkit is None:
        netkit = netkit_supported(state_dir)
    if mode == "netkit" or (mode == "auto" and netkit):
        return NETKIT
    if veth_attach == "auto":
        return VETH_TCX if tcx_supported() else VETH_TC
    return BY_ATTACH[veth_attach]


# -- the device edge --------------------------------------------------------


# ifindexes we ask for: far above what the kernel hands out by itself, within int32.
_INDEX_BASE, _INDEX_SPAN = 1 << 24, (1 << 30) - (1 << 24)


def create_pair(
    backend: Backend,
    host: Rtnl,
    host_ifname: str,
    ifname: str,
    netns_fd: int,
    mtu: int | None,
    mac: str | None = None,
) -> int:
    """The pair, its peer already in the container's netns as `ifname`, closed to traffic;
    returns the ifindex both ends share.  `mac`: the container-side device's (veth only:
    netkit's L3 devices have none, see cni/attachment.refuse_mac_on).

    Both ends get one ifindex, unique in the host netns: the guard sees only the
    container-side device, whose kernel-chosen ifindex (2 in most containers) would
    not tell ends apart, and it must find its own end's counters."""
    start = int(host_ifname[-8:], 16)  # naming.host_ifname ends in hex: a stable first guess
    for attempt in range(16):
        index = _INDEX_BASE + (start + attempt * 7919) % _INDEX_SPAN
        try:
            if backend.device == "netkit":
                host.create_netkit(host_ifname, ifname, netns_fd, mtu, index)
            else:
                host.create_veth(host_ifname, ifname, netns_fd, mtu, index, peer_mac=mac)
            return index
        except OSError as exc:
            # EEXIST: that ifindex (or our name) is taken in the host netns; EBUSY: in the container's.
            if exc.errno not in (errno.EEXIST, errno.EBUSY) or host.link(host_ifname) is not None:
                raise
    raise OSError(errno.EEXIST, f"no free ifindex for {host_ifname} after 16 tries")


# -- the attach edge --------------------------------------------------------


def attach(backend: Backend, pins: Pins, pair: Pair) -> None:
    """Attach the sender and the guard; pin the links (an unpinned link dies with this process)."""
    os.makedirs(pins.links_dir, exist_ok=True)
    for hook in backend.hooks:
        attach_hook(backend, pins, pair, hook)
        crash_point(f"add:link-{hook.name}")


def attach_hook(backend: Backend, pins: Pins, pair: Pair, hook: Hook, pinned: str | None = None) -> None:
    """Give one hook the program pinned in `pins`.  `pinned`: the link it has now (an older
    release's pin), which keeps its place and is switched in place, and pinned under `pins`
    instead: BPF_LINK_UPDATE swaps the program atomically, so every packet meets the old
    program or the new one, never neither.  A tc filter is replaced in place the same way."""
    prog_fd = bpf.obj_get(pins.prog(hook.program))
    try:
        if not hook.linked:
            rtnl, index = pair.rtnl(hook), pair.ifindex(hook)
            rtnl.add_clsact(index)
            rtnl.add_bpf_filter(index, tc.INGRESS, prog_fd, f"yogurt_{hook.program}")
        elif pinned is not None:
            _update_link(pins, pair.host_ifname, hook, prog_fd, pinned)
        else:
            _attach_link(pins, pair, hook, prog_fd)
    finally:
        os.close(prog_fd)


def attach_held(backend: Backend, pins: Pins, pair: Pair) -> dict[str, int]:
    """Attach the sender and the guard with links that are not pinned: the caller holds
    their fds (hook name -> link fd), and they detach when it closes them or dies."""
    assert all(hook.linked for hook in backend.hooks)
    held: dict[str, int] = {}
    try:
        for hook in backend.hooks:
            prog_fd = bpf.obj_get(pins.prog(hook.program))
            try:
                held[hook.name] = pair.on_side(hook, functools.partial(_link, prog_fd, pair, hook))
            finally:
                os.close(prog_fd)
    except BaseException:
        for fd in held.values():
            os.close(fd)
        raise
    return held


def _link(prog_fd: int, pair: Pair, hook: Hook) -> int:
    return bpf.link_create(prog_fd, pair.ifindex(hook), hook.attach_type)


def pin_held(pins: Pins, host_ifname: str, held: dict[str, int]) -> None:
    """Pin links made by attach_held as an end's own (what `attach` would have pinned)."""
    os.makedirs(pins.links_dir, exist_ok=True)
    for hook, link_fd in held.items():
        _pin(link_fd, pins.link(host_ifname, hook))


def _attach_link(pins: Pins, pair: Pair, hook: Hook, prog_fd: int) -> None:
    index = pair.ifindex(hook)
    link_fd = pair.on_side(hook, lambda: bpf.link_create(prog_fd, index, hook.attach_type))
    try:
        _pin(link_fd, pins.link(pair.host_ifname, hook.name))
    finally:
        os.close(link_fd)


def _update_link(pins: Pins, host_ifname: str, hook: Hook, prog_fd: int, pinned: str) -> None:
    link_fd = bpf.obj_get(pinned)
    try:
        if bpf.link_prog_id(link_fd) != bpf.object_id(prog_fd):
            bpf.link_update(link_fd, prog_fd)
        path = pins.link(host_ifname, hook.name)
        if pinned != path:
            _pin(link_fd, path)  # pinned twice for a moment: the link never lacks a pin
            os.unlink(pinned)
    finally:
        os.close(link_fd)


def _pin(link_fd: int, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale link of an earlier device with this name
    bpf.obj_pin(link_fd, path)


def attach_problems(backend: Backend, pins: Pins, pair: Pair) -> list[str]:
    """What is wrong with the programs attached to an end ([] if all is well)."""
    problems = []
    for hook in backend.hooks:
        want = program_id(pins, hook.program)
        attached = attached_ids(backend, pair, hook)
        if want not in attached:
            side = "container" if hook.on_container_side else "host"
            problems.append(
                f"{hook.name} program (id {want}) is not attached to the {side}-side {backend.device} "
                f"device by {backend.attach} (attached: {attached})"
            )
    return problems


def attached_ids(backend: Backend, pair: Pair, hook: Hook) -> list[int]:
    """IDs of the programs at a hook's place, as the kernel reports them."""
    index = pair.ifindex(hook)
    if hook.linked:
        return pair.on_side(hook, lambda: bpf.prog_query(index, hook.attach_type))
    return pair.rtnl(hook).bpf_filter_ids(index, tc.INGRESS)
