"""The network configuration on stdin (SPEC section 1), with our own keys.

Our keys (all optional):
  line       name of the line containers of this network join (default: `name`);
             args.cni.line, then CNI_ARGS `YOGURT_LINE=<name>`, override it per
             attachment (cni/attachment.py)
  bpffsDir   where programs, the pairing map and links are pinned
             (default /sys/fs/bpf/cni-yogurt; an ABI version is appended)
  stateDir   line membership; must not outlive a reboot (default /run/cni-yogurt)
  logFile    JSON-lines log (default /var/log/cni-yogurt.log)
  mtu        MTU of both devices of a pair (default: the kernel's)
  mode       device backend: "auto" (netkit where the kernel can create one,
             else veth), "netkit" or "veth"
  vethAttach how veth programs attach: "auto" (tcx links where the kernel has
             them, >= 6.6, else clsact + cls_bpf), "tcx", "tc", or "split"
             (the sender by cls_bpf, the guard by a tcx link: one grace
             period less per ADD, the guard still out of a container's reach)
  linkState  "up" (default) or "down": an end starts down (no carrier in the
             container, nothing passes) until `yogurt link up`; args.cni.linkState
             sets it per attachment
  impairments
             what each end of this network sends suffers, done in the wire's
             programs: {"loss": %, "corruption": %, "duplicate": %, "rate":
             kbit/s} (line/impairment.py); args.cni.impairments replaces it
             per attachment; `yogurt impair` changes it at run time
  cluster    true: this network's lines span nodes (claimed in etcd, wired
             through the tunnel); served by the node agent started with
             `--cluster <file>`, which holds the store's configuration
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cni_yogurt.cni import version as versions
from cni_yogurt.cni.attachment import ADDRESS_ARGS, K8S_ARGS, LINK_STATES, impairments, line_for, link_state
from cni_yogurt.cni.env import CniEnv
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.result import Result, parse_result

DEFAULT_BPFFS_DIR = "/sys/fs/bpf/cni-yogurt"
DEFAULT_STATE_DIR = "/run/cni-yogurt"
DEFAULT_LOG_FILE = "/var/log/cni-yogurt.log"

# CNI_ARGS keys meant for this plugin alone (kept from IPAM delegates).
OUR_ARGS = frozenset({"YOGURT_LINE"})
MODES = ("auto", "netkit", "veth")
VETH_ATTACH = ("auto", "tcx", "tc", "split")
# CNI_ARGS keys this plugin understands; others need IgnoreUnknown.
KNOWN_ARGS = OUR_ARGS | K8S_ARGS | ADDRESS_ARGS | {"IgnoreUnknown"}


@dataclass(frozen=True)
class IPAMConf:
    type: str
    raw: dict[str, Any]


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    raw: dict[str, Any]
    ipam: IPAMConf | None = None
    cni_versions: tuple[str, ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    runtime_config: dict[str, Any] = field(default_factory=dict)
    prev_result: Result | None = None
    line: str = ""
    bpffs_dir: str = DEFAULT_BPFFS_DIR
    state_dir: str = DEFAULT_STATE_DIR
    log_file: str = DEFAULT_LOG_FILE
    mtu: int | None = None
    mode: str = "auto"
    veth_attach: str = "auto"
    cluster: bool = False
    link_state: str = "up"
    impairments: dict[str, Any] = field(default_factory=dict)
    # GC only: the attachments the runtime still knows, as (containerID, ifname).
    valid_attachments: tuple[tuple[str, str], ...] | None = None

    def line_for(self, env: CniEnv) -> str:
        """The line a container joins: args.cni.line, CNI_ARGS YOGURT_LINE, the config's
        line, the network name (the first that names one)."""
        return line_for(self.args, env.args, self.line, self.name)[0]

    def starts_down(self) -> bool:
        """The new end starts down: args.cni.linkState, else the config's linkState."""
        return link_state(self.args, self.link_state) == "down"

    def impairment_spec(self) -> str:
        """The new end's impairments (End.impair): args.cni.impairments, else the config's."""
        return impairments(self.args, self.impairments)


