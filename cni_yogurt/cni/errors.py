"""CNI error codes (SPEC section "Error") and the exception that carries them."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Code(IntEnum):
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    # Plugin-specific codes start at 100.
    LINE_FULL = 100
    KERNEL = 101
    DATAPATH = 102
    CHECK_FAILED = 103
    IPAM_FAILED = 104
    ALREADY_ATTACHED = 105
    # The line's other end is on a node whose release cannot carry a line with this one's.
    INCOMPATIBLE_RELEASE = 106
    # Like the reference plugins' skel: an unexpected failure.
    INTERNAL = 999


class CNIError(Exception):
    """An error the plugin reports to the runtime as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"
