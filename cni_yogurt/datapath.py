"""The wire's kernel objects: pinned programs, the pairing map, per-device links.

Layout under `<bpffsDir>/v<ABI>/` (the ABI number changes whenever the
programs or the map layout change, so a new release loads its own objects
next to an older one's, and line/moving.py moves live ends across):

    prog_peer prog_veth_peer prog_tunnel prog_primary   loaded once per node, by bcc
    pairs counters mark                        the pairing map, per-end counters, the secret
    remote tunnel_in tunnel_counters           ends wired across nodes (line/remote.py)
    impair                                     what an end's sends suffer (line/impairment.py)
    links/<host-ifname>_peer|_primary       one pair of links per device
    links/<tunnel-ifname>_tunnel            the tunnel device's receive program (tcx)

A link must be pinned: an unpinned BPF link detaches when the plugin
process exits.  Pairing map: host-side ifindex -> (partner's host-side
ifindex, partner's container-side ifindex); see bpf/yogurt.bpf.c.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cni_yogurt.faults import test_abi
from cni_yogurt.kernel import bpf

# 2: the veth sender program (prog_veth_peer); 3: 64-bit mark, counters;
# 4: the secret in a map, handed on to the next release (upgrade in place);
# 5: lines across nodes (the tunnel's receive program, remote maps); 6: impairments (the
# impair map, which also counts what they did: the counters map keeps its layout).
ABI = test_abi() or 6
_KEY = struct.Struct("=I")
_VALUE = struct.Struct("=II")
_MARK = struct.Struct("=II")  # struct yogurt_mark: cb[0], cb[1]
_VERSION_DIR = re.compile(r"v(\d+)")
# Pinned program name -> function in bpf/yogurt.bpf.c; the same for maps.
# "primary" last: its pin completes the set (Pins.loaded).
PROGRAMS = {
    "peer": "yogurt_peer",
    "veth_peer": "yogurt_veth_peer",
    "tunnel": "yogurt_tunnel",
    "primary": "yogurt_primary",
}
MAPS = {
    "pairs": "yogurt_pairs",
    "counters": "yogurt_counters",
    "mark": "yogurt_mark",
    "remote": "yogurt_remote",
    "tunnel_in": "yogurt_tunnel_in",
    "tunnel_counters": "yogurt_tunnel_counters",
    "impair": "yogurt_impair",
}
# The tunnel device's link pin: links/<tunnel ifname>_tunnel (never a device of an end's).
TUNNEL_HOOK = "tunnel"
# Objects an older release's pin dir lacks: the ABI each arrived with (the rest were in v2).
_SINCE_ABI = {"mark": 4, "remote": 5, "tunnel_in": 5, "tunnel_counters": 5, "prog_tunnel": 5, "impair": 6}


@dataclass(frozen=True)
class Pins:
    root: str

    @classmethod
    def under(cls, bpffs_dir: str) -> Pins:
        return cls(os.path.join(bpffs_dir, f"v{ABI}"))

    @property
    def abi(self) -> int:
        found = _VERSION_DIR.fullmatch(os.path.basename(self.root))
        return int(found.group(1)) if found else 0

    def sibling(self, root: str) -> bool:
        """Whether a pin dir is under the same bpffsDir (this release's or another's)."""
        return bool(root) and os.path.dirname(root) == os.path.dirname(self.root)

    def others(self) -> list[Pins]:
        """Pin dirs of other releases next to this one, newest first."""
        parent = os.path.dirname(self.root)
        try:
            names = os.listdir(parent)
        except OSError:
            return []
        found = [Pins(os.path.join(parent, n)) for n in names if _VERSION_DIR.fullmatch(n)]
        return sorted((p for p in found if p.root != self.root), key=lambda p: p.abi, reverse=True)

    def prog(self, program: str) -> str:
        return os.path.join(self.root, f"prog_{program}")

    def map(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def pairs(self) -> str:
        return self.map("pairs")

    @property
    def counters(self) -> str:
        return self.map("counters")

    @property
    def links_dir(self) -> str:
        return os.path.join(self.root, "links")

    def link(self, host_ifname: str, hook: str) -> str:
        # No dots: bpffs refuses names with a '.' (EPERM), reserved for its own files.
        return os.path.join(self.links_dir, f"{host_ifname}_{hook}")

    def has_impair(self) -> bool:
        """Whether these pins' programs impair what ends send (ABI >= 6)."""
        return os.path.exists(self.map("impair"))

    def has_remote(self) -> bool:
        """Whether these pins have the maps of ends wired across nodes (ABI >= 5)."""
        return os.path.exists(self.map("remote")) and os.path.exists(self.map("tunnel_in"))

    def loaded(self) -> bool:
        return all(os.path.exists(p) for p in self.objects())

    def objects(self) -> list[str]:
        """What a complete pin dir of its release holds (an older release's has less: a v4 dir
        is complete without the tunnel's objects, and its ends are DEL'd and shown from it)."""
        names = [*MAPS, *(f"prog_{p}" for p in PROGRAMS)]
        known = self.abi or ABI
        return [os.path.join(self.root, n) for n in names if _SINCE_ABI.get(n, 0) <= known]


