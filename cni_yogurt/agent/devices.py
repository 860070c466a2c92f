"""The node's part of the wire across nodes, owned by the agent: its WireGuard device, the tunnel
device (VXLAN in external mode) and the WireGuard private key.

At every start of `yogurt agent --cluster` (`ensure`):
- WireGuard: a device of that name is adopted if it is WireGuard (the kernel's, or a tun device
  that wireguard-go serves); absent, it is made — the kernel's where the kernel makes `wireguard`
  links, else `wireguard-go` (if installed) is started in a session of its own, so that it
  outlives the agent and a restarted agent adopts it.  A device of the name of any other kind is
  named as an error, never deleted.
- The key: generated once into <dataDir>/wireguard.key (0600, write and rename), reused across
  agent restarts and reboots, set on the device only if the device has another (setting it again
  would cost nothing on either implementation, but a hand-made device keeps its own key when
  there is no key file).  Only the public key leaves the node (the node's record in etcd).
- The port, the node's WireGuard address and the MTUs are set where they differ; the peers are
  never touched here (the reconciler's), so a restart keeps every session and drops no packet.
- The tunnel device: made if absent; adopted if it is VXLAN in external mode on the wanted port;
  one the agent made earlier with other settings is made again (a VXLAN's port cannot change in
  place); a hand-made one with other settings, or a device of another kind, is an error.
- MTUs, unless configured: WireGuard's is the underlay device's less 80 (outer IPv6 40 + UDP 8 +
  WireGuard 32), the tunnel's WireGuard's less 50 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner
  Ethernet 14): 1500 → 1420 → 1370.
What the agent made is recorded in <dataDir>/owned.json: `yogurt leave` removes exactly that.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_yogurt.agent.tools import run_tool
from cni_yogurt.cluster.config import DEFAULT_TUNNEL_PORT, DEFAULT_WIREGUARD_PORT, ClusterConfig
from cni_yogurt.kernel.netlink import Rtnl, link_data, link_kind

WIREGUARD_OVERHEAD = 80  # outer IPv6 40 + UDP 8 + WireGuard 32: the kernel's own 1420 on 1500
TUNNEL_OVERHEAD = 50  # VXLAN over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
KEY_FILE = "wireguard.key"
ADDRESS_FILE = "wireguard-address"
OWNED_FILE = "owned.json"
WG_SOCKET_DIR = Path("/var/run/wireguard")
WG_TIMEOUT = 10.0
START_TIMEOUT = 10.0


class DeviceError(Exception):
    """A device of the node's wire cannot be made or adopted: says which, and why."""


# -- pure --------------------------------------------------------------------------------------


def mtus(underlay_mtu: int, wireguard_mtu: int = 0, tunnel_mtu: int = 0) -> tuple[int, int]:
    """(WireGuard's, the tunnel's) MTU: each as configured, else derived from the one below it."""
    wg = wireguard_mtu or underlay_mtu - WIREGUARD_OVERHEAD
    return wg, tunnel_mtu or wg - TUNNEL_OVERHEAD


@dataclass
class Owned:
    """What the agent made on this node (so `yogurt leave` removes that and nothing else)."""

    wireguard: str = ""  # "" | "kernel" | "wireguard-go": the device name is the config's
    tunnel: bool = False

    @classmethod
    def load(cls, data_dir: str) -> Owned:
        try:
            raw = json.loads(Path(data_dir, OWNED_FILE).read_text())
            return cls(str(raw.get("wireguard", "")), bool(raw.get("tunnel")))
        except (OSError, ValueError, AttributeError):
            return cls()

    def save(self, data_dir: str) -> None:
        write_private(Path(data_dir, OWNED_FILE), json.dumps(vars(self)) + "\n")


@dataclass
class Wire:
    """The node's wire as `ensure` left it: what the node publishes, and what it made now."""

    public_key: str
    port: int
    address: str  # the node's IPv4 address inside WireGuard (no prefix)
    wireguard_mtu: int
    tunnel_mtu: int
    made: list[str] = field(default_factory=list)


