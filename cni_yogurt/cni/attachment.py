"""What one attachment asks for, wherever its runtime put it: line, addresses, MAC, pod.

Runtimes pass per-attachment choices in different, standard places:

    args.cni.<key>        CONVENTIONS "args in network config": Multus turns a pod's
                          `cni-args` into this in the delegate's config
    runtimeConfig.<cap>   CONVENTIONS capabilities, sent by libcni only for those the
                          config declares (`"capabilities": {"ips": true, "mac": true}`):
                          podman's --network net:ip=...,mac=..., Multus's ips / mac,
                          cnitool's CAP_ARGS
    CNI_ARGS              `YOGURT_LINE=<line>` (cnitool); containerd and CRI-O add
                          K8S_POD_NAMESPACE / K8S_POD_NAME / K8S_POD_UID; podman 4's
                          CNI backend sends --network net:ip=...,mac=... as `IP=` (which
                          host-local reads) and `MAC=` (the tuning plugin's key)

The line a container joins, first found wins (LINE_SOURCES):
args.cni.line, CNI_ARGS YOGURT_LINE, the config's `line`, the network `name`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cni_yogurt.cni.errors import CNIError, Code

LINE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
LINE_SOURCES = ("args.cni.line", "CNI_ARGS YOGURT_LINE", "config line", "network name")
POD_ARGS = ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID")
# What CRI runtimes add besides the pod's identity; accepted, not used.
K8S_ARGS = frozenset(POD_ARGS) | {"K8S_POD_INFRA_CONTAINER_ID"}
# CNI_ARGS keys read here that an IPAM delegate may not know (host-local knows IP).
ADDRESS_ARGS = frozenset({"IP", "MAC"})
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Pod:
    """The Kubernetes pod an attachment belongs to, as its CRI runtime names it."""

    namespace: str
    name: str
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


LINK_STATES = ("up", "down")


def link_state(args: Mapping[str, Any], configured: str) -> str:
    """ "down" if the end starts down (its container without carrier, nothing passing, until
    `yogurt link up`): args.cni.linkState, else the config's linkState."""
    value = _cni_args(args).get("linkState", configured)
    if value not in LINK_STATES:
        raise CNIError(
            Code.INVALID_CONFIG, "invalid network config: args.cni.linkState", f"{value!r} is not up or down"
        )
    return str(value)


def impairments(args: Mapping[str, Any], configured: Mapping[str, Any]) -> str:
    """The end's impairments as End.impair keeps them ("" for none): args.cni.impairments, which
    replaces the config's `impairments` whole, else the config's."""
    from cni_yogurt.line.impairment import Impairment, ImpairmentError

    given = _cni_args(args).get("impairments", configured)
    where = "args.cni.impairments" if "impairments" in _cni_args(args) else "impairments"
    if not isinstance(given, dict):
        raise CNIError(Code.INVALID_CONFIG, f"invalid network config: {where}", "must be an object")
    try:
        return Impairment.parse(given).spec()
    except ImpairmentError as exc:
        raise CNIError(Code.INVALID_CONFIG, f"invalid network config: {where}", str(exc)) from exc


def _cni_args(args: Mapping[str, Any]) -> Mapping[str, Any]:
    cni = args.get("cni")
    if cni is None:
        return {}
    if not isinstance(cni, dict):
        raise CNIError(Code.INVALID_CONFIG, "invalid network config: args.cni", "must be an object")
    return cni


def line_for(
    args: Mapping[str, Any], cni_args: Mapping[str, str], conf_line: str, network: str
) -> tuple[str, str]:
    """(line, the source it came from): the first source that names one."""
    from_args = _cni_args(args).get("line")
    if from_args is not None and not isinstance(from_args, str):
        raise CNIError(Code.INVALID_CONFIG, "invalid line name from args.cni.line", "must be a string")
    candidates = (from_args, cni_args.get("YOGURT_LINE"), conf_line, network)
    line, source = next(((c, s) for c, s in zip(candidates, LINE_SOURCES, strict=True) if c), ("", ""))
    if not LINE_RE.fullmatch(line):
        raise CNIError(
            Code.INVALID_CONFIG,
            f"invalid line name from {source or 'network name'}",
            f"{line!r} must match {LINE_RE.pattern}",
        )
    return line, source


def requested_ips(
    args: Mapping[str, Any], runtime_config: Mapping[str, Any], cni_args: Mapping[str, str] | None = None
) -> tuple[IPInterface, ...]:
    """The addresses asked for: capability `ips`, args.cni.ips and CNI_ARGS IP (comma
    separated); host-local honours all three, and their union.  CIDR as CONVENTIONS write
    them; a bare address is a host address."""
    found: list[IPInterface] = []
    env_ips = (cni_args or {}).get("IP")
    for source, value in (
        ("runtimeConfig.ips", runtime_config.get("ips")),
        ("args.cni.ips", _cni_args(args).get("ips")),
        ("CNI_ARGS IP", env_ips.split(",") if env_ips else None),
    ):
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CNIError(Code.INVALID_CONFIG, f"invalid {source}", "must be a list of strings")
        for text in value:
            try:
                address = ipaddress.ip_interface(text)
            except ValueError as exc:
                raise CNIError(Code.INVALID_CONFIG, f"invalid address in {source}", str(exc)) from exc
            if address.ip.is_multicast or address.ip.is_unspecified:
                raise CNIError(Code.INVALID_CONFIG, f"invalid address in {source}", f"{text} is not unicast")
            if all(address.ip != f.ip for f in found):
                found.append(address)
    return tuple(found)


def requested_mac(
    args: Mapping[str, Any], runtime_config: Mapping[str, Any], cni_args: Mapping[str, str] | None = None
) -> str | None:
    """The container-side MAC asked for: capability `mac`, else args.cni.mac, else CNI_ARGS
    MAC; lower case."""
    for source, value in (
        ("runtimeConfig.mac", runtime_config.get("mac")),
        ("args.cni.mac", _cni_args(args).get("mac")),
        ("CNI_ARGS MAC", (cni_args or {}).get("MAC")),
    ):
        if value is None or value == "":
            continue
        mac = value.lower() if isinstance(value, str) else ""
        if not MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            raise CNIError(
                Code.INVALID_CONFIG,
                f"invalid MAC in {source}",
                f"{value!r} is not a unicast xx:xx:xx:xx:xx:xx",
            )
        return mac
    return None


def pod_of(cni_args: Mapping[str, str]) -> Pod | None:
    """The pod a CRI runtime named in CNI_ARGS, if it named one."""
    namespace, name, uid = (cni_args.get(key, "") for key in POD_ARGS)
    return Pod(namespace, name, uid) if name else None


def missing_from(result_ips: list[IPInterface], wanted: tuple[IPInterface, ...]) -> list[str]:
    """The requested addresses a delegate's result does not hold."""
    got = {ip.ip for ip in result_ips}
    return [str(w.ip) for w in wanted if w.ip not in got]


def refuse_mac_on(device: str, mac: str | None) -> None:
    """A MAC can only be given to a device that has one: our netkit pairs are L3 (no
    Ethernet header, no address), so asking for one there is a config error, not ignored."""
    if mac is not None and device == "netkit":
        raise CNIError(
            Code.INVALID_CONFIG,
            "a MAC address was requested, but netkit devices (L3) have none",
            f'requested {mac}; use "mode": "veth" for this network, or do not request a MAC',
        )
