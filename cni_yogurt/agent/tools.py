"""The node tools the agent runs in cluster mode (wg, nft): one way to run them, with what failed
named in the caller's own error, never a traceback."""

from __future__ import annotations

import subprocess


def run_tool(
    argv: list[str], *, error: type[Exception], install: str, stdin: str | None = None, timeout: float = 10.0
) -> str:
    """The tool's stdout; `error` saying why not: not installed (`install`: the package that brings
    it), no answer within `timeout` seconds, or its exit status and stderr."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=timeout)
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed (Debian/Ubuntu: apt-get install {install})") from None
    except subprocess.TimeoutExpired:
        raise error(f"{' '.join(argv)} did not answer in {timeout:.0f} s") from None
    if proc.returncode:
        raise error(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout
