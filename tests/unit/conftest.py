"""Helpers for the unit tests: no root, no kernel, nothing written outside tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt.cni.version import SUPPORTED_VERSIONS

BIN_DIR = Path(sys.executable).parent
HOST_LOCAL = Path("/usr/lib/cni/host-local")

# Every CNI_* variable a verb may need, with valid values; tests drop or
# override the ones they are about.
CNI_VARS: dict[str, str] = {
    "CNI_CONTAINERID": "ctr-1",
    "CNI_NETNS": "/var/run/netns/ctr-1",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
}


@dataclass
class PluginRun:
    """One execution of the plugin: exit code, stdout parsed as JSON (None if it is not), raw streams."""

    rc: int
    out: Any
    stdout: str
    stderr: str

    def assert_error(self, code: int) -> None:
        """The run failed the way the CNI spec says a plugin fails."""
        assert self.rc != 0, f"exit 0 for an error; stdout={self.stdout!r}"
        assert isinstance(self.out, dict), f"stdout is not a JSON object: {self.stdout!r}"
        assert {"cniVersion", "code", "msg"} <= set(self.out), self.out
        assert self.out["cniVersion"] in SUPPORTED_VERSIONS, self.out
        assert isinstance(self.out["msg"], str) and self.out["msg"], self.out
        assert self.out["code"] == code, self.out
        assert "Traceback" not in self.stdout + self.stderr, self.stderr


def cni_env(command: str, **overrides: str | None) -> dict[str, str]:
    """CNI_COMMAND plus all CNI_* variables; an override of None removes that variable."""
    env = {"CNI_COMMAND": command, **CNI_VARS}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
def make_env() -> Callable[..., dict[str, str]]:
    return cni_env


@pytest.fixture
def make_conf(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """A network config whose every path is under tmp_path (no /var/log, /run, /sys/fs/bpf)."""

    def make(cni_version: str = SUPPORTED_VERSIONS[-1], **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": cni_version,
            "name": "testnet",
            "type": "yogurt",
            "logFile": str(tmp_path / "log.jsonl"),
            "stateDir": str(tmp_path / "state"),
            "bpffsDir": str(tmp_path / "bpffs"),
        }
        conf.update(extra)
        return {k: v for k, v in conf.items() if v is not None}

    return make


@pytest.fixture(scope="session")
def yogurt_bin() -> str:
    found = shutil.which("yogurt", path=str(BIN_DIR))
    if found is None:
        pytest.fail(f"no `yogurt` executable in {BIN_DIR}: run `pip install -e .` in the venv")
    return found


@pytest.fixture
def run_plugin(yogurt_bin: str) -> Callable[..., PluginRun]:
    """Run the `yogurt` executable as a runtime does: env vars + config on stdin.

    `stdin` may be a dict (sent as JSON), str, bytes, or None (stdin is /dev/null).
    """

    def run(env: dict[str, str], stdin: dict[str, Any] | str | bytes | None = None) -> PluginRun:
        if isinstance(stdin, dict):
            stdin = json.dumps(stdin)
        if isinstance(stdin, str):
            stdin = stdin.encode()
        proc = subprocess.run(
            [yogurt_bin],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            timeout=60,
            check=False,
        )
        stdout = proc.stdout.decode(errors="replace")
        try:
            out = json.loads(stdout)
        except ValueError:
            out = None
        return PluginRun(proc.returncode, out, stdout, proc.stderr.decode(errors="replace"))

    return run


@pytest.fixture(scope="session")
def host_local() -> Path:
    """The real host-local IPAM plugin: missing is a failure, not a skip (CI installs it)."""
    if not (HOST_LOCAL.is_file() and os.access(HOST_LOCAL, os.X_OK)):
        pytest.fail(
            f"{HOST_LOCAL} not found: install Debian's containernetworking-plugins "
            "(apt-get install containernetworking-plugins)"
        )
    return HOST_LOCAL


@pytest.fixture
def fake_plugin(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write an executable script `name` into tmp_path/bin and return it."""

    def make(name: str, script: str) -> Path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        path = bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
        return path

    return make