@dataclass(frozen=True)
class Partner:
    host_ifindex: int
    peer_ifindex: int


def ensure_loaded(pins: Pins, state_dir: str) -> bool:
    """Load and pin programs + map unless another ADD (or boot) already did; True if this call loaded them."""
    if pins.loaded():
        return False
    from cni_yogurt.kernel import bpffs
    from cni_yogurt.lock import locked

    with locked(os.path.join(state_dir, "load.lock")):
        if pins.loaded():
            return False  # a parallel first ADD compiled while we waited
        from cni_yogurt.kernel import loader

        bpffs.ensure_mounted(pins.root)
        # Leftovers of an interrupted load were never used by any device.
        for path in pins.objects():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.makedirs(pins.links_dir, exist_ok=True)
        mark = next(filter(None, map(read_mark, pins.others())), None) or loader.new_secret()
        # "primary" last: the guard's pin completes the set (see Pins.loaded).
        loader.compile_and_pin(
            {pins.map(name): fn for name, fn in MAPS.items()},
            {pins.prog(name): fn for name, fn in PROGRAMS.items()},
            state_dir,
            (MAPS["mark"], _MARK.pack(mark & 0xFFFFFFFF, mark >> 32)),
        )
    return True


def read_mark(pins: Pins) -> int | None:
    """The secret an older release's programs mark with (None before ABI 4, or if gone):
    a new release marks with the same one, so lines can move between the two."""
    try:
        with bpf.Map.open_pinned(pins.map("mark"), 4, _MARK.size) as mark:
            raw = mark.lookup(bytes(4))
    except OSError:
        return None
    if raw is None:
        return None
    lo, hi = _MARK.unpack(raw)
    return (hi << 32 | lo) or None


def detach(pins: Pins, host_ifname: str) -> None:
    """Unpin an end's links (netkit, tcx); the kernel detaches them once unreferenced."""
    for hook in ("peer", "primary"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pins.link(host_ifname, hook))


def pinned_link_names(pins: Pins, hook: str | None = None) -> set[str]:
    """Devices with a pinned link: ends' (peer, primary), or those of one `hook` ("tunnel")."""
    try:
        names = os.listdir(pins.links_dir)
    except FileNotFoundError:
        return set()
    split = [name.rsplit("_", 1) for name in names]
    if hook is None:
        return {parts[0] for parts in split if parts[-1] != TUNNEL_HOOK}
    return {parts[0] for parts in split if len(parts) == 2 and parts[1] == hook}


def program_id(pins: Pins, program: str) -> int:
    fd = bpf.obj_get(pins.prog(program))
    try:
        return bpf.object_id(fd)
    finally:
        os.close(fd)


