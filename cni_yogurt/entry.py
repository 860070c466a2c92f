"""The `yogurt` executable: a CNI plugin when CNI_COMMAND is set, else the admin CLI.

Kept import-light on purpose: VERSION must answer without importing
pyroute2, bcc or structlog.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _load_verbs() -> Any:
    from cni_yogurt import plugin

    return plugin


def main() -> int:
    if "CNI_COMMAND" in os.environ:
        from cni_yogurt.cni import skel

        return skel.main(_load_verbs)
    from cni_yogurt.cli import main as cli_main

    return cli_main(sys.argv[1:])
