"""Host-side device names: stable, collision-safe and at most 15 bytes."""

from __future__ import annotations

try:  # CPython's own SHA-256, built in: hashlib would load OpenSSL first (~2 ms per exec)
    from _sha256 import sha256 as _sha256  # 3.11
except ImportError:  # 3.12+ renamed it; other builds may lack it
    from hashlib import sha256 as _sha256

PREFIX = "yg"
_HASH_CHARS = 13  # 52 bits: "yg" + 13 = 15 bytes, IFNAMSIZ - 1


def sha256_hex(data: bytes) -> str:
    return str(_sha256(data).hexdigest())


def host_ifname(container_id: str, ifname: str) -> str:
    """Derived from the attachment, so DEL finds the device without any state."""
    return PREFIX + sha256_hex(f"{container_id}\0{ifname}".encode())[:_HASH_CHARS]


def is_ours(name: str) -> bool:
    return (
        len(name) == len(PREFIX) + _HASH_CHARS
        and name.startswith(PREFIX)
        and all(c in "0123456789abcdef" for c in name[len(PREFIX) :])
    )
