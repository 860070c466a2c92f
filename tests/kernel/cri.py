"""containerd as a Kubernetes node runs it, driven through the CRI gRPC API, for the runtime tests.

Debian 12 ships no crictl: the client is the CRI's own api.proto compiled to
Python stubs (packaging/build-cri-stubs.sh writes them to .cache/cri). Each
`Containerd` is a private daemon: its own config, root, state, sockets, CNI
config and plugin dirs, all under one test directory, so it never meets the
node's own containerd (if any) and leaves nothing behind.

It runs in a private mount namespace. There a private directory is
bind-mounted over /var/lib, because libcni caches ADD results in
/var/lib/cni, fixed, and fails an ADD it cannot cache (the VM's root is
read-only). So is one over /run/containerd, where containerd 1.6 puts its
shims' sockets whatever its state dir: a host whose /run is a disk directory,
not a tmpfs, would keep any a killed shim leaves. A bonus: every mount
containerd makes (snapshots, the sandboxes' /dev/shm, network namespaces)
lives and dies with that namespace. Those mounts are invisible from the
host's mount namespace, so paths containerd reports (a sandbox's netns) are
reached through /proc/<containerd>/root.

The VM that runs the kernel tests emulates its CPU (~100x slower than
native): every wait here is in minutes, and containerd's own shim timeouts
are raised to match.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from images import docker_archive

REPO = Path(__file__).resolve().parents[2]
STUBS = Path(os.environ.get("YOGURT_CRI_DIR") or REPO / ".cache" / "cri")
NAMESPACE = "k8s.io"  # the containerd namespace CRI works in
PAUSE_REF = "localhost/yogurt-pause:1"
DEADLINE = 600.0  # seconds, for any one CRI call or wait
SHIM_SOCKETS = "/run/containerd/s"  # where containerd 1.6 puts shim sockets, whatever its state dir
# (a private dir is mounted over /run/containerd; on the host only the mount point is made)
TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "crun", "unshare", "nsenter")
# Plugins a CNI test never needs; fewer plugins, a faster start in the VM.
DISABLED_PLUGINS = [
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    # makes /opt/containerd/{bin,lib} on the host (its default path), for nothing a test uses
    "io.containerd.internal.v1.opt",
]  # not runtime.v1.linux: the tasks service (and so CRI) fails to load without it


# Run in the private mount namespace before containerd ($0: the /var/lib to
# use, $1: the /run/containerd).
# crun reads the cgroup layout even with cgroups disabled (it mounts
# /sys/fs/cgroup into the container), and crun 1.8 fails every container on a
# hybrid host whose cgroup v2 has a controller ("cgroups in hybrid mode not
# supported, drop all controllers from cgroupv2": v1 on a tmpfs at
# /sys/fs/cgroup, v2 with hugetlb under unified/). Wherever /sys/fs/cgroup is
# not cgroup v2 (hybrid, v1, or nothing mounted, as a bare VM may have it), a
# fresh cgroup2 mount over it, in this namespace only, is a layout crun takes.
_PRIVATE_MOUNTS = """
mount --bind "$0" /var/lib || exit
mkdir -p /run/containerd && mount --bind "$1" /run/containerd && shift || exit
[ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit
exec "$@"
"""


def missing() -> list[str]:
    """What this harness needs and does not find (empty: ready)."""
    found = []
    for name in ("api_pb2.py", "api_pb2_grpc.py"):
        if not (STUBS / name).is_file():
            found.append(f"{STUBS / name} is missing: generate it with `make cri-stubs`")
    try:
        import grpc  # noqa: F401
    except ImportError:
        found.append("no grpcio in this Python: install the project's dev extra (`make venv`)")
    tools = [t for t in TOOLS if not shutil.which(t)]
    if tools:
        found.append(f"not found: {', '.join(tools)} (packages containerd, crun, util-linux)")
    return found


def stubs() -> tuple[ModuleType, ModuleType]:
    """(api_pb2, api_pb2_grpc), the generated CRI runtime.v1 client."""
    if str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    import api_pb2
    import api_pb2_grpc

    return api_pb2, api_pb2_grpc


@dataclass
class Sandbox:
    """A pod sandbox as CRI reports it (verbose PodSandboxStatus)."""

    id: str
    name: str
    state: str  # SANDBOX_READY or SANDBOX_NOTREADY
    ip: str  # the pod's first IP (eth0's)
    ips: list[str]  # all of them
    netns: str  # path as containerd sees it (in its mount namespace)
    pid: int  # the sandbox's (pause) process, 0 once stopped
    info: dict[str, Any]


class Containerd:
    """A private containerd with the CRI plugin, for one test module.

    Use as a context manager: start() on entry; stop() on exit removes any
    sandbox still there, stops the daemon and kills whatever process of it
    survived (listed in `survivors`, which a clean run leaves empty).
    """

    def __init__(self, base: Path, cni_bin_dir: Path, log_path: Path | None = None) -> None:
        self.base = base
        self.cni_bin_dir = cni_bin_dir
        self.cni_conf_dir = base / "net.d"
        self.log_path = log_path or base / "containerd.log"
        self.config = base / "config.toml"
        self.var_lib = base / "var-lib"  # /var/lib for containerd and its children
        self.run_dir = base / "run-containerd"  # their /run/containerd
        self.sockets: Path | None = None  # a short dir: unix socket paths have 107 bytes at most
        self.address = ""
        self.snapshotter = os.environ.get("YOGURT_CRI_SNAPSHOTTER", "")  # else: overlayfs if it works here
        self.proc: subprocess.Popen[bytes] | None = None
        self._had_run_containerd = os.path.exists(os.path.dirname(SHIM_SOCKETS))
        self.mnt_ns = ""
        self._mnt_ns_fd = -1
        self.pids: dict[int, str] = {}  # sandbox pid -> its start time, to tell pid reuse apart
        self.survivors: list[str] = []
        self.networks: list[str] = []  # names of the CNI networks used, in turn
        self.last_status: Any = None  # the latest StatusResponse
        self._channel: Any = None
        self.runtime: Any = None  # RuntimeServiceStub
        self.api: Any = None  # api_pb2

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> Containerd:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        import grpc

        self.api, api_grpc = stubs()
        for d in (self.cni_conf_dir, self.var_lib, self.run_dir, self.base / "root", self.base / "state"):
            d.mkdir(parents=True, exist_ok=True)
        self.sockets = Path(tempfile.mkdtemp(prefix="yogurt-ctrd-"))
        self.address = str(self.sockets / "containerd.sock")
        self.snapshotter = self.snapshotter or _snapshotter(self.base)
        self._write_config()
        _loopback_up()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon keeps it
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", _PRIVATE_MOUNTS, str(self.var_lib), str(self.run_dir),
                "containerd", "--config", str(self.config)]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._channel = grpc.insecure_channel(f"unix://{self.address}")
        self.runtime = api_grpc.RuntimeServiceStub(self._channel)
        self.wait(lambda: self._status(lambda c: c.type == "RuntimeReady" and c.status), "the CRI runtime")
        self.mnt_ns = os.readlink(f"/proc/{self.proc.pid}/ns/mnt")
        # Held open until the survivors are counted: once containerd is gone, the kernel would
        # give its namespace's inode number (which `mnt_ns` names) to the next new mount
        # namespace, e.g. an `ip netns exec` of another test, whose processes would then
        # look like containerd's.
        self._mnt_ns_fd = os.open(f"/proc/{self.proc.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._import_pause()

    def stop(self, timeout: float = DEADLINE) -> None:
        """Remove what sandboxes are left, stop the daemon, kill any survivor."""
        if self.proc is None:
            self._remove_socket_dirs()
            return
        if self.proc.poll() is None and self.runtime is not None:
            with contextlib.suppress(Exception):
                self.remove_all()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.survivors.append(f"{self.proc.pid} containerd (ignored SIGTERM for {timeout:.0f}s)")
                self.proc.kill()
                self.proc.wait()
        # Shims outlive containerd by design (a restarted daemon reconnects):
        # one still running here means a sandbox that was never removed.
        found = self._processes()
        self.survivors += [f"{pid} {cmd}" for pid, cmd in found.items()]
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(list(found), timeout=60)
        if self._mnt_ns_fd >= 0:
            os.close(self._mnt_ns_fd)
            self._mnt_ns_fd = -1
        self.proc = None
        self._remove_socket_dirs()

    def _remove_socket_dirs(self) -> None:
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)
        if not self._had_run_containerd:  # the shims' socket dir, fixed in containerd 1.6
            for d in (SHIM_SOCKETS, os.path.dirname(SHIM_SOCKETS)):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only if empty

    def remove_all(self) -> None:
        """Stop and remove every sandbox, best effort (the path a kubelet takes)."""
        for sandbox_id in self.sandbox_ids():
            with contextlib.suppress(Exception):
                self.stop_pod_sandbox(sandbox_id)
            with contextlib.suppress(Exception):
                self.remove_pod_sandbox(sandbox_id)

    def _processes(self) -> dict[int, str]:
        """Live processes of this daemon: in its mount namespace (shims), or a sandbox's pid."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if not _alive(pid):
                continue
            try:
                mine = (self.mnt_ns and os.readlink(f"/proc/{pid}/ns/mnt") == self.mnt_ns) or (
                    self.pids.get(pid) == _start_time(pid)
                )
                if mine:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        found[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue  # gone meanwhile
        return found

    def _write_config(self) -> None:
        wrapper = self.base / "crun-no-cgroups"
        # The test node's cgroups are not the runtime's to manage (and differ
        # between the host and the VM): crun runs the containers without any
        # (containerd's `disable_cgroup` only leaves cgroupsPath out of the spec).
        wrapper.write_text('#!/bin/sh\nexec crun --cgroup-manager=disabled "$@"\n')
        wrapper.chmod(0o755)
        slow = f"{int(DEADLINE)}s"
        cri = "plugins.'io.containerd.grpc.v1.cri'"
        self.config.write_text(
            f"""version = 2
root = {_q(self.base / "root")}
state = {_q(self.base / "state")}
disabled_plugins = {json.dumps(DISABLED_PLUGINS)}

[grpc]
  address = {_q(self.address)}
[ttrpc]
  address = {_q(self.address + ".ttrpc")}

[timeouts]
  "io.containerd.timeout.shim.cleanup" = "{slow}"
  "io.containerd.timeout.shim.load" = "{slow}"
  "io.containerd.timeout.shim.shutdown" = "{slow}"
  "io.containerd.timeout.task.state" = "{slow}"

[{cri}]
  sandbox_image = {_q(PAUSE_REF)}
  restrict_oom_score_adj = true
  disable_cgroup = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = {_q(self.snapshotter)}
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = {_q(wrapper)}
  Root = {_q(self.base / "state" / "crun")}
[{cri}.cni]
  bin_dir = {_q(self.cni_bin_dir)}
  conf_dir = {_q(self.cni_conf_dir)}
  max_conf_num = 1
"""
        )

    def _import_pause(self) -> None:
        archive = docker_archive(self.base / "pause.tar", PAUSE_REF, ["/bin/sleep", "infinity"])
        self.ctr("images", "import", "--snapshotter", self.snapshotter, str(archive))

    def ctr(self, *args: str) -> str:
        argv = ["ctr", "--address", self.address, "--namespace", NAMESPACE, *args]
        run = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=DEADLINE)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {run.stdout} {run.stderr}\n{self.log_tail()}")
        return run.stdout

    # -- waiting ----------------------------------------------------------------

    def wait(self, ready: Any, what: str, timeout: float = DEADLINE) -> None:
        """Poll ready() until it is true; fail early if the daemon died."""
        end = time.monotonic() + timeout
        delay = 0.05
        while not ready():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"containerd exited ({self.proc.returncode}) waiting for {what}\n{self.log_tail()}"
                )
            if time.monotonic() > end:
                raise TimeoutError(f"containerd: no {what} after {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _status(self, want: Any) -> bool:
        import grpc

        if not os.path.exists(self.address):
            return False
        try:
            resp = self.runtime.Status(self.api.StatusRequest(verbose=True), timeout=120)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # the socket serves, the CRI plugin failed to load
                raise RuntimeError(f"containerd runs without CRI: {e.details()}\n{self.log_tail()}") from None
            return False  # not serving yet ("server is not initialized yet")
        self.last_status = resp
        return any(want(c) for c in resp.status.conditions)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no containerd log)"
        return "containerd log, last lines:\n" + "\n".join(text[-lines:])

    # -- CNI --------------------------------------------------------------------

    def use_network(self, conflist: dict[str, Any], timeout: float = DEADLINE) -> Path:
        """Make `conflist` the (only) CNI network and wait until CRI has loaded it."""
        self.networks.append(conflist["name"])
        for old in self.cni_conf_dir.iterdir():
            old.unlink()
        path = self.cni_conf_dir / f"10-{conflist['name']}.conflist"
        tmp = self.cni_conf_dir / ".new"  # libcni reads only *.conf, *.conflist, *.json
        tmp.write_text(json.dumps(conflist, indent=2))
        tmp.rename(path)

        def loaded() -> bool:
            if not self._status(lambda c: c.type == "NetworkReady" and c.status):
                return False
            cni = json.loads(self.last_status.info.get("cniconfig", "{}"))
            # This very content, not only the name: a test may swap one network's config.
            return any(
                n["Config"]["Name"] == conflist["name"]
                and _same_json(n["Config"].get("Source", ""), conflist)
                for n in cni.get("Networks") or []
            )

        self.wait(loaded, f"CNI network {conflist['name']!r}", timeout)
        return path

    def cni_cache(self) -> list[str]:
        """Results libcni keeps between ADD and DEL (empty once every sandbox is gone)."""
        results = self.var_lib / "cni" / "results"
        return sorted(p.name for p in results.iterdir()) if results.exists() else []

    # -- CRI ----------------------------------------------------------------------

    def run_pod_sandbox(self, name: str) -> Sandbox:
        api = self.api
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="yogurt-test"),
            hostname=name,
            log_directory=str(self.base / "pods" / name),
            # Its own resolv.conf: no dependency on the node's.
            dns_config=api.DNSConfig(servers=["192.0.2.53"]),
            linux=api.LinuxPodSandboxConfig(),
        )
        resp = self.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=DEADLINE)
        sandbox = self.sandbox(resp.pod_sandbox_id)
        if sandbox.pid:
            self.pids[sandbox.pid] = _start_time(sandbox.pid)
        return sandbox

    def sandbox(self, sandbox_id: str) -> Sandbox:
        api = self.api
        resp = self.runtime.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=DEADLINE
        )
        info = json.loads(resp.info.get("info", "{}"))
        namespaces = ((info.get("runtimeSpec") or {}).get("linux") or {}).get("namespaces") or []
        netns = next((n.get("path", "") for n in namespaces if n.get("type") == "network"), "")
        network = resp.status.network
        return Sandbox(
            id=sandbox_id,
            name=resp.status.metadata.name,
            state=api.PodSandboxState.Name(resp.status.state),
            ip=network.ip,
            ips=[network.ip, *(a.ip for a in network.additional_ips)] if network.ip else [],
            netns=netns,
            pid=int(info.get("pid") or 0),
            info=info,
        )

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(
            self.api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=DEADLINE
        )

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.runtime.RemovePodSandbox(
            self.api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=DEADLINE
        )

    def sandbox_ids(self) -> list[str]:
        resp = self.runtime.ListPodSandbox(self.api.ListPodSandboxRequest(), timeout=DEADLINE)
        return [s.id for s in resp.items]

    # -- the host's view ----------------------------------------------------------

    def host_path(self, path: str) -> str:
        """A path as containerd sees it (its mount namespace), reachable from the host."""
        assert self.proc is not None and self.proc.poll() is None, "containerd is not running"
        return f"/proc/{self.proc.pid}/root{path}"

    def in_netns(
        self, sandbox: Sandbox, *argv: str, timeout: float = DEADLINE
    ) -> subprocess.CompletedProcess[str]:
        """Run a host command in the sandbox's network namespace."""
        return subprocess.run(
            ["nsenter", f"--net={self.host_path(sandbox.netns)}", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def ping(self, sandbox: Sandbox, address: str) -> subprocess.CompletedProcess[str]:
        return self.in_netns(sandbox, "ping", "-n", "-c", "2", "-W", "5", address)


def _same_json(text: str, obj: Any) -> bool:
    try:
        return bool(json.loads(text) == obj)
    except ValueError:
        return False


def _q(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]; [] if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")  # a zombie is dead, only not reaped yet


def _wait_gone(pids: list[int], timeout: float) -> None:
    end = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)


def _loopback_up() -> None:
    """CRI's streaming server listens on 127.0.0.1; a bare VM may boot with lo down."""
    with open("/sys/class/net/lo/operstate") as f:
        state = f.read().strip()
    if state == "down":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _snapshotter(base: Path) -> str:
    """overlayfs where the test dir can hold an overlay upper dir, else native (copies)."""
    probe = base / "overlay-probe"
    dirs = [probe / d for d in ("lower1", "lower2", "upper", "work", "merged")]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    lower1, lower2, upper, work, merged = dirs
    opts = f"lowerdir={lower1}:{lower2},upperdir={upper},workdir={work}"
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--",
         "mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True, check=False, timeout=DEADLINE,
    )  # fmt: skip
    shutil.rmtree(probe, ignore_errors=True)
    return "overlayfs" if run.returncode == 0 else "native"
