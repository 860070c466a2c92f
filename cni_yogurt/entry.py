"""The `yogurt` executable: a CNI plugin when CNI_COMMAND is set, else the admin CLI.

Kept import-light on purpose: VERSION must answer without importing
pyroute2, bcc or structlog.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType


def _load_verbs() -> ModuleType:
    from cni_yogurt import plugin

    return plugin


def main() -> int:
    if os.environ.get("CNI_COMMAND") == "VERSION":
        # Runtimes ask this often (podman before every ADD): answered from
        # cni/version.py and json alone, before the protocol layer is loaded.
        import json

        from cni_yogurt.cni.version import version_info

        sys.stdout.write(json.dumps(version_info(sys.stdin.buffer.read())) + "\n")
        return 0
    if "CNI_COMMAND" in os.environ:
        from cni_yogurt.cni import skel

        return skel.main(_load_verbs)
    from cni_yogurt.cli import main as cli_main

    try:
        return cli_main(sys.argv[1:])
    except BrokenPipeError:
        # `yogurt status | head`: the reader left; say nothing more, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer its reader left
