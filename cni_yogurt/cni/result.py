"""The ADD result: one model, rendered for each spec version, parsed from any.

0.3.x/0.4.0 results carry `ips[].version`; 1.0.0 dropped it; 1.1.0 added
interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/
`table`/`scope`.  Fields a version does not know are left out, not sent empty.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cni_yogurt.cni import version as versions
from cni_yogurt.cni.errors import CNIError, Code

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None
    socket_path: str = ""
    pci_id: str = ""


@dataclass
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclass
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


_ROUTE_1_1_FIELDS = ("mtu", "advmss", "priority", "table", "scope")


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("nameservers", "domain", "search", "options"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)
    # Plugin-specific top-level keys (ours: "yogurt"); runtimes ignore keys they do not know.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, cni_version: str) -> dict[str, Any]:
        legacy = not versions.at_least(cni_version, "1.0.0")
        v1_1 = versions.at_least(cni_version, "1.1.0")
        out: dict[str, Any] = {"cniVersion": cni_version}
        if self.interfaces:
            out["interfaces"] = [_interface_json(i, v1_1) for i in self.interfaces]
        if self.ips:
            out["ips"] = [_ip_json(ip, legacy) for ip in self.ips]
        if self.routes:
            out["routes"] = [_route_json(r, v1_1) for r in self.routes]
        out["dns"] = self.dns.to_json()
        out.update(self.extra)
        return out

    def merged_after(self, previous: Result) -> Result:
        """This result appended to a chained plugin's prevResult."""
        offset = len(previous.interfaces)
        ips = [
            IPConfig(ip.address, ip.gateway, None if ip.interface is None else ip.interface + offset)
            for ip in self.ips
        ]
        dns = self.dns if self.dns.to_json() else previous.dns
        return Result(
            previous.interfaces + self.interfaces, previous.ips + ips, previous.routes + self.routes, dns
        )


def _interface_json(iface: Interface, v1_1: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if v1_1 and iface.mtu:
        out["mtu"] = iface.mtu
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if v1_1 and iface.socket_path:
        out["socketPath"] = iface.socket_path
    if v1_1 and iface.pci_id:
        out["pciID"] = iface.pci_id
    return out


def _ip_json(ip: IPConfig, legacy: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if legacy:
        out["version"] = str(ip.address.version)
    out["address"] = ip.address.with_prefixlen
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    if ip.interface is not None:
        out["interface"] = ip.interface
    return out


def _route_json(route: Route, v1_1: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": route.dst.with_prefixlen}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    if v1_1:
        for key in _ROUTE_1_1_FIELDS:
            value = getattr(route, key)
            if value is not None:
                out[key] = value
    return out


# -- parsing (IPAM results and prevResult) ----------------------------------


def _bad(what: str, detail: str) -> CNIError:
    return CNIError(Code.DECODE_FAILURE, f"invalid {what}", detail)


def _optional_int(obj: dict[str, Any], key: str, what: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(what, f"{key} must be an integer, got {value!r}")
    return value


def _text(value: Any, key: str, what: str) -> str:
    """Addresses are strings: ipaddress would take an integer (or true) for one."""
    if not isinstance(value, str):
        raise _bad(what, f"{key} must be a string, got {value!r}")
    return value


def _string_list(obj: dict[str, Any], key: str, what: str) -> list[str]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(what, f"{key} must be a list of strings")
    return value


def parse_result(obj: Any, what: str = "result") -> Result:
    """Parse a result of any supported version (0.3.0 and later)."""
    if not isinstance(obj, dict):
        raise _bad(what, "not a JSON object")
    try:
        interfaces = [
            Interface(
                name=str(i["name"]),
                mac=str(i.get("mac", "")),
                sandbox=str(i.get("sandbox", "")),
                mtu=_optional_int(i, "mtu", what),
                socket_path=str(i.get("socketPath", "")),
                pci_id=str(i.get("pciID", "")),
            )
            for i in obj.get("interfaces") or []
        ]
        ips = [
            IPConfig(
                address=ipaddress.ip_interface(_text(ip["address"], "address", what)),
                gateway=ipaddress.ip_address(_text(ip["gateway"], "gateway", what))
                if ip.get("gateway")
                else None,
                interface=_optional_int(ip, "interface", what),
            )
            for ip in obj.get("ips") or []
        ]
        routes = [
            Route(
                dst=ipaddress.ip_network(_text(r["dst"], "dst", what), strict=False),
                gw=ipaddress.ip_address(_text(r["gw"], "gw", what)) if r.get("gw") else None,
                **{key: _optional_int(r, key, what) for key in _ROUTE_1_1_FIELDS},
            )
            for r in obj.get("routes") or []
        ]
        dns_obj = obj.get("dns") or {}
        if not isinstance(dns_obj, dict):
            raise _bad(what, "dns must be an object")
        dns = DNS(
            nameservers=_string_list(dns_obj, "nameservers", what),
            domain=str(dns_obj.get("domain", "")),
            search=_string_list(dns_obj, "search", what),
            options=_string_list(dns_obj, "options", what),
        )
    except CNIError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(what, f"{type(exc).__name__}: {exc}") from exc
    for ip in ips:
        if ip.interface is not None and not 0 <= ip.interface < len(interfaces):
            raise _bad(what, f"ips[].interface {ip.interface} names no interface")
    return Result(interfaces, ips, routes, dns)
