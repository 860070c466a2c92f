"""Host-side device names: stable, collision-safe and at most 15 bytes."""

from __future__ import annotations

import hashlib

PREFIX = "yg"
_HASH_CHARS = 13  # 52 bits: "yg" + 13 = 15 bytes, IFNAMSIZ - 1


def host_ifname(container_id: str, ifname: str) -> str:
    """Derived from the attachment, so DEL finds the device without any state."""
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return PREFIX + digest[:_HASH_CHARS]


def is_ours(name: str) -> bool:
    return (
        len(name) == len(PREFIX) + _HASH_CHARS
        and name.startswith(PREFIX)
        and all(c in "0123456789abcdef" for c in name[len(PREFIX) :])
    )