# -- files -------------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write a root-only file whole or not at all: a temporary file (0600 from its creation), fsync,
    rename; the directory synced too, so a reboot finds the new file or the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def data_dir(cfg: ClusterConfig) -> Path:
    path = Path(cfg.data_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def remembered_address(cfg: ClusterConfig) -> str:
    with contextlib.suppress(OSError):
        return Path(cfg.data_dir, ADDRESS_FILE).read_text().strip()
    return ""


def remember_address(cfg: ClusterConfig, address: str) -> None:
    write_private(data_dir(cfg) / ADDRESS_FILE, address + "\n")


# -- wg(8) ---------------------------------------------------------------------------------------


def wg(*argv: str, stdin: str | None = None) -> str:
    return run_tool(
        ["wg", *argv], error=DeviceError, install="wireguard-tools", stdin=stdin, timeout=WG_TIMEOUT
    )


def _private_key(cfg: ClusterConfig, device_public: str) -> Path | None:
    """The key file to set on the device, made once; None to keep a hand-made device's own key."""
    path = data_dir(cfg) / KEY_FILE
    if path.exists():
        return path
    if device_public:
        return None  # a hand-made device with its key, and no key file of ours: the device's stays
    write_private(path, wg("genkey").strip() + "\n")
    return path


def wireguard_go_pid(name: str) -> int | None:
    """The pid of the wireguard-go that serves `name`, if one does (it answers on its control
    socket).  Found by its command line: the socket's peer credentials name the process that made
    the socket, which wireguard-go's daemonizing parent is (it hands the socket to its child)."""
    if not _answers(WG_SOCKET_DIR / f"{name}.sock"):
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if len(words) >= 2 and os.path.basename(words[0]) == "wireguard-go" and words[-1] == name:
            return int(entry.name)
    return None


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _start_wireguard_go(name: str, log_dir: Path) -> None:
    binary = shutil.which("wireguard-go")
    if binary is None:
        raise DeviceError(
            f"cannot make WireGuard device {name!r}: this kernel has no WireGuard and wireguard-go is "
            "not installed (apt-get install wireguard-go, or a kernel with WireGuard)"
        )
    if not os.path.exists("/dev/net/tun"):
        subprocess.run(["modprobe", "tun"], capture_output=True, check=False, timeout=30)
    stale = WG_SOCKET_DIR / f"{name}.sock"
    if stale.exists() and not _answers(stale):
        stale.unlink()  # left by a wireguard-go killed -9: it would refuse to start
    # wireguard-go daemonizes itself; a session of its own keeps it out of the agent's process
    # group, so that it outlives the agent (a restarted agent adopts the device it serves).
    with open(log_dir / "wireguard-go.log", "ab") as log:
        proc = subprocess.run(
            [binary, name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            check=False,
            timeout=START_TIMEOUT,
        )
    if proc.returncode:
        text = (log_dir / "wireguard-go.log").read_text(errors="replace").strip()[-400:]
        raise DeviceError(f"wireguard-go {name} exited {proc.returncode}: {text}")
    deadline = time.monotonic() + START_TIMEOUT
    while wireguard_go_pid(name) is None:
        if time.monotonic() > deadline:
            raise DeviceError(f"wireguard-go {name} started but its control socket never answered")
        time.sleep(0.02)


# -- the devices ---------------------------------------------------------------------------------


def underlay_device(rtnl: Rtnl, address: str) -> Any:
    """The link that has the node's underlay address."""
    want = ipaddress.ip_address(address)
    for link in rtnl.links():
        if any(a.ip == want for a in rtnl.addresses(link["index"])):
            return link
    raise DeviceError(f"address {address}: no device of this node has it (the cluster file's `address`)")


def wireguard_kind(rtnl: Rtnl, name: str) -> str:
    """ "kernel" | "wireguard-go" | "" (absent); DeviceError for a device of another kind."""
    link = rtnl.link(name)
    if link is None:
        return ""
    kind = link_kind(link)
    if kind == "wireguard":
        return "kernel"
    if kind == "tun" and wireguard_go_pid(name) is not None:
        return "wireguard-go"
    raise DeviceError(
        f"wireguardDevice {name!r} exists and is not WireGuard ({kind or 'no kind'}"
        + (", no wireguard-go serves it" if kind == "tun" else "")
        + "): name another device in the cluster file, or remove this one; the agent never deletes it"
    )


def _make_wireguard(rtnl: Rtnl, name: str, log_dir: Path) -> str:
    try:
        rtnl.create_link(name, "wireguard")
        return "kernel"
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOENT):
            raise DeviceError(f"cannot make WireGuard device {name!r}: {e.strerror or e}") from None
    _start_wireguard_go(name, log_dir)
    return "wireguard-go"


def ensure_wireguard(rtnl: Rtnl, cfg: ClusterConfig, owned: Owned, wg_mtu: int, address: str) -> Wire:
    """Make or adopt the WireGuard device; set key, port, address, MTU where they differ; up."""
    name = cfg.wireguard_device
    made = []
    kind = wireguard_kind(rtnl, name)
    ours = bool(owned.wireguard)
    if not kind:
        kind = _make_wireguard(rtnl, name, data_dir(cfg))
        owned.wireguard, ours = kind, True
        made.append(f"{name} ({kind})")
    public = wg("show", name, "public-key").strip()
    public = "" if public == "(none)" else public
    key = _private_key(cfg, public)
    if key is not None:
        want = wg("pubkey", stdin=key.read_text()).strip()
        if want != public:
            wg("set", name, "private-key", str(key))
            public = want
    port = int(wg("show", name, "listen-port").strip() or 0)
    want_port = cfg.wireguard_port or (port if port and not ours else DEFAULT_WIREGUARD_PORT)
    if port != want_port:
        try:
            wg("set", name, "listen-port", str(want_port))
        except DeviceError as e:
            raise DeviceError(f"{e} (is UDP {want_port} taken? set wireguardPort)") from None
        port = want_port
    link = rtnl.link(name)
    if link is None:
        raise DeviceError(f"WireGuard device {name!r} vanished")
    index = link["index"]
    have = [a for a in rtnl.addresses(index) if a.version == 4]
    if address:
        iface = ipaddress.IPv4Interface(address)
        if all(a.ip != iface.ip for a in have):
            rtnl.add_address(index, iface)
        ip = str(iface.ip)
    elif have:
        ip = str(have[0].ip)  # a hand-made device's own
    else:
        raise DeviceError(
            f"WireGuard device {name!r} has no IPv4 address: give wireguardAddress or wireguardRange"
        )
    mtu = wg_mtu if (ours or cfg.wireguard_mtu) else int(link.get_attr("IFLA_MTU"))
    rtnl.set_up(index, mtu if mtu != int(link.get_attr("IFLA_MTU")) else None)
    return Wire(public, port, ip, mtu, 0, made)


def _vxlan_settings(link: Any) -> tuple[bool, int]:
    data = link_data(link)
    return bool(data.get("IFLA_VXLAN_COLLECT_METADATA")), int(data.get("IFLA_VXLAN_PORT") or 0)


def ensure_tunnel(rtnl: Rtnl, cfg: ClusterConfig, owned: Owned, tunnel_mtu: int) -> tuple[int, list[str]]:
    """Make or adopt the tunnel device (VXLAN, external, on the port); its MTU and what was made."""
    name, made = cfg.tunnel_device, []
    link = rtnl.link(name)
    if link is not None:
        kind = link_kind(link)
        if kind != "vxlan":
            raise DeviceError(
                f"tunnelDevice {name!r} exists and is {kind or 'no kind'}, not VXLAN: name another "
                "device in the cluster file, or remove this one; the agent never deletes it"
            )
        external, port = _vxlan_settings(link)
        wrong = [] if external else ["not external"]
        if cfg.tunnel_port and port != cfg.tunnel_port:
            wrong.append(f"port {port}, not {cfg.tunnel_port}")
        if wrong and not owned.tunnel:
            raise DeviceError(
                f"tunnelDevice {name!r} is a VXLAN device made by hand with other settings "
                f"({', '.join(wrong)}): the agent leaves it; fix or remove it"
            )
        if wrong:  # ours, with settings a VXLAN device cannot change in place: made again
            rtnl.delete_link(link["index"])
            link = None
    if link is None:
        port = cfg.tunnel_port or DEFAULT_TUNNEL_PORT
        try:
            rtnl.create_link(
                name,
                "vxlan",
                [("IFLA_VXLAN_COLLECT_METADATA", 1), ("IFLA_VXLAN_PORT", port), ("IFLA_VXLAN_LEARNING", 0)],
            )
        except OSError as e:
            hint = (
                " (another external VXLAN device on that port? set tunnelPort)"
                if e.errno == errno.EEXIST
                else ""
            )
            raise DeviceError(
                f"cannot make tunnel device {name!r} on UDP {port}: {e.strerror or e}{hint}"
            ) from None
        owned.tunnel = True
        made.append(f"{name} (vxlan, UDP {port})")
        link = rtnl.link(name)
        if link is None:
            raise DeviceError(f"tunnel device {name!r} vanished")
    mtu = tunnel_mtu if (owned.tunnel or cfg.tunnel_mtu) else int(link.get_attr("IFLA_MTU"))
    rtnl.set_up(link["index"], mtu if mtu != int(link.get_attr("IFLA_MTU")) else None)
    return mtu, made


def ensure(cfg: ClusterConfig, wireguard_address: str) -> Wire:
    """The node's wire, made or adopted (see the module's doc).  `wireguard_address`: the node's
    (address/prefix), "" to keep a hand-made device's own."""
    directory = str(data_dir(cfg))
    owned = Owned.load(directory)
    with Rtnl() as rtnl:
        under = underlay_device(rtnl, cfg.address)
        wg_mtu, _ = mtus(int(under.get_attr("IFLA_MTU")), cfg.wireguard_mtu)
        try:
            wire = ensure_wireguard(rtnl, cfg, owned, wg_mtu, wireguard_address)
            # The tunnel's from WireGuard's as it is (an adopted device keeps its own MTU).
            _, tunnel_mtu = mtus(0, wire.wireguard_mtu, cfg.tunnel_mtu)
            wire.tunnel_mtu, made = ensure_tunnel(rtnl, cfg, owned, tunnel_mtu)
        finally:
            owned.save(directory)
    wire.made += made
    return wire


def describe_wireguard(cfg: ClusterConfig) -> str:
    """What `yogurt doctor` says of the node's WireGuard device (DeviceError naming what is wrong)."""
    with Rtnl() as rtnl:
        kind = wireguard_kind(rtnl, cfg.wireguard_device)
        link = rtnl.link(cfg.wireguard_device)
        addresses = [str(a) for a in rtnl.addresses(link["index"]) if a.version == 4] if link else []
    if not kind or link is None:
        raise DeviceError(f"no WireGuard device {cfg.wireguard_device!r} on this node")
    name = cfg.wireguard_device
    public = wg("show", name, "public-key").strip()
    key = Path(cfg.data_dir, KEY_FILE)
    if key.exists() and wg("pubkey", stdin=key.read_text()).strip() != public:
        raise DeviceError(f"{name} has another key than {key}: the agent sets it at its next start")
    port = wg("show", name, "listen-port").strip()
    return (
        f"{name} ({kind}), UDP {port}, {', '.join(addresses) or 'no IPv4 address'}, "
        f"MTU {link.get_attr('IFLA_MTU')}, public key {public[:10]}…"
    )


# -- taking the node out -----------------------------------------------------------------------


def remove_owned(cfg: ClusterConfig) -> list[str]:
    """Remove the devices the agent made (none it adopted); what was removed."""
    owned = Owned.load(cfg.data_dir)
    gone = []
    with Rtnl() as rtnl:
        if owned.tunnel:
            link = rtnl.link(cfg.tunnel_device)
            if link is not None and rtnl.delete_link(link["index"]):
                gone.append(cfg.tunnel_device)
        if owned.wireguard == "wireguard-go":
            pid = wireguard_go_pid(cfg.wireguard_device)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)  # it removes its tun device and its socket
                deadline = time.monotonic() + 5
                while rtnl.link(cfg.wireguard_device) is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
                gone.append(f"{cfg.wireguard_device} (wireguard-go, pid {pid})")
        elif owned.wireguard == "kernel":
            link = rtnl.link(cfg.wireguard_device)
            if link is not None and rtnl.delete_link(link["index"]):
                gone.append(cfg.wireguard_device)
    owned.wireguard, owned.tunnel = "", False
    owned.save(cfg.data_dir)
    return gone
