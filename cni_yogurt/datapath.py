"""The wire's kernel objects: two pinned programs, the pairing map, per-device links.

Layout under `<bpffsDir>/v<ABI>/` (the ABI number changes whenever the
programs or the map layout change, so an upgraded plugin never mixes with
objects an older one pinned):

    prog_peer  prog_primary  pairs          loaded once per node, by bcc
    links/<host-ifname>_peer|_primary       one pair of links per device

A link must be pinned: an unpinned BPF link detaches when the plugin
process exits.  Pairing map: host-side ifindex -> (partner's host-side
ifindex, partner's container-side ifindex); see bpf/yogurt.bpf.c.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cni_yogurt.kernel import bpf

ABI = 2  # 2: the veth sender program (prog_veth_peer)
_KEY = struct.Struct("=I")
_VALUE = struct.Struct("=II")
# Pinned program name -> function in bpf/yogurt.bpf.c.
PROGRAMS = {"peer": "yogurt_peer", "veth_peer": "yogurt_veth_peer", "primary": "yogurt_primary"}


@dataclass(frozen=True)
class Pins:
    root: str

    @classmethod
    def under(cls, bpffs_dir: str) -> Pins:
        return cls(os.path.join(bpffs_dir, f"v{ABI}"))

    def prog(self, program: str) -> str:
        return os.path.join(self.root, f"prog_{program}")

    @property
    def pairs(self) -> str:
        return os.path.join(self.root, "pairs")

    @property
    def links_dir(self) -> str:
        return os.path.join(self.root, "links")

    def link(self, host_ifname: str, hook: str) -> str:
        # No dots: bpffs refuses names with a '.' (EPERM), reserved for its own files.
        return os.path.join(self.links_dir, f"{host_ifname}_{hook}")

    def loaded(self) -> bool:
        return all(os.path.exists(p) for p in (self.pairs, *map(self.prog, PROGRAMS)))


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
        for path in (pins.pairs, *map(pins.prog, PROGRAMS)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.makedirs(pins.links_dir, exist_ok=True)
        # "primary" last: the guard's pin completes the set (see Pins.loaded).
        loader.compile_and_pin(pins.pairs, {pins.prog(name): fn for name, fn in PROGRAMS.items()}, state_dir)
    return True


def detach(pins: Pins, host_ifname: str) -> None:
    """Unpin an end's links (netkit, tcx); the kernel detaches them once unreferenced."""
    for hook in ("peer", "primary"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pins.link(host_ifname, hook))


def pinned_link_names(pins: Pins) -> set[str]:
    try:
        return {name.rsplit("_", 1)[0] for name in os.listdir(pins.links_dir)}
    except FileNotFoundError:
        return set()


def program_id(pins: Pins, program: str) -> int:
    fd = bpf.obj_get(pins.prog(program))
    try:
        return bpf.object_id(fd)
    finally:
        os.close(fd)


def unload(pins: Pins) -> None:
    """Remove every pin (tests, `yogurt` admin); devices lose their programs."""
    shutil.rmtree(pins.root, ignore_errors=True)


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

    def cut(self, host_ifindex: int) -> None:
        """Remove an end and every entry that sends to it: both directions fail closed."""
        self._map.delete(_KEY.pack(host_ifindex))
        for key, partner in list(self.items()):
            if partner.host_ifindex == host_ifindex:
                self._map.delete(_KEY.pack(key))

    def items(self) -> Iterator[tuple[int, Partner]]:
        for raw_key in list(self._map.keys()):
            partner = self.get(_KEY.unpack(raw_key)[0])
            if partner is not None:
                yield _KEY.unpack(raw_key)[0], partner
