"""One version from one place, and what `yogurt version` says about the release."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cni_yogurt import __version__, release
from cni_yogurt.datapath import ABI

ROOT = Path(__file__).resolve().parents[2]
# semver.org's pattern, without build metadata
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?")


def _yogurt(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    return subprocess.run(
        [sys.executable, "-m", "cni_yogurt", *argv], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_version_is_semantic_and_pyproject_reads_it_from_the_package() -> None:
    assert SEMVER.fullmatch(__version__), __version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]  # no second copy to forget
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cni_yogurt.__version__"}


def test_the_changelog_has_this_release_and_says_from_which_releases_lines_move() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (\S+)", changelog, re.MULTILINE)
    assert headings[0] == __version__, headings  # newest first
    assert f"ABI {ABI}" in changelog.split("\n## ")[1]
    assert "Lines move in place from" in changelog.split("\n## ")[1]


@pytest.mark.parametrize("argv", [["version"], ["--version"]])
def test_version_names_the_release_the_pin_abi_and_the_commit(argv: list[str]) -> None:
    run = _yogurt(*argv)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"cni-yogurt {__version__}"), run.stdout
    assert f"pin ABI {ABI}" in run.stdout
    commit = release.commit()
    assert commit, "run from a checkout (or a built wheel): the commit is known"
    assert f"(commit {commit})" in run.stdout


def test_version_json() -> None:
    run = _yogurt("version", "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["version"] == __version__ and info["abi"] == ABI
    assert info["commit"] == release.commit()
    assert info["moves_from_abi"] <= info["hitless_from_abi"] <= ABI


def test_the_commit_comes_from_the_file_a_build_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "_commit").write_text("abc1234\n")
    monkeypatch.setattr(release, "_HERE", str(tmp_path))
    assert release.commit() == "abc1234"


def test_no_commit_outside_a_checkout_without_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "cni_yogurt"
    package.mkdir(parents=True)
    monkeypatch.setattr(release, "_HERE", str(package))
    assert release.commit() == ""


def test_a_built_wheel_carries_its_commit(tmp_path: Path) -> None:
    """setup.py writes _commit into the build from git (the wheel an operator installs)."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith(f"cni_yogurt-{__version__}-")
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        assert z.read("cni_yogurt/_commit").decode().strip() == release.commit()
