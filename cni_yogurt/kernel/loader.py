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


def source_path() -> Path:
    """bpf/yogurt.bpf.c: shipped in the package as `_bpf` (a link to the top-level bpf/)."""
    override = os.environ.get("YOGURT_BPF_SOURCE")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "_bpf" / SOURCE_NAME


def new_secret() -> int:
    """The cb mark: 64 random bits per node, never 0 (a zeroed cb must not pass)."""
    return secrets.randbits(64) or 1


def compile_and_pin(
    maps: dict[str, str], programs: dict[str, str], cache_dir: str, mark: tuple[str, bytes]
) -> None:
    """Load the programs ({pin path: function}) and their maps ({pin path: map}); write
    the mark (map name, value at key 0) before anything is pinned, then pin the maps
    first and the programs in order: all pins present means "complete"."""
    source = source_path()
    if not source.is_file():
        raise FileNotFoundError(f"the BPF source {source} is missing: reinstall cni-yogurt")
    kernel_source = headers.bcc_kernel_source(cache_dir)
    if kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = kernel_source
    import bcc  # heavy: LLVM

    module = bcc.BPF(text=source.read_text(encoding="utf-8"), cflags=["-w"])
    try:
        loaded = {pin: module.load_func(fn, bcc.BPF.SCHED_CLS) for pin, fn in programs.items()}
        mark_map, value = mark
        table = module[mark_map]
        bpf.Map(table.map_fd, 4, len(value)).update(bytes(4), value)  # not closed: bcc owns the fd
        for pin, name in maps.items():
            bpf.obj_pin(module[name].map_fd, pin)
        crash_point("add:loading")
        for pin, fn in loaded.items():
            bpf.obj_pin(fn.fd, pin)
    finally:
        module.cleanup()
