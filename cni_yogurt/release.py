"""What this release is: its version, the ABI of its pins, the commit it was built from.

The version has one home, cni_yogurt/__init__.py (`__version__`): pyproject.toml reads it
from there (a dynamic version), and so does everything that reports it (`yogurt version`,
`yogurt status`, the agent's info and metrics).  It follows semantic versioning, and
CHANGELOG.md says what each release changed, what an operator must do, and from which
releases live lines move in place.

The commit is known where the package was built from a git checkout: the wheel carries it in
`_commit` (written by setup.py at build time, or by tests/kernel/releases/build.sh for an
older release), a run from a checkout asks git.  Nothing here is on the CNI verbs' path: the
VERSION verb answers from cni/version.py alone.
"""

from __future__ import annotations

import os

from cni_yogurt import __version__

VERSION = __version__
# Lines of these ABIs move onto this release's programs in place (`yogurt upgrade`, or the next
# ADD or GC): from HITLESS_FROM_ABI on without a datagram lost (the secret is in a map, handed
# on); ABI 3 with one short window per direction (its secret was compiled in).  Measured by
# tests/kernel/test_upgrade_from_release.py against real releases' wheels (CHANGELOG.md).
MOVES_FROM_ABI = 3
HITLESS_FROM_ABI = 4

_HERE = os.path.dirname(os.path.abspath(__file__))


def commit() -> str:
    """The commit this package was built from ("" where unknown): `_commit` beside it, else,
    run from a git checkout, git's answer (with "-dirty" for uncommitted changes)."""
    try:
        with open(os.path.join(_HERE, "_commit"), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        pass
    return _git_commit(os.path.dirname(_HERE))


def _git_commit(checkout: str) -> str:
    if not os.path.exists(os.path.join(checkout, ".git")):
        return ""
    import subprocess  # only here: an admin command, never a verb

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", checkout, *argv], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short=7", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}-dirty" if head and dirty else head


def describe() -> dict[str, object]:
    """The release as `yogurt version --json`, `yogurt status --json` and the agent report it."""
    from cni_yogurt import datapath

    return {
        "version": VERSION,
        "abi": datapath.ABI,
        "commit": commit(),
        "moves_from_abi": MOVES_FROM_ABI,
        "hitless_from_abi": HITLESS_FROM_ABI,
    }


def line() -> str:
    """One line for people: `cni-yogurt <version> (commit <c>); pin ABI <n>; ...`."""
    from cni_yogurt.cni.version import SUPPORTED_VERSIONS

    info = describe()
    built = f" (commit {info['commit']})" if info["commit"] else ""
    return (
        f"cni-yogurt {VERSION}{built}; pin ABI {info['abi']}; moves live lines in place from ABI "
        f"{MOVES_FROM_ABI} (without a datagram lost from ABI {HITLESS_FROM_ABI}); "
        f"CNI spec versions {', '.join(SUPPORTED_VERSIONS)}"
    )
