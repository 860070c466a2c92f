"""The cold path: compile bpf/yogurt.bpf.c with bcc, load it and pin it.

Runs once per node (per boot), when the pins are missing.  Importing bcc
pulls in LLVM, so nothing on the ADD/DEL hot path may import this module's
dependencies; `datapath.ensure_loaded` calls it under a lock.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cni_yogurt.kernel import bpf

SOURCE_NAME = "yogurt.bpf.c"
MAP_NAME = "yogurt_pairs"
PRIMARY_FN = "yogurt_primary"
PEER_FN = "yogurt_peer"


def source_path() -> Path:
    """bpf/yogurt.bpf.c: shipped in the package as `_bpf` (a link to the top-level bpf/)."""
    override = os.environ.get("YOGURT_BPF_SOURCE")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "_bpf" / SOURCE_NAME


def new_secret() -> int:
    """The cb mark: random per load, never 0 (a zeroed cb must not pass)."""
    return secrets.randbits(32) or 1


def compile_and_pin(map_pin: str, peer_pin: str, primary_pin: str) -> None:
    """Load both programs and the pairing map, pin the map first and the
    primary program last: the primary pin's presence means "complete"."""
    import bcc  # heavy: LLVM

    text = source_path().read_text(encoding="utf-8")
    module = bcc.BPF(text=text, cflags=[f"-DYOGURT_SECRET={new_secret()}U", "-w"])
    try:
        peer = module.load_func(PEER_FN, bcc.BPF.SCHED_CLS)
        primary = module.load_func(PRIMARY_FN, bcc.BPF.SCHED_CLS)
        bpf.obj_pin(module[MAP_NAME].map_fd, map_pin)
        bpf.obj_pin(peer.fd, peer_pin)
        bpf.obj_pin(primary.fd, primary_pin)
    finally:
        module.cleanup()
