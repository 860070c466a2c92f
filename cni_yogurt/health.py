"""Can ADD work on this node?  Shared by STATUS and `yogurt doctor`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from cni_yogurt.datapath import Pins
from cni_yogurt.kernel import bpffs
from cni_yogurt.line.registry import Registry


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    # False: worth a look (`yogurt doctor` says so) but ADD works, and heals it where it can.
    fatal: bool = True


def probe_netkit() -> Finding:
    """Can this kernel create a netkit pair? (asks it, every time)"""
    from cni_yogurt import backend

    error = backend.probe_netkit()
    if error is not None:
        return Finding(
            "netkit",
            False,
            f"cannot create a netkit device: {error}",
            "boot a kernel >= 6.7 built with CONFIG_NETKIT (e.g. Debian trixie's linux-image-amd64)",
        )
    return Finding("netkit", True, f"netkit devices can be created ({os.uname().release})")


def check_backend(state_dir: str, mode: str, veth_attach: str, cached: bool = True) -> Finding:
    """Which device backend an ADD with this config gets here, and whether it can work."""
    from cni_yogurt import backend

    netkit = backend.netkit_supported(state_dir) if cached else backend.probe_netkit() is None
    kind = backend.resolve(mode, veth_attach, state_dir, netkit)
    release = os.uname().release
    if kind is backend.NETKIT:
        if netkit:
            return Finding("backend", True, f"netkit (Linux {release})")
        return Finding(
            "backend",
            False,
            f'"mode": "netkit" but Linux {release} cannot create netkit devices',
            'boot a kernel >= 6.7 with CONFIG_NETKIT, or set "mode" to "auto" or "veth"',
        )
    if kind.pins_links and not backend.tcx_supported():
        return Finding(
            "backend",
            False,
            f'veth with tcx ("vethAttach": "{kind.attach}"), but Linux {release} has no tcx',
            'set "vethAttach" to "auto" or "tc"',
        )
    how = {
        "tcx": "tcx links",
        "tc": "clsact + cls_bpf",
        "split": "clsact + cls_bpf (the sender) and a tcx link (the guard)",
    }[kind.attach]
    why = "" if mode == "veth" else f"; no netkit in Linux {release}"
    return Finding("backend", True, f"veth, programs attached with {how}{why}")


def check_bpffs(bpffs_dir: str) -> Finding:
    kind = bpffs.mount_type(bpffs_dir)
    if kind == "bpf":
        return Finding("bpffs", True, f"{bpffs_dir} is on bpffs")
    if os.geteuid() == 0:
        return Finding("bpffs", True, f"bpffs not mounted; the first ADD mounts it on {bpffs.BPFFS_ROOT}")
    return Finding("bpffs", False, f"{bpffs_dir} is on {kind}, not bpffs", "mount -t bpf bpf /sys/fs/bpf")


def check_source() -> Finding:
    from cni_yogurt.kernel import loader

    source = loader.source_path()
    if source.is_file():
        return Finding("source", True, f"BPF source {source}")
    return Finding(
        "source",
        False,
        f"the BPF source {source} is missing",
        "reinstall cni-yogurt",
    )


def check_programs(bpffs_dir: str, state_dir: str) -> Finding:
    from cni_yogurt.kernel import headers

    pins = Pins.under(bpffs_dir)
    if pins.loaded():
        return Finding("programs", True, f"programs and pairing map pinned in {pins.root}")
    ends = Registry(state_dir).snapshot().values()  # no `recover`: a damaged file reads as empty
    orphans = [e.key for e in ends if e.pins == pins.root and e.ready]
    if orphans:
        return Finding(
            "programs",
            False,
            f"{len(orphans)} live ends lost their programs: {pins.root} is gone (removed, bpffs unmounted)",
            "none needed: the next ADD or GC loads them again and re-attaches every live end",
            fatal=False,
        )
    if importlib.util.find_spec("bcc") is None:
        return Finding(
            "programs",
            False,
            "programs not loaded and bcc's Python module is missing",
            "apt-get install python3-bpfcc, and run the plugin with the distribution's python3 "
            "(a venv made from /usr/bin/python3 with --system-site-packages)",
        )
    found = headers.describe()
    if found is None:
        return Finding(
            "programs",
            False,
            f"programs not loaded and no kernel headers for bcc (no /lib/modules/{os.uname().release}/build, "
            "none under /usr/src)",
            "apt-get install linux-headers-$(uname -r), or any distribution headers (linux-headers-amd64)",
        )
    return Finding(
        "programs", True, f"programs not loaded yet; the first ADD compiles them (bcc, headers: {found})"
    )


def check_state(state_dir: str) -> Finding:
    registry = Registry(state_dir)
    damage = registry.damage()
    if damage is not None:
        return Finding(
            "state",
            False,
            f"the line registry in {registry.path} is damaged ({damage})",
            "none needed: the next ADD, DEL or GC rebuilds it from the devices and the map "
            f"(and keeps the damaged files in {registry.path}.damaged)",
            fatal=False,
        )
    return Finding("state", True, f"line registry {registry.path} is readable")


def check_pin_versions(bpffs_dir: str) -> Finding:
    """Pins of another ABI: ends added by an older release, not yet moved to this one's programs."""
    pins = Pins.under(bpffs_dir)
    current = os.path.basename(pins.root)
    others = [os.path.basename(o.root) for o in pins.others()]
    if others:
        return Finding(
            "pins",
            False,
            f"{bpffs_dir} also holds {', '.join(others)} of another release, next to this one's {current}",
            "`yogurt upgrade` (or the next ADD or GC) moves live ends onto this release's programs "
            "in place and removes the older pins once nothing uses them",
            fatal=False,
        )
    return Finding("pins", True, f"only this release's pins ({current})")


def check_privileges() -> Finding:
    if os.geteuid() == 0:
        return Finding("privileges", True, "running as root")
    return Finding(
        "privileges", False, "not root: netlink and bpf need CAP_NET_ADMIN and CAP_BPF", "run as root"
    )


def node_findings(
    bpffs_dir: str, state_dir: str, mode: str = "auto", veth_attach: str = "auto", cached: bool = True
) -> list[Finding]:
    return [
        check_privileges(),
        check_backend(state_dir, mode, veth_attach, cached),
        check_bpffs(bpffs_dir),
        check_source(),
        check_programs(bpffs_dir, state_dir),
        check_state(state_dir),
        check_pin_versions(bpffs_dir),
    ]
