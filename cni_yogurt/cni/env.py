"""The CNI_* environment of one invocation (SPEC section 2, "Parameters")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cni_yogurt.cni.errors import CNIError, Code

VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Which variables each verb cannot do without.  DEL may come after the
# netns is gone, so CNI_NETNS is optional there; CNI_PATH is needed by every
# verb that may delegate to IPAM.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}

CONTAINER_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
IFNAMSIZ = 16  # including the trailing NUL, so names are at most 15 bytes


@dataclass(frozen=True)
class CniEnv:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: tuple[str, ...] = ()
    args: Mapping[str, str] = field(default_factory=dict)
    raw_args: str = ""


def validate_container_id(value: str) -> None:
    if not CONTAINER_ID_RE.fullmatch(value):
        raise CNIError(
            Code.INVALID_ENV,
            "invalid characters in containerID",
            f"CNI_CONTAINERID {value!r} must match {CONTAINER_ID_RE.pattern}",
        )


def _utf8(value: str) -> bool:
    """False for text decoded from bytes that were not UTF-8 (os.environ's surrogate escapes)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def validate_ifname(value: str) -> None:
    """The kernel's dev_valid_name() rules, as the reference skel checks them; and not `lo`,
    which exists in every netns, so no plugin can create it."""
    problem = ""
    if not value:
        problem = "is empty"
    elif not _utf8(value):
        problem = "is not UTF-8"
    elif len(value.encode()) > IFNAMSIZ - 1:
        problem = f"is longer than {IFNAMSIZ - 1} bytes"
    elif value in (".", ".."):
        problem = "is '.' or '..'"
    elif any(c in value for c in "/:\0") or any(c.isspace() for c in value):
        problem = "contains '/', ':', NUL or whitespace"
    elif value == "lo":
        problem = "is the loopback device every netns has"
    if problem:
        raise CNIError(Code.INVALID_ENV, "invalid interface name", f"CNI_IFNAME {value!r} {problem}")


def parse_cni_args(raw: str) -> dict[str, str]:
    """`K=V;K=V` into a dict.  IgnoreUnknown is honoured by the caller."""
    out: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CNIError(Code.INVALID_ENV, "invalid CNI_ARGS", f"pair {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(Code.INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in VERBS:
        raise CNIError(Code.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [name for name in _REQUIRED[command] if not environ.get(name)]
    if missing:
        raise CNIError(Code.INVALID_ENV, f"required env variables [{', '.join(missing)}] missing")

    container_id = environ.get("CNI_CONTAINERID", "")
    ifname = environ.get("CNI_IFNAME", "")
    if container_id or "CNI_CONTAINERID" in _REQUIRED[command]:
        validate_container_id(container_id)
    if ifname or "CNI_IFNAME" in _REQUIRED[command]:
        validate_ifname(ifname)
    raw_args = environ.get("CNI_ARGS", "")
    return CniEnv(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
        args=parse_cni_args(raw_args),
        raw_args=raw_args,
    )
