"""The cold path: compile bpf/yogurt.bpf.c with bcc, load it and pin it.

Runs once per node (per boot), when the pins are missing.  Importing bcc
pulls in LLVM, so nothing on the ADD/DEL hot path may import this module's
dependencies; `datapath.ensure_loaded` calls it under a lock.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cni_yogurt.faults import crash_point
from cni_yogurt.kernel import bpf, headers

SOURCE_NAME = "yogurt.bpf.c"
MAP_NAME = "yogurt_pairs"


def source_path() -> Path:
    """bpf/yogurt.bpf.c: shipped in the package as `_bpf` (a link to the top-level bpf/)."""
    override = os.environ.get("YOGURT_BPF_SOURCE")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "_bpf" / SOURCE_NAME


def new_secret() -> int:
    """The cb mark: random per load, never 0 (a zeroed cb must not pass)."""
    return secrets.randbits(32) or 1


def compile_and_pin(map_pin: str, programs: dict[str, str], cache_dir: str) -> None:
    """Load the programs ({pin path: function}) and the pairing map; pin the
    map first and the programs in order: all pins present means "complete"."""
    source = source_path()
    if not source.is_file():
        raise FileNotFoundError(f"the BPF source {source} is missing: reinstall cni-yogurt")
    kernel_source = headers.bcc_kernel_source(cache_dir)
    if kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = kernel_source
    import bcc  # heavy: LLVM

    module = bcc.BPF(
        text=source.read_text(encoding="utf-8"), cflags=[f"-DYOGURT_SECRET={new_secret()}U", "-w"]
    )
    try:
        loaded = {pin: module.load_func(fn, bcc.BPF.SCHED_CLS) for pin, fn in programs.items()}
        bpf.obj_pin(module[MAP_NAME].map_fd, map_pin)
        crash_point("add:loading")
        for pin, fn in loaded.items():
            bpf.obj_pin(fn.fd, pin)
    finally:
        module.cleanup()
