"""packaging/cni-yogurt-agent.service and its cluster-mode drop-in: the command line systemd would
run, expanded as systemd expands it, read by the agent's own argument parser; the unit checked
by systemd-analyze where there is one."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cni_yogurt.cli import _parser

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNIT = PACKAGING / "cni-yogurt-agent.service"
DROP_IN = PACKAGING / "cni-yogurt-agent.service.d" / "cluster.conf"


def _settings(*files: Path) -> dict[str, list[str]]:
    """Every `Key=value` of the [Service] sections, in order, later files after earlier ones."""
    out: dict[str, list[str]] = {}
    for path in files:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out.setdefault(key, []).append(value)
    return out


def _exec_start(*files: Path) -> list[str]:
    """ExecStart as systemd runs it: Environment= assignments applied; `$NAME` split into words,
    `${NAME}` one word (systemd.service(5), "Command lines")."""
    settings = _settings(*files)
    env: dict[str, str] = {}
    for assignment in settings.get("Environment", []):
        for word in shlex.split(assignment):
            name, _, value = word.partition("=")
            env[name] = value
    argv: list[str] = []
    for word in shlex.split(settings["ExecStart"][-1]):
        if word.startswith("${") and word.endswith("}"):
            argv.append(env.get(word[2:-1], ""))
        elif word.startswith("$"):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(word)
    return argv


def test_the_unit_runs_the_agent_on_the_default_dirs_and_only_the_agent_is_killed() -> None:
    argv = _exec_start(UNIT)
    args = _parser().parse_args(argv[1:])
    assert (args.cmd, args.state_dir, args.bpffs_dir, args.cluster) == (
        "agent",
        "/run/cni-yogurt",
        "/sys/fs/bpf/cni-yogurt",
        None,
    )
    # wireguard-go, started by the agent in cluster mode, must outlive a restart of the agent.
    assert _settings(UNIT)["KillMode"] == ["process"]


def test_the_cluster_drop_in_adds_the_cluster_file() -> None:
    args = _parser().parse_args(_exec_start(UNIT, DROP_IN)[1:])
    assert (args.cmd, args.cluster, args.state_dir) == (
        "agent",
        "/etc/cni-yogurt/cluster.json",
        "/run/cni-yogurt",
    )
    assert "network-online.target" in DROP_IN.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
def test_systemd_analyze_accepts_the_unit_and_its_drop_in(tmp_path: Path) -> None:
    # The plugin is not installed here: the unit's ExecStart names a binary that exists.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/lib/cni/yogurt", "/bin/true"))
    drop_in = tmp_path / f"{UNIT.name}.d"
    drop_in.mkdir()
    shutil.copy(DROP_IN, drop_in / DROP_IN.name)
    run = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "Unknown" not in run.stderr and "Invalid" not in run.stderr, run.stderr
