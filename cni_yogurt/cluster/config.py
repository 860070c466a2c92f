"""The cluster configuration: which etcd, how to trust it, who this node is.  Pure: parsing and checks only.

Given as a JSON object (the node agent's file, `yogurt agent --cluster <file>`):

    {"endpoints": ["https://10.0.0.1:2379", ...], "node": "node-a", "prefix": "/cni-yogurt",
     "caFile": "...", "certFile": "...", "keyFile": "...", "timeout": 8,
     "address": "192.0.2.10", "wireguardRange": "10.99.0.0/24"}

The store's keys come first; the rest are the node agent's, which owns the node's part of the
wire (agent/devices.py): `address`, the node's underlay address (other nodes' WireGuard sends to
it); the WireGuard device (`wireguardDevice`, made if absent, on `wireguardPort`) and its address
inside WireGuard (`wireguardAddress` as given, or allocated from the cluster-wide
`wireguardRange`); the tunnel device (`tunnelDevice`, an external-mode VXLAN on `tunnelPort`);
their MTUs (derived from the underlay device's unless given); `dataDir`, where the node keeps
what must outlive a reboot (its WireGuard private key, its WireGuard address); `leaseSeconds`,
how long the node's records outlive its agent.  `node` and `address` may come from the agent's
command line instead (`--node`, `--address`: Kubernetes' downward API).

Every problem is a CNIError with code 7 (invalid config) that names the key and the value at fault.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cni_yogurt.cni.errors import CNIError, Code

# A node name is a DNS-1123 label, as a Kubernetes node's is in practice.
NODE_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
PREFIX_RE = re.compile(r"(/[A-Za-z0-9._-]+)+")
DEFAULT_PREFIX = "/cni-yogurt"
# Every store call ends within this many seconds, failover included: a claim that cannot reach
# a quorum fails with code 11 well inside the runtime's own timeout.
DEFAULT_TIMEOUT = 8.0
MAX_TIMEOUT = 10.0
AGENT_KEYS = frozenset(
    {
        "address",
        "wireguardDevice",
        "wireguardPort",
        "wireguardAddress",
        "wireguardRange",
        "wireguardMtu",
        "tunnelDevice",
        "tunnelPort",
        "tunnelMtu",
        "dataDir",
        "leaseSeconds",
    }
)
DEFAULT_WIREGUARD_DEVICE = "ywg0"
# Not 51820: a node's own WireGuard (wg0) has that one by habit, and two cannot share a port.
DEFAULT_WIREGUARD_PORT = 51830
DEFAULT_TUNNEL_DEVICE = "yvx0"
DEFAULT_TUNNEL_PORT = 4789  # VXLAN's IANA port; the agent's nftables rule keeps it to WireGuard
DEFAULT_DATA_DIR = "/var/lib/cni-yogurt"  # persistent: a reboot keeps the node's key and address
# The node's lease: its partners fail closed this long after its agent stops renewing it, and an
# agent away longer comes back to claims it must make again (it does: agent/cluster.py).
DEFAULT_LEASE_SECONDS = 10
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 2, 3600
MIN_MTU, MAX_MTU = 1280, 65535
KNOWN_KEYS = (
    frozenset({"endpoints", "node", "prefix", "caFile", "certFile", "keyFile", "timeout"}) | AGENT_KEYS
)
IFNAME_RE = re.compile(r"[^/\s:]{1,15}")


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" | "https"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ClusterConfig:
    endpoints: tuple[Endpoint, ...]
    node: str
    prefix: str = DEFAULT_PREFIX
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout: float = DEFAULT_TIMEOUT
    address: str = ""  # the agent's: underlay address
    wireguard_device: str = DEFAULT_WIREGUARD_DEVICE
    tunnel_device: str = DEFAULT_TUNNEL_DEVICE
    wireguard_port: int = 0  # 0: an adopted device's own, DEFAULT_WIREGUARD_PORT on one the agent makes
    wireguard_address: str = ""  # "10.99.0.11/24": the node's, as given
    wireguard_range: str = ""  # "10.99.0.0/24": every node's address allocated from it in etcd
    wireguard_mtu: int = 0  # 0: the underlay device's less WireGuard's overhead
    tunnel_port: int = 0  # 0: an adopted device's own, DEFAULT_TUNNEL_PORT on one the agent makes
    tunnel_mtu: int = 0  # 0: WireGuard's less the tunnel's overhead
    data_dir: str = DEFAULT_DATA_DIR
    lease_seconds: int = DEFAULT_LEASE_SECONDS

    @property
    def tls(self) -> bool:
        return self.endpoints[0].scheme == "https"


def _bad(msg: str, details: str) -> CNIError:
    return CNIError(Code.INVALID_CONFIG, f"cluster: {msg}", details)


def parse_endpoint(text: Any) -> Endpoint:
    if not isinstance(text, str) or not text:
        raise _bad("invalid endpoint", f"{text!r} is not a URL like https://10.0.0.1:2379")
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as e:
        raise _bad("invalid endpoint", f"{text!r}: {e}") from None
    if url.scheme not in ("http", "https") or not url.hostname or port is None:
        raise _bad("invalid endpoint", f"{text!r} must be http(s)://host:port")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise _bad("invalid endpoint", f"{text!r} must have no path, query or credentials")
    return Endpoint(url.scheme, url.hostname, port)


def _file(raw: dict[str, Any], key: str, check_files: bool) -> str:
    path = raw.get(key, "")
    if not isinstance(path, str):
        raise _bad(f"invalid {key}", f"{path!r} is not a path")
    if path and check_files and not os.access(path, os.R_OK):
        raise _bad(f"{key} cannot be read", f"{path}: missing or not readable")
    return path


def parse(raw: Any, *, check_files: bool = True) -> ClusterConfig:
    """A ClusterConfig from its JSON object; `check_files=False` skips the readability of the TLS files."""
    if not isinstance(raw, dict):
        raise _bad("must be an object", f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise _bad("unknown keys", ", ".join(unknown))
    eps = raw.get("endpoints")
    if isinstance(eps, str):
        eps = [e for e in eps.split(",") if e]
    if not isinstance(eps, list) or not eps:
        raise _bad("no endpoints", "endpoints must list at least one http(s)://host:port")
    endpoints = tuple(parse_endpoint(e) for e in eps)
    if len({e.scheme for e in endpoints}) > 1:
        raise _bad("mixed endpoints", "all endpoints must be http or all https")
    node = raw.get("node")
    if not isinstance(node, str) or not NODE_RE.fullmatch(node):
        raise _bad("invalid node name", f"{node!r} must be a DNS label (lower case, digits, '-', '.')")
    prefix = raw.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise _bad("invalid prefix", f"{prefix!r} must look like /cni-yogurt")
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise _bad("invalid timeout", f"{timeout!r} must be seconds in (0, {MAX_TIMEOUT:g}]")
    ca, cert, key = (_file(raw, k, check_files) for k in ("caFile", "certFile", "keyFile"))
    if bool(cert) != bool(key):
        raise _bad("certFile and keyFile go together", "give both (a client certificate) or neither")
    if (ca or cert) and endpoints[0].scheme != "https":
        raise _bad("TLS files with http endpoints", "use https:// endpoints with caFile/certFile/keyFile")
    address = raw.get("address", "")
    if address != "":
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise _bad("invalid address", f"{address!r} is not an IP address") from None
    devices = []
    for k, default in (
        ("wireguardDevice", DEFAULT_WIREGUARD_DEVICE),
        ("tunnelDevice", DEFAULT_TUNNEL_DEVICE),
    ):
        dev = raw.get(k, default)
        if not isinstance(dev, str) or not IFNAME_RE.fullmatch(dev):
            raise _bad(f"invalid {k}", f"{dev!r} is not an interface name")
        devices.append(dev)
    if devices[0] == devices[1]:
        raise _bad(
            "wireguardDevice and tunnelDevice are one name", f"{devices[0]!r}: two devices need two names"
        )
    wg_port = _int(raw, "wireguardPort", 0, 1, 65535)
    tunnel_port = _int(raw, "tunnelPort", 0, 1, 65535)
    wg_mtu = _int(raw, "wireguardMtu", 0, MIN_MTU, MAX_MTU)
    tunnel_mtu = _int(raw, "tunnelMtu", 0, MIN_MTU, MAX_MTU)
    lease = _int(raw, "leaseSeconds", DEFAULT_LEASE_SECONDS, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS)
    wg_address, wg_range = _wireguard_address(raw)
    data_dir = raw.get("dataDir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise _bad("invalid dataDir", f"{data_dir!r} must be an absolute path")
    return ClusterConfig(
        endpoints, node, prefix, ca, cert, key, float(timeout), address,
        wireguard_device=devices[0], tunnel_device=devices[1],
        wireguard_port=wg_port, wireguard_address=wg_address, wireguard_range=wg_range,
        wireguard_mtu=wg_mtu, tunnel_port=tunnel_port, tunnel_mtu=tunnel_mtu,
        data_dir=os.path.normpath(data_dir), lease_seconds=lease,
    )  # fmt: skip


def _int(raw: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """An integer key in [low, high]; absent gives the default (0: "the device's own" or "derive it")."""
    value = raw.get(key, default)
    if value == default and not isinstance(value, bool):
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"invalid {key}", f"{value!r} must be an integer in [{low}, {high}]")
    return value


def _wireguard_address(raw: dict[str, Any]) -> tuple[str, str]:
    """(wireguardAddress, wireguardRange), normalised: at most one of them, IPv4, with a prefix."""
    address, network = raw.get("wireguardAddress", ""), raw.get("wireguardRange", "")
    if address and network:
        raise _bad(
            "wireguardAddress and wireguardRange exclude each other", "give the node's address or the range"
        )
    if address:
        try:
            iface = ipaddress.IPv4Interface(address)
        except (ValueError, TypeError):
            raise _bad("invalid wireguardAddress", f"{address!r} is not an IPv4 address/prefix") from None
        if "/" not in address or iface.network.prefixlen >= 31:
            raise _bad(
                "invalid wireguardAddress", f"{address!r} needs the range's prefix, e.g. 10.99.0.11/24"
            )
        return str(iface), ""
    if network:
        try:
            net = ipaddress.IPv4Network(network)
        except (ValueError, TypeError):
            raise _bad(
                "invalid wireguardRange", f"{network!r} is not an IPv4 network like 10.99.0.0/24"
            ) from None
        if net.prefixlen > 29:
            raise _bad("invalid wireguardRange", f"{network!r} is too small: /29 or larger")
        return "", str(net)
    return "", ""


def for_agent(cfg: ClusterConfig) -> ClusterConfig:
    """The agent needs to know the underlay address it publishes: code 7 if it is missing."""
    if not cfg.address:
        raise _bad("the agent's keys are missing", "address (or the agent's --address)")
    return cfg


def load(path: str, *, node: str = "", address: str = "", agent: bool = True) -> ClusterConfig:
    """The agent's file: the JSON object above (or a network config's `cluster` object form).
    `node` and `address` (the agent's command line) replace the file's; `agent=False`: the
    agent's own keys may be missing (`yogurt leave`)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise _bad("cannot read the cluster file", f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise _bad("the cluster file is not JSON", f"{path}: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("cluster"), dict):
        raw = raw["cluster"]
    if isinstance(raw, dict):
        raw = {**raw, **({"node": node} if node else {}), **({"address": address} if address else {})}
    cfg = parse(raw)
    return for_agent(cfg) if agent else cfg
