"""The `yogurt` executable: a CNI plugin when CNI_COMMAND is set, else the admin CLI.

Kept import-light on purpose: VERSION must answer without importing
pyroute2, bcc or structlog, and with a node agent running (`yogurt agent`)
a verb is only forwarded to it (agent/frontend.py, C modules only; or, before this
runs at all, by the compiled front end, agent/frontend.c).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself is not imported: see agent/protocol.py
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import TextIO


def _load_verbs() -> ModuleType:
    from cni_yogurt import plugin

    return plugin


def _write(stream: TextIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()

    return write


def main() -> int:
    command = os.environ.get("CNI_COMMAND")
    if command == "VERSION":
        # Runtimes ask this often (podman before every ADD): answered from
        # cni/version.py and json alone, before the protocol layer is loaded.
        import json

        from cni_yogurt.cni.version import version_info

        sys.stdout.write(json.dumps(version_info(sys.stdin.buffer.read())) + "\n")
        return 0
    if command is not None:
        data = sys.stdin.buffer.read()
        # Set by the compiled front end (agent/frontend.c) when it has asked the agent already.
        if os.environ.pop("YOGURT_NO_AGENT", None) != "1":
            from cni_yogurt.agent import frontend

            rc = frontend.forward(os.environb, data, _write(sys.stdout), _write(sys.stderr))
            if rc is not None:
                return rc
        import io

        from cni_yogurt.cni import skel

        # No agent (or none that answers): the verb runs here, exactly as without one.
        return skel.run(os.environ, io.BytesIO(data), sys.stdout, sys.stderr, _load_verbs)
    from cni_yogurt.cli import main as cli_main

    try:
        rc = cli_main(sys.argv[1:])
        sys.stdout.flush()  # block-buffered into a pipe: a reader that left shows up here, not at exit
        return rc
    except BrokenPipeError:
        # `yogurt status | head`: the reader left; say nothing more, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer its reader left
