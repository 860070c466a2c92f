"""Installed as anyone installs a Python package: `pip install .` (a wheel, not editable) into a fresh venv.

The venv sees the system's site-packages only for bcc, which is not on PyPI.
The plugin is then exec'd from the venv's own `yogurt` entry point, and its
first ADD compiles the programs into a fresh bpffs dir, so the BPF source
must have come with the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Node, addresses

from cni_yogurt import __version__, lab
from cni_yogurt.datapath import Pins, unload

pytestmark = pytest.mark.runtime
REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "bpf", "cni_yogurt", "packaging/bin")


def _sh(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    # Not from the checkout: `python -c` would import ./cni_yogurt instead of the installed one.
    run = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=600, cwd="/"
    )
    assert run.returncode == 0, f"{argv}: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the package pip-installed from a copy of the tree (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "src"
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tree / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy(src, tree / name)
    venv = tmp / "venv"
    # The interpreter that has bcc (Debian's python3-bpfcc): the one our own venv came from.
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    _sh(base, "-m", "venv", "--system-site-packages", venv)
    _sh(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", tree)
    return venv


def test_the_wheel_carries_the_bpf_source_and_doctor_checks_it(installed: Path) -> None:
    site = _sh(
        installed / "bin" / "python",
        "-c",
        "import cni_yogurt, os; print(os.path.dirname(cni_yogurt.__file__))",
    )
    package = Path(site.stdout.strip())
    assert installed in package.parents, f"{package} is not the wheel's install"
    source = package / "_bpf" / "yogurt.bpf.c"
    assert source.is_file() and not source.is_symlink()
    assert source.read_text() == (REPO / "bpf" / "yogurt.bpf.c").read_text()
    doctor = subprocess.run(
        [installed / "bin" / "yogurt", "doctor"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd="/",
    )
    assert f"ok  source     BPF source {source}" in doctor.stdout, doctor.stdout
    # The version pyproject.toml read from the package; no commit: the copy is no git checkout.
    version = _sh(installed / "bin" / "yogurt", "version")
    assert version.stdout.startswith(f"cni-yogurt {__version__}; pin ABI "), version.stdout


def test_add_check_del_through_the_installed_entry_point(node: Node, installed: Path) -> None:
    # A bpffs dir of its own: the first ADD must compile from the installed source.
    bpffs = f"/sys/fs/bpf/cni-yogurt-wheel-{node.tag}"
    conf = node.conf(bpffsDir=bpffs)
    node.pins = Pins.under(bpffs)  # so the node fixture looks for leftovers there
    exe = [str(installed / "bin" / "yogurt")]
    one, two = node.netns(), node.netns()
    try:
        results = {}
        for ns in (one, two):
            results[ns.name] = node.add(conf, ns, exe=exe)
        assert node.pins.loaded()
        b4, _ = addresses(results[two.name])
        assert lab.ping(one, b4) == 2
        for ns in (one, two):
            run = node.run("CHECK", {**conf, "prevResult": results[ns.name]}, ns, exe=exe)
            assert run.rc == 0, run.out
        for ns in (one, two):
            node.delete(conf, ns, exe=exe)
        assert lab.ping(one, b4) == 0
    finally:
        left = node.leftovers()
        unload(node.pins)
        os.rmdir(bpffs)
    assert left == {}
