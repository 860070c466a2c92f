"""Can ADD work on this node?  Shared by STATUS and `yogurt doctor`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from cni_yogurt.datapath import Pins
from cni_yogurt.kernel import bpffs


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def probe_netkit() -> Finding:
    """Create and delete a throw-away netkit pair in the host netns."""
    from cni_yogurt.kernel.netlink import Rtnl

    name, peer = f"ygprobe{os.getpid() % 100000}", f"ygprobp{os.getpid() % 100000}"
    try:
        with Rtnl() as nl:
            nl.create_netkit(name, peer, None)
            link = nl.link(name)
            if link is not None:
                nl.delete_link(link["index"])
    except OSError as exc:
        return Finding(
            "netkit",
            False,
            f"cannot create a netkit device: {exc}",
            "boot a kernel >= 6.7 built with CONFIG_NETKIT (e.g. Debian trixie's linux-image-amd64)",
        )
    return Finding("netkit", True, f"netkit devices can be created ({os.uname().release})")


def netkit_cached(state_dir: str) -> Finding:
    """probe_netkit, remembered for this boot (stateDir is on tmpfs)."""
    marker = os.path.join(state_dir, "netkit.ok")
    if os.path.exists(marker):
        return Finding("netkit", True, "netkit devices can be created (cached for this boot)")
    finding = probe_netkit()
    if finding.ok:
        os.makedirs(state_dir, exist_ok=True)
        open(marker, "w").close()
    return finding


def check_bpffs(bpffs_dir: str) -> Finding:
    kind = bpffs.mount_type(bpffs_dir)
    if kind == "bpf":
        return Finding("bpffs", True, f"{bpffs_dir} is on bpffs")
    if os.geteuid() == 0:
        return Finding("bpffs", True, f"bpffs not mounted; the first ADD mounts it on {bpffs.BPFFS_ROOT}")
    return Finding("bpffs", False, f"{bpffs_dir} is on {kind}, not bpffs", "mount -t bpf bpf /sys/fs/bpf")


def check_programs(bpffs_dir: str) -> Finding:
    pins = Pins.under(bpffs_dir)
    if pins.loaded():
        return Finding("programs", True, f"programs and pairing map pinned in {pins.root}")
    if importlib.util.find_spec("bcc") is None:
        return Finding(
            "programs",
            False,
            "programs not loaded and bcc's Python module is missing",
            "apt-get install python3-bpfcc",
        )
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(build):
        return Finding(
            "programs",
            False,
            f"programs not loaded and {build} is missing (bcc needs kernel headers)",
            "apt-get install linux-headers-$(uname -r)",
        )
    return Finding("programs", True, "programs not loaded yet; bcc and headers are there for the first ADD")


def check_privileges() -> Finding:
    if os.geteuid() == 0:
        return Finding("privileges", True, "running as root")
    return Finding(
        "privileges", False, "not root: netlink and bpf need CAP_NET_ADMIN and CAP_BPF", "run as root"
    )


def node_findings(bpffs_dir: str, state_dir: str, cached: bool = True) -> list[Finding]:
    netkit = netkit_cached(state_dir) if cached else probe_netkit()
    return [check_privileges(), netkit, check_bpffs(bpffs_dir), check_programs(bpffs_dir)]
