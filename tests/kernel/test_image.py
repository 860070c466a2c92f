"""The image of `make image` (packaging/kubernetes/), run under podman as the DaemonSet runs it.

The init step, with the DaemonSet's own mounts (its hostPaths, with /opt/cni/bin mapped to a
scratch dir) and the node's network and PID namespaces, installs the plugin: complete,
executable, and by rename — while the old plugin file is busy running, which an in-place
write would fail on ("text file busy") and which keeps running from its old inode.

Not yet here: the agent from the image serving ADDs (it comes with the node agent).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BINARY, Node, require_binary
from podman import Podman

pytestmark = pytest.mark.runtime
require_binary("test_image.py", ("podman", "install Debian's podman (4.x)"))

TOP = Path(__file__).resolve().parents[2]
KUBE = TOP / "packaging" / "kubernetes"
IMAGE = "localhost/cni-yogurt:latest"


def daemonset() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((KUBE / "daemonset.yaml").read_text()))
    return next(d for d in docs if d and d.get("kind") == "DaemonSet")


def podman_run_args(
    pod: dict[str, Any], container: dict[str, Any], host_paths: dict[str, Path], host_pid: bool = True
) -> list[str]:
    """`podman run` options for one container of the DaemonSet's pod: its host namespaces,
    privilege and hostPath mounts (a hostPath in `host_paths` mapped to a scratch dir).
    `host_pid=False`: the node's PID namespace is not joined even if the pod asks for it."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = ["--rm"]
    if pod.get("hostNetwork"):
        args += ["--network", "host"]
    if pod.get("hostPID") and host_pid:
        args += ["--pid", "host"]
    security = container.get("securityContext", {})
    if security.get("privileged"):
        args.append("--privileged")
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "hostPath" in volume, f"{mount['name']}: only hostPath volumes are mapped here"
        source = host_paths.get(volume["hostPath"]["path"])
        assert source is not None, f"{volume['hostPath']['path']} has no scratch stand-in"
        args += ["-v", f"{source}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
    return args


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_image_installs_the_plugin_by_rename_while_the_old_one_runs(node: Node, tmp_path: Path) -> None:
    context = tmp_path / "context"
    subprocess.run(["bash", str(KUBE / "build-image.sh"), "--stage", str(context)], check=True)
    cni_bin = tmp_path / "opt-cni-bin"
    cni_bin.mkdir()
    # The old plugin, busy: a program running from the very file the install replaces.
    old = cni_bin / "yogurt"
    old.write_bytes(Path("/bin/sleep").read_bytes())
    old.chmod(0o755)
    old_inode = old.stat().st_ino
    busy = subprocess.Popen([str(old), "600"])
    try:
        with pytest.raises(OSError) as in_place:  # what writing into it would meet
            os.open(old, os.O_WRONLY)
        assert in_place.value.strerror == "Text file busy"

        spec = daemonset()["spec"]["template"]["spec"]
        init = next(c for c in spec["initContainers"] if c["name"] == "install-plugin")
        with Podman(tmp_path / "podman", node.conflist(f"image-{node.tag}"), node.binary_bin_dir()) as podman:
            podman("build", "--quiet", "-t", IMAGE, str(context))
            run = podman(
                "run",
                # The test's podman runs without cgroups (tests/kernel/podman.py), and podman then
                # insists on a PID namespace of the container's own; the install step never looks
                # at processes, so the node's PID namespace (hostPID, for the agent) changes nothing.
                *podman_run_args(spec, init, {"/opt/cni/bin": cni_bin}, host_pid=False),
                IMAGE,
                *init["command"],
                check=False,
            )
            assert run.returncode == 0, f"install step: {run.stdout} {run.stderr}"
            assert "installed" in run.stdout
            # The agent's command is the image's too (the DaemonSet names it; the image runs it bare).
            agent = next(c for c in spec["containers"] if c["name"] == "agent")
            cmd = podman("image", "inspect", "--format", "{{json .Config.Cmd}}", IMAGE).stdout.strip()
            assert yaml.safe_load(cmd) == agent["command"]
            version = podman(
                "run", "--rm", "--network", "none", IMAGE, "/usr/local/bin/yogurt", "version"
            ).stdout
            assert version.startswith("cni-yogurt ")
    finally:
        busy.kill()
        busy.wait()
    installed = cni_bin / "yogurt"
    assert installed.stat().st_ino != old_inode, "replaced in place, not renamed over"
    assert sha256(installed) == sha256(BINARY), "the installed plugin is not all of dist/yogurt"
    assert installed.stat().st_mode & 0o777 == 0o755
    assert sorted(os.listdir(cni_bin)) == ["yogurt"], "a temporary file was left"
    run = subprocess.run([str(installed), "version"], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.startswith("cni-yogurt "), run