def unload(pins: Pins) -> None:
    """Remove every pin (tests, `yogurt` admin); devices lose their programs."""
    import shutil  # not on the hot path: it imports bz2, lzma and zlib

    shutil.rmtree(pins.root, ignore_errors=True)


COUNTER_FIELDS = (
    "redirected_packets",
    "redirected_bytes",
    "drop_not_wired",
    "drop_unmarked",
    "drop_wrong_sender",
)
# struct yogurt_counters, one per possible CPU.  Its layout is read by older releases too (a
# rollback moves ends back, counters and all): new counts go elsewhere (the impair map's).
_COUNTERS = struct.Struct("=5Q")


def possible_cpus() -> int:
    """How many values a per-CPU map holds per key (the kernel's possible CPUs, e.g. "0-1")."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        spans = f.read().strip().split(",")
    total = 0
    for span in spans:
        first, _, last = span.partition("-")
        total += int(last or first) - int(first) + 1
    return total


class CounterMap:
    """Per-end counters of the programs (a per-CPU hash keyed by host-side ifindex)."""

    def __init__(self, pins: Pins) -> None:
        self._cpus = possible_cpus()
        self._map = bpf.Map.open_pinned(pins.counters, _KEY.size, _COUNTERS.size * self._cpus)

    def __enter__(self) -> CounterMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self._map.close()

    def start(self, host_ifindex: int, values: bytes | None = None) -> None:
        """Zero an end's counters (or set them to `values`, as `raw` read them from another
        release's map); the programs count only for ends that have an entry."""
        self._map.update(_KEY.pack(host_ifindex), values or bytes(_COUNTERS.size * self._cpus))

    def raw(self, host_ifindex: int) -> bytes | None:
        """An end's counters as the map holds them, one struct per CPU."""
        return self._map.lookup(_KEY.pack(host_ifindex))

    def stop(self, host_ifindex: int) -> None:
        self._map.delete(_KEY.pack(host_ifindex))

    def get(self, host_ifindex: int) -> dict[str, int] | None:
        raw = self._map.lookup(_KEY.pack(host_ifindex))
        if raw is None:
            return None
        totals = [0] * len(COUNTER_FIELDS)
        for cpu in range(self._cpus):
            for i, value in enumerate(_COUNTERS.unpack_from(raw, cpu * _COUNTERS.size)):
                totals[i] += value
        return dict(zip(COUNTER_FIELDS, totals, strict=True))

    def keys(self) -> list[int]:
        return [_KEY.unpack(k)[0] for k in self._map.keys()]  # noqa: SIM118  (a bpf.Map, not a dict)