def decode(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # Recursion: nested too deep
        raise CNIError(Code.DECODE_FAILURE, "error decoding network config", str(exc)) from exc
    if not isinstance(obj, dict):
        raise CNIError(Code.DECODE_FAILURE, "error decoding network config", "not a JSON object")
    return obj


def _typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = obj.get(key, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CNIError(Code.INVALID_CONFIG, f"invalid network config: {key}", f"must be {names}")
    return value


def parse(obj: dict[str, Any]) -> NetConf:
    cni_version = obj.get("cniVersion")
    if not isinstance(cni_version, str) or not cni_version:
        raise CNIError(Code.INVALID_CONFIG, "invalid network config: cniVersion", "must be a string")
    versions.require_supported(cni_version)
    name = _typed(obj, "name", str, "")
    type_ = _typed(obj, "type", str, "")
    if not name or not type_:
        missing = [key for key, val in (("name", name), ("type", type_)) if not val]
        raise CNIError(Code.INVALID_CONFIG, f"invalid network config: {', '.join(missing)} missing")

    ipam = None
    ipam_obj = _typed(obj, "ipam", dict, None)
    if ipam_obj:
        ipam_type = ipam_obj.get("type")
        if not isinstance(ipam_type, str) or not ipam_type or "/" in ipam_type:
            raise CNIError(Code.INVALID_CONFIG, "invalid network config: ipam.type", "must be a plugin name")
        ipam = IPAMConf(ipam_type, ipam_obj)

    cni_versions = _typed(obj, "cniVersions", list, [])
    if not all(isinstance(v, str) for v in cni_versions):
        raise CNIError(Code.INVALID_CONFIG, "invalid network config: cniVersions", "must be strings")

    prev = obj.get("prevResult")
    mtu = _typed(obj, "mtu", int, None)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise CNIError(Code.INVALID_CONFIG, "invalid network config: mtu", "must be 68..65535")
    return NetConf(
        cni_version=cni_version,
        name=name,
        type=type_,
        raw=obj,
        ipam=ipam,
        cni_versions=tuple(cni_versions),
        dns=_typed(obj, "dns", dict, {}),
        args=_typed(obj, "args", dict, {}),
        runtime_config=_typed(obj, "runtimeConfig", dict, {}),
        prev_result=parse_result(prev, "prevResult") if prev is not None else None,
        line=_typed(obj, "line", str, ""),
        bpffs_dir=_typed(obj, "bpffsDir", str, DEFAULT_BPFFS_DIR),
        state_dir=_typed(obj, "stateDir", str, DEFAULT_STATE_DIR),
        log_file=_typed(obj, "logFile", str, DEFAULT_LOG_FILE),
        mtu=mtu,
        mode=_choice(obj, "mode", MODES),
        veth_attach=_choice(obj, "vethAttach", VETH_ATTACH),
        cluster=_typed(obj, "cluster", bool, False),
        link_state=_choice(obj, "linkState", LINK_STATES),
        impairments=_typed(obj, "impairments", dict, {}),
        valid_attachments=_valid_attachments(obj),
    )


def _choice(obj: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = _typed(obj, key, str, allowed[0])
    if value not in allowed:
        raise CNIError(
            Code.INVALID_CONFIG,
            f"invalid network config: {key}",
            f"{value!r} is not one of {', '.join(allowed)}",
        )
    return str(value)


def _valid_attachments(obj: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    # SPEC 1.1.0's text names the key `cni.dev/attachments` in one place and
    # `cni.dev/valid-attachments` in another; libcni sends the latter.
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if key in obj:
            items = obj[key]
            if not isinstance(items, list) or not all(
                isinstance(i, dict)
                and isinstance(i.get("containerID"), str)
                and isinstance(i.get("ifname"), str)
                for i in items
            ):
                raise CNIError(
                    Code.INVALID_CONFIG,
                    f"invalid network config: {key}",
                    "must be a list of {containerID, ifname} objects",
                )
            return tuple((i["containerID"], i["ifname"]) for i in items)
    return None


def check_cni_args(env: CniEnv) -> None:
    ignore = env.args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(env.args) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CNIError(
            Code.INVALID_ENV,
            "unknown CNI_ARGS",
            f"{', '.join(unknown)} (set IgnoreUnknown=1 to ignore them)",
        )
