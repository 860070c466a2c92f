"""The image of `make image` (packaging/kubernetes/), run under podman as the DaemonSet runs it.

The init step, with the DaemonSet's own mounts (its hostPaths, with /opt/cni/bin mapped to a
scratch dir) and the node's network and PID namespaces, installs the plugin: complete,
executable, and by rename — while the old plugin file is busy running, which an in-place
write would fail on ("text file busy") and which keeps running from its old inode.

The agent from the image, with the agent container's mounts and host network, serves the ADDs
of the plugin the init step installed (exec'd on the host, as a runtime execs it); stopped,
it leaves the line passing packets, and the plugin alone deletes it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BINARY, Node, addresses, private_dirs, require_binary
from manifests import KUBE, daemonset, podman_run_args, wait_for_agent
from podman import Podman

from cni_yogurt import lab
from cni_yogurt.agent import frontend, protocol

pytestmark = pytest.mark.runtime
require_binary("test_image.py", ("podman", "install Debian's podman (4.x)"))

FRONT = BINARY.parent / "yogurt-front"  # make front (kernel-native builds it)
IMAGE = "localhost/cni-yogurt:latest"


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
    # `yogurt` is the compiled front end now, the plugin beside it as yogurt-full.
    assert sha256(installed) == sha256(FRONT), "the installed front end is not all of dist/yogurt-front"
    assert sha256(cni_bin / "yogurt-full") == sha256(BINARY), "the installed plugin is not all of dist/yogurt"
    for path in (installed, cni_bin / "yogurt-full"):
        assert path.stat().st_mode & 0o777 == 0o755
    assert sorted(os.listdir(cni_bin)) == ["yogurt", "yogurt-full"], "a temporary file was left"
    run = subprocess.run([str(installed), "version"], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.startswith("cni-yogurt "), run  # through to yogurt-full


def test_the_image_runs_the_agent_that_serves_the_node(node: Node, tmp_path: Path) -> None:
    context = tmp_path / "context"
    subprocess.run(["bash", str(KUBE / "build-image.sh"), "--stage", str(context)], check=True)
    cni_bin = tmp_path / "opt-cni-bin"  # the node's /opt/cni/bin: the plugin (installed) and host-local
    cni_bin.mkdir()
    runtime_bin = node.binary_bin_dir()
    shutil.copy(runtime_bin / "host-local", cni_bin)
    log = tmp_path / "cni-yogurt.log"
    log.touch()
    spec = daemonset()["spec"]["template"]["spec"]
    init = next(c for c in spec["initContainers"] if c["name"] == "install-plugin")
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    name = f"yogurt-agent-{node.tag}"
    with private_dirs(node, tmp_path, "image") as conf:
        state_dir, bpffs_dir = conf["stateDir"], conf["bpffsDir"]
        os.makedirs(state_dir)
        # Before podman's namespace: it keeps the node's /run/netns as it is when made.
        one, two = node.netns(), node.netns()
        host_paths = {
            "/opt/cni/bin": cni_bin,
            "/sys/fs/bpf": Path("/sys/fs/bpf"),
            "/run/cni-yogurt": Path(state_dir),
            "/run/netns": Path("/run/netns"),
            "/etc/cni/net.d": tmp_path / "net.d",
            "/var/log/cni-yogurt.log": log,
            # Kernel headers are the node's (not in the image): this machine is the node.
            "/lib/modules": Path("/lib/modules"),
            "/usr/src": Path("/usr/src"),
        }
        (tmp_path / "net.d").mkdir()
        with Podman(
            tmp_path / "podman", node.conflist(f"image-{node.tag}"), runtime_bin, host_netns=True
        ) as podman:
            podman("build", "--quiet", "-t", IMAGE, str(context))
            run = podman(
                "run",
                *podman_run_args(spec, init, host_paths, host_pid=False),
                IMAGE,
                *init["command"],
                check=False,
            )
            assert run.returncode == 0, f"install step: {run.stdout} {run.stderr}"
            plugin = [str(cni_bin / "yogurt")]
            node.cni_path = str(cni_bin)  # host-local: where the node keeps it, and the agent sees it
            # The agent container as the DaemonSet has it, but on the test's private state and
            # bpffs dirs; the test's dirs are also at their own paths inside (a runtime hands
            # the agent the paths it sees: the state dir, the IPAM plugin's dir and data dir).
            command = [*agent["command"][:2], "--state-dir", state_dir, "--bpffs-dir", bpffs_dir]
            # Not the node's PID namespace: podman without cgroups refuses it ("containers not
            # creating Cgroups must create a private PID namespace"); the netns here are paths
            # under /run/netns, not /proc/<pid>/ns/net, so the agent does not need it.
            args = [a for a in podman_run_args(spec, agent, host_paths, host_pid=False) if a != "--rm"]
            try:
                podman("run", "-d", "--name", name, *args, "-v", f"{tmp_path}:{tmp_path}", IMAGE, *command)
                wait_for_agent(podman, name, state_dir)
                node.add(conf, one, exe=plugin)
                r2 = node.add(conf, two, exe=plugin)
                served = frontend.info(state_dir, timeout=30)
                assert served is not None and served["served"] == 2, (
                    f"the agent did not serve both ADDs: {served}"
                )
                b4, _ = addresses(r2)
                assert lab.ping(one, b4) == 2
                # SIGTERM, as kubelet stops it: a clean exit, its socket gone, the line still up.
                podman("stop", "--time", "30", name)
                code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
                assert code == "0", f"the agent exited {code}: {podman('logs', name, check=False).stderr}"
                assert not os.path.exists(os.path.join(state_dir, protocol.SOCKET_NAME))
                assert lab.ping(one, b4) == 2, "the line stopped passing packets with the agent"
                # Without the agent, the plugin does the DELs itself.
                node.delete(conf, one, exe=plugin)
                node.delete(conf, two, exe=plugin)
            finally:
                podman("rm", "--force", "--time", "0", name, check=False)