class PairMap:
    """The shared pinned map that pairs host-side devices."""

    def __init__(self, pins: Pins) -> None:
        self._map = bpf.Map.open_pinned(pins.pairs, _KEY.size, _VALUE.size)

    def __enter__(self) -> PairMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self._map.close()

    def get(self, host_ifindex: int) -> Partner | None:
        raw = self._map.lookup(_KEY.pack(host_ifindex))
        return Partner(*_VALUE.unpack(raw)) if raw is not None else None

    def set(self, host_ifindex: int, partner: Partner) -> None:
        self._map.update(_KEY.pack(host_ifindex), _VALUE.pack(partner.host_ifindex, partner.peer_ifindex))

    def wire(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        """Pair two ends given as (host_ifindex, peer_ifindex)."""
        self.set(a[0], Partner(*b))
        self.set(b[0], Partner(*a))

    def cut(self, *host_ifindexes: int) -> None:
        """Remove ends and every entry that sends to them: both directions fail closed.
        One pass over the map however many ends go (GC removes hundreds at once)."""
        gone = set(host_ifindexes)
        for index in gone:
            self._map.delete(_KEY.pack(index))
        for key, partner in list(self.items()):
            if partner.host_ifindex in gone:
                self._map.delete(_KEY.pack(key))

    def items(self) -> Iterator[tuple[int, Partner]]:
        for raw_key in list(self._map.keys()):
            partner = self.get(_KEY.unpack(raw_key)[0])
            if partner is not None:
                yield _KEY.unpack(raw_key)[0], partner


# -- ends wired across nodes (line/remote.py) ---------------------------------

END_NETKIT = 1  # yogurt_remote/yogurt_tunnel_in flags: the end is a netkit pair
_REMOTE = struct.Struct("=IIII")  # struct yogurt_remote: vni, node_ipv4 (host order), tunnel ifindex, flags
_TUNNEL_KEY = struct.Struct("=II")  # struct yogurt_tunnel_key: vni, node_ipv4 (host order)
_TUNNEL_END = struct.Struct("=II")  # struct yogurt_tunnel_end: host ifindex, flags


@dataclass(frozen=True)
class Remote:
    vni: int
    node_ipv4: int  # as an integer (ipaddress.IPv4Address's int())
    tunnel_ifindex: int
    flags: int


class RemoteMap:
    """yogurt_remote and yogurt_tunnel_in, kept in step: an end's way out and its one way in."""

    def __init__(self, pins: Pins) -> None:
        self._remote = bpf.Map.open_pinned(pins.map("remote"), _KEY.size, _REMOTE.size)
        try:
            self._in = bpf.Map.open_pinned(pins.map("tunnel_in"), _TUNNEL_KEY.size, _TUNNEL_END.size)
        except OSError:
            self._remote.close()
            raise

    def __enter__(self) -> RemoteMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self._remote.close()
        self._in.close()

    def get(self, host_ifindex: int) -> Remote | None:
        raw = self._remote.lookup(_KEY.pack(host_ifindex))
        return Remote(*_REMOTE.unpack(raw)) if raw is not None else None

    def set(self, host_ifindex: int, remote: Remote) -> None:
        """Wire (or rewire) an end: the way in first, then the way out; an earlier wiring's
        way in goes last (the receive program also checks the way out, so a stale way in
        never delivers)."""
        before = self.get(host_ifindex)
        self._in.update(
            _TUNNEL_KEY.pack(remote.vni, remote.node_ipv4), _TUNNEL_END.pack(host_ifindex, remote.flags)
        )
        self._remote.update(
            _KEY.pack(host_ifindex),
            _REMOTE.pack(remote.vni, remote.node_ipv4, remote.tunnel_ifindex, remote.flags),
        )
        if before is not None and (before.vni, before.node_ipv4) != (remote.vni, remote.node_ipv4):
            self._drop_in(before.vni, before.node_ipv4, host_ifindex)

    def cut(self, *host_ifindexes: int, thorough: bool = False) -> None:
        """Unwire ends: the way out first (the end fails closed both ways at once), then its
        way in.  `thorough` (GC): also every other way in that leads to them, in one pass over
        the map however many go (left by a wire_remote cut short, which never delivers: the
        receive program also wants the way out); DEL does not pay for that pass."""
        gone = set(host_ifindexes)
        for index in gone:
            wired = self.get(index)
            self._remote.delete(_KEY.pack(index))
            if wired is not None:
                self._drop_in(wired.vni, wired.node_ipv4, index)
        if thorough:
            for key, (index, _flags) in list(self.ways_in()):
                if index in gone:
                    self._in.delete(_TUNNEL_KEY.pack(*key))

    def way_in(self, vni: int, node_ipv4: int) -> int | None:
        """The host-side ifindex that (vni, node) delivers to, if any."""
        raw = self._in.lookup(_TUNNEL_KEY.pack(vni, node_ipv4))
        return int(_TUNNEL_END.unpack(raw)[0]) if raw is not None else None

    def _drop_in(self, vni: int, node_ipv4: int, host_ifindex: int) -> None:
        if self.way_in(vni, node_ipv4) == host_ifindex:
            self._in.delete(_TUNNEL_KEY.pack(vni, node_ipv4))

    def items(self) -> Iterator[tuple[int, Remote]]:
        for raw_key in list(self._remote.keys()):
            index = _KEY.unpack(raw_key)[0]
            remote = self.get(index)
            if remote is not None:
                yield index, remote

    def ways_in(self) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
        """((vni, node_ipv4), (host_ifindex, flags)) of every way in."""
        for raw_key in list(self._in.keys()):
            raw = self._in.lookup(raw_key)
            if raw is not None:
                vni, node = _TUNNEL_KEY.unpack(raw_key)
                index, flags = _TUNNEL_END.unpack(raw)
                yield (vni, node), (index, flags)


TUNNEL_COUNTER_FIELDS = (
    "delivered_packets",
    "delivered_bytes",
    "drop_no_key",
    "drop_unknown",
    "drop_no_mark",
)
_TUNNEL_COUNTERS = struct.Struct("=5Q")  # struct yogurt_tunnel_counters


def tunnel_counters(pins: Pins) -> dict[str, int]:
    """The tunnel receive program's counters on this node, summed over CPUs."""
    cpus = possible_cpus()
    with bpf.Map.open_pinned(pins.map("tunnel_counters"), 4, _TUNNEL_COUNTERS.size * cpus) as table:
        raw = table.lookup(bytes(4)) or bytes(_TUNNEL_COUNTERS.size * cpus)
    totals = [0] * len(TUNNEL_COUNTER_FIELDS)
    for cpu in range(cpus):
        for i, value in enumerate(_TUNNEL_COUNTERS.unpack_from(raw, cpu * _TUNNEL_COUNTERS.size)):
            totals[i] += value
    return dict(zip(TUNNEL_COUNTER_FIELDS, totals, strict=True))


# -- impairments of what an end sends (line/impairment.py) --------------------

# struct yogurt_impair: loss, corrupt, duplicate (fractions of 2^32), reserved, ps_per_byte,
# burst_ns; then the programs' own: the bucket's clock and what the impairments did.
_IMPAIR = struct.Struct("=IIIIQQQ4Q")
IMPAIR_COUNTS = ("lost", "over_rate", "duplicated", "corrupted")
Thresholds = tuple[int, int, int, int, int]  # loss, corrupt, duplicate, ps_per_byte, burst_ns


class ImpairMap:
    """yogurt_impair: an end's impairments, keyed by its host-side ifindex."""

    def __init__(self, pins: Pins) -> None:
        self._map = bpf.Map.open_pinned(pins.map("impair"), _KEY.size, _IMPAIR.size)

    def __enter__(self) -> ImpairMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self._map.close()

    def set(self, host_ifindex: int, thresholds: Thresholds) -> None:
        """Set an end's impairments; its bucket starts full, its counts go on from where they were."""
        loss, corrupt, duplicate, ps_per_byte, burst_ns = thresholds
        raw = self._map.lookup(_KEY.pack(host_ifindex))
        counts = _IMPAIR.unpack(raw)[-len(IMPAIR_COUNTS) :] if raw is not None else (0,) * len(IMPAIR_COUNTS)
        value = _IMPAIR.pack(loss, corrupt, duplicate, 0, ps_per_byte, burst_ns, 0, *counts)
        self._map.update(_KEY.pack(host_ifindex), value)

    def get(self, host_ifindex: int) -> tuple[Thresholds, dict[str, int]] | None:
        """An end's impairments and what they did so far."""
        raw = self._map.lookup(_KEY.pack(host_ifindex))
        if raw is None:
            return None
        loss, corrupt, duplicate, _reserved, ps_per_byte, burst_ns, _due, *counts = _IMPAIR.unpack(raw)
        return (loss, corrupt, duplicate, ps_per_byte, burst_ns), dict(
            zip(IMPAIR_COUNTS, counts, strict=True)
        )

    def clear(self, *host_ifindexes: int) -> None:
        for index in host_ifindexes:
            self._map.delete(_KEY.pack(index))

    def keys(self) -> list[int]:
        return [_KEY.unpack(k)[0] for k in self._map.keys()]  # noqa: SIM118  (a bpf.Map, not a dict)
