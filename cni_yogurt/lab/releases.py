"""Earlier real releases, run as an operator has them: each from its own wheel, in a venv of its own.

The tests move lines from these (tests/kernel/releases/ keeps one wheel per release, built from its
own commit by build.sh there) and run mixed releases across lab nodes.  Nothing here is the plugin's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Release:
    abi: int
    commit: str
    wheel: Path

    @property
    def name(self) -> str:
        return f"abi{self.abi}-{self.commit}"

    @property
    def version(self) -> str:
        """The version its wheel carries (every release before 0.5.0 called itself 0.1.0)."""
        return self.wheel.name.split("-")[1]


def kept(folder: Path) -> list[Release]:
    """Every release wheel kept under `folder` (`abi<N>-<commit>/<one wheel>`), oldest ABI first."""
    found = []
    for sub in sorted(folder.iterdir()):
        named = re.fullmatch(r"abi(\d+)-([0-9a-f]{7,})", sub.name)
        if named:
            wheels = sorted(sub.glob("*.whl"))
            if len(wheels) != 1:
                raise ValueError(f"{sub}: one wheel wanted, found {wheels}")
            found.append(Release(int(named.group(1)), named.group(2), wheels[0]))
    return sorted(found, key=lambda r: r.abi)


def install(release: Release, venv: Path) -> list[str]:
    """The release's `yogurt`, installed from its wheel into `venv` (made here): the command to run it.

    The venv sees the system's bcc (--system-site-packages) and, through a .pth, the dependencies
    of the running interpreter's site-packages (pyroute2, structlog: offline, no index), which come
    after its own: its cni_yogurt is the release's.  Checked: the installed package is the
    release's ABI and lives in the venv, not in a checkout.
    """
    if not release.wheel.is_file():
        raise FileNotFoundError(f"{release.wheel} is missing: build it from {release.commit}")
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True
    )
    python = str(venv / "bin/python")
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(target, "current-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
    subprocess.run([*pip, "--no-deps", "--no-index", str(release.wheel)], check=True, capture_output=True)
    where = subprocess.run(  # -P: not from the current dir (a checkout), as its `yogurt` script
        [python, "-P", "-c", "import cni_yogurt.datapath as d; print(d.ABI, d.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if where[0] != str(release.abi) or not where[1].startswith(target):
        raise RuntimeError(f"{release.name} installed as {where}: not the release's own code")
    return [str(venv / "bin/yogurt")]
