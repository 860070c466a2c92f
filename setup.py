"""Only what pyproject.toml cannot say: the wheel records the commit it was built from.

build_py writes cni_yogurt/_commit into the build (never into the checkout) when the source
is a git checkout; a source without one (tests/kernel/releases/build.sh archives a commit)
brings its own _commit.  cni_yogurt/release.py reads it.
"""

import os
import subprocess

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
        if not os.path.exists(os.path.join(here, ".git")):
            return
        try:
            head = subprocess.run(
                ["git", "-C", here, "rev-parse", "--short=7", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return
        if head:
            with open(target, "w", encoding="ascii") as f:
                f.write(f"{head}-dirty\n" if dirty else f"{head}\n")


setup(cmdclass={"build_py": BuildPyWithCommit})
