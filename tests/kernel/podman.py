"""podman 4 (Debian's, CNI backend) with its own configuration, storage and mount namespace.

Nothing of the node's podman setup is used or touched: CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF replace the system files, and every podman command
runs in one private mount namespace held open by a `sleep` process, where

- the storage, libpod's state, /var/lib (libcni's fixed result cache,
  /var/lib/cni) and /var/tmp (where `podman import` stages) live on one tmpfs:
  the VM's root file system is read-only 9p, on which podman's bolt database
  fails anyway, and the tmpfs goes away with the namespace;
- /run/netns (where podman binds the containers' network namespaces) and
  /run/crun (crun's state) are on that tmpfs too: on a host whose /run is a
  disk directory, not a tmpfs, nothing of them can outlive the test;
- the cgroup v2 `unified` mount of a v1/v2 hybrid host is hidden, because crun
  refuses hybrid mode, and a cgroup2 is mounted where there is none at all.

Containers run without cgroups (`cgroups = "disabled"`, as the containerd
harness runs crun): the node's cgroups are not the test's, and with them
podman would leave its libpod_parent/ cgroups behind in every v1 hierarchy of
the host (and, in the VM, flip memcg's kmem static key: see tests/vm/run.sh).

Being one namespace for all commands matters: `podman run -d` mounts the
container's root there and `podman stop` later unmounts it there. Leaving it
waits until every process in it has ended (conmon and the `podman container
cleanup` it runs outlive `podman rm`), killing those that will not: then the
namespace, and every mount in it, is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Run = subprocess.CompletedProcess[str]

# Runs as the namespace's first process, then holds it open.
_HOLDER = r"""
set -eu
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0700 podman "$0"
mkdir -p "$0/storage" "$0/run" "$0/libpod" "$0/var-lib/cni" "$0/var-tmp" "$0/netns" "$0/crun"
mount --bind "$0/var-lib" /var/lib
mount --bind "$0/var-tmp" /var/tmp
mkdir -p /run/netns /run/crun
[ "$1" = host-netns ] || mount --bind "$0/netns" /run/netns
mount --bind "$0/crun" /run/crun
echo ready
exec sleep infinity
"""


class Podman:
    """One podman "node" for one test: `podman(...)` runs a podman command in it."""

    def __init__(
        self, workdir: Path, conflist: dict[str, Any], cni_bin: Path, host_netns: bool = False
    ) -> None:
        """`host_netns`: keep the node's /run/netns, as it was when the namespace was made (for
        host-network containers that open netns the test made before: podman binds none)."""
        self.workdir = workdir
        self.host_netns = host_netns
        self.network = conflist["name"]
        self.tmpfs = workdir / "tmpfs"
        net_d = workdir / "net.d"
        for d in (self.tmpfs, net_d):
            d.mkdir(parents=True)
        (net_d / f"10-{self.network}.conflist").write_text(json.dumps(conflist, indent=2))
        conf = workdir / "containers.conf"
        conf.write_text(
            f"""\
[containers]
# busybox's ping uses an ICMP datagram socket: allow it to root in the container
# (Debian's own containers.conf, which this file replaces, does the same).
default_sysctls = ["net.ipv4.ping_group_range=0 0"]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
# No cgroups: crun runs the containers with --cgroup-manager=disabled and
# conmon stays where it is (see the module docstring).
cgroups = "disabled"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni_bin}"]
network_config_dir = "{net_d}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
tmp_dir = "{self.tmpfs}/libpod"
"""
        )
        storage = workdir / "storage.conf"
        storage.write_text(
            f"""\
[storage]
driver = "overlay"
graphroot = "{self.tmpfs}/storage"
runroot = "{self.tmpfs}/run"
"""
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        self.env.update(CONTAINERS_CONF=str(conf), CONTAINERS_STORAGE_CONF=str(storage))
        self.holder: subprocess.Popen[str] | None = None
        self.mnt_ns = ""  # the namespace's /proc/<pid>/ns/mnt link
        self.survivors: list[str] = []  # processes that had to be killed on exit (a clean run: none)

    def __enter__(self) -> Podman:
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HOLDER, str(self.tmpfs)]
        argv.append("host-netns" if self.host_netns else "own-netns")
        self.holder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.kill()
            _, err = self.holder.communicate()
            raise RuntimeError(f"podman's mount namespace: {err.strip()}")
        self.mnt_ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.holder is not None
        holder = self.holder.pid
        # Open, the namespace's file keeps the namespace and so its inode
        # number (which `mnt_ns` names) from going to another one meanwhile.
        pin = os.open(f"/proc/{holder}/ns/mnt", os.O_RDONLY) if self.holder.poll() is None else -1
        try:
            try:
                self("rm", "--all", "--force", "--time", "0", check=False)
                _wait_gone(lambda: self._processes().keys() - {holder}, timeout=300)
            finally:
                self.holder.send_signal(signal.SIGKILL)
                self.holder.wait()
                found = self._processes()
                self.survivors += [f"{pid} {cmd}" for pid, cmd in found.items()]
                for pid in found:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _wait_gone(lambda: self._processes().keys(), timeout=60)
        finally:
            if pin >= 0:
                os.close(pin)

    def _processes(self) -> dict[int, str]:
        """pid -> command line of every live process in the namespace (the holder's too)."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:  # a zombie has left its namespaces: readlink fails for it
                if os.readlink(f"/proc/{entry}/ns/mnt") != self.mnt_ns:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue  # gone meanwhile
        return found

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        assert self.holder is not None, "use Podman as a context manager"
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", "podman", *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> Run:
        argv = self._argv(args)
        run = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout, check=False)
        if check and run.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {run.returncode}: {run.stderr.strip()}")
        return run

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A podman command left running, e.g. a foreground `podman run --rm`."""
        argv = self._argv(args)
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def wait_running(self, name: str, run: subprocess.Popen[str], timeout: float = 900) -> None:
        """Until container `name`, started by `run`, is up (or `run` ended: then fail with its output)."""
        deadline = time.monotonic() + timeout
        while self("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() != "true":
            if run.poll() is not None:
                out, err = run.communicate()
                raise AssertionError(f"podman run {name} exited {run.returncode}: {out} {err}")
            assert time.monotonic() < deadline, f"{name} not running after {timeout}s"
            time.sleep(1)

    def cached_results(self) -> list[str]:
        """libcni's result cache in the namespace (/var/lib/cni/results): one file per attachment."""
        assert self.holder is not None
        results = Path(f"/proc/{self.holder.pid}/root/var/lib/cni/results")
        return sorted(p.name for p in results.iterdir()) if results.exists() else []


def _wait_gone(pids: Callable[[], Iterable[int]], timeout: float) -> None:
    """Until pids() is empty, or timeout seconds have passed."""
    end = time.monotonic() + timeout
    while any(True for _ in pids()) and time.monotonic() < end:
        time.sleep(0.1)
