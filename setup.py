"""Only what pyproject.toml cannot say: the wheel records the commit it was built from.

build_py writes cni_yogurt/_commit into the build (never into the checkout) when the source
is a git checkout; a source without one (tests/kernel/releases/build.sh archives a commit)
brings its own _commit.  cni_yogurt/release.py reads it.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        if os.path.exists(os.path.join(here, "cni_yogurt", "_commit")):
            return  # the source brought its own (build.sh), copied as package data
        target = os.path.join(self.build_lib, "cni_yogurt", "_commit")
        if os.path.exists(target):
            os.unlink(target)  # an earlier build's, in a reused build dir
        head = _git_commit(here)
        if head:
            with open(target, "w", encoding="ascii") as f:
                f.write(head + "\n")


def _git_commit(here: str) -> str:
    """The checkout's commit, as cni_yogurt/release.py reads it (one implementation: loaded
    from its file, without importing the package)."""
    import importlib.util
    import sys

    sys.path.insert(0, here)  # release.py reads the version from the package's __init__ (one line)
    spec = importlib.util.spec_from_file_location("_yogurt_release", os.path.join(here, "cni_yogurt", "release.py"))
    if spec is None or spec.loader is None:
        return ""
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._git_commit(here))


setup(cmdclass={"build_py": BuildPyWithCommit})
