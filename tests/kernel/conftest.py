"""Kernel tests: root and a real kernel, natively or in the netkit VM that `make test` boots.

Every test drives the plugin exactly as a runtime does (exec with CNI_*
variables and the config on stdin) in throw-away namespaces, and must leave
nothing behind: the `node` fixture fails a test that leaves a device, a link
pin, a map entry, a line end or an IP lease of its own containers.  Looking
only at a test's own containers lets tests run in parallel (pytest-xdist).

Tests of the wire and the verbs run once per backend the kernel offers
(`backend`: netkit, veth with tcx links, veth with clsact filters), or those
named in YOGURT_TEST_BACKENDS; `auto` there runs them with the plugin's own
choice ("mode": "auto"), as a node would.  Tests marked `runtime` (cnitool,
podman, containerd, the wheel) always leave the choice to the plugin.  Every
ADD in auto mode must pick YOGURT_TEST_AUTO_PICKS (a backend name; default:
netkit if offered, else veth-tcx, else veth-tc), so a run on a kernel known to
lack something states what the plugin has to find out by itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt import backend as backends
from cni_yogurt import health, lab
from cni_yogurt.datapath import ImpairMap, PairMap, Pins, detach, pinned_link_names
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.line import naming
from cni_yogurt.line.registry import Registry
from cni_yogurt.line.wiring import leave

# YOGURT_TEST_NODE_DIRS=<suffix> gives a run dirs of its own, so that two checkouts' suites can share
# a machine without sharing a registry or pins.
_SUFFIX = os.environ.get("YOGURT_TEST_NODE_DIRS", "")
BPFFS_DIR = "/sys/fs/bpf/cni-yogurt-test" + (f"-{_SUFFIX}" if _SUFFIX else "")
STATE_DIR = "/run/cni-yogurt-test" + (f"-{_SUFFIX}" if _SUFFIX else "")
# In the VM, the log goes to the result dir the host keeps (see tests/vm/guest.sh).
LOG_FILE = os.path.join(os.environ.get("YOGURT_VM_OUT", "/tmp"), "cni-yogurt-test.log")
# The one-file binary (`make binary`) that the runtime tests hand to real runtimes.
BINARY = Path(__file__).resolve().parents[2] / "dist" / "yogurt"


# Test backend name -> the config keys that force it.
BACKENDS: dict[str, dict[str, str]] = {
    "netkit": {"mode": "netkit"},
    "veth-tcx": {"mode": "veth", "vethAttach": "tcx"},
    "veth-tc": {"mode": "veth", "vethAttach": "tc"},
    "veth-split": {"mode": "veth", "vethAttach": "split"},
    "auto": {},  # the plugin picks; every ADD must pick AUTO_PICKS
}


def _offered() -> dict[str, str | None]:
    """Each backend -> None if this kernel offers it, else why not (a feature probe, not a guess)."""
    if os.geteuid() != 0:
        return dict.fromkeys(BACKENDS, "kernel tests need root")
    netkit = health.probe_netkit()
    tcx = backends.tcx_supported()
    return {
        "netkit": None if netkit.ok else f"no netkit: {netkit.detail}",
        "veth-tcx": None if tcx else "no tcx (Linux < 6.6)",
        "veth-tc": None,
        "veth-split": None if tcx else "no tcx (Linux < 6.6)",
        "auto": None,
    }


OFFERED = _offered()
_REQUESTED = [b for b in os.environ.get("YOGURT_TEST_BACKENDS", "").split(",") if b]
# Natively everything the kernel offers; in the VMs `make test` names netkit, or auto.
SELECTED = _REQUESTED or [b for b, why in OFFERED.items() if why is None and b != "auto"]
# What "mode": "auto" must give here: said by whoever runs the tests, or the first offered.
AUTO_PICKS = os.environ.get("YOGURT_TEST_AUTO_PICKS") or next(
    b for b in ("netkit", "veth-tcx", "veth-tc") if OFFERED[b] is None
)
_REASON = None if os.geteuid() == 0 else "kernel tests need root"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runtime: a real runtime or install; the plugin picks the backend")
    unknown = set(_REQUESTED) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"YOGURT_TEST_BACKENDS: unknown {sorted(unknown)}; known: {sorted(BACKENDS)}")
    if AUTO_PICKS not in set(BACKENDS) - {"auto"}:
        raise pytest.UsageError(f"YOGURT_TEST_AUTO_PICKS: unknown {AUTO_PICKS!r}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("runtime") is None:
        # A module may run on fewer (BACKENDS_HERE): e.g. what an older release cannot make.
        here = getattr(metafunc.module, "BACKENDS_HERE", SELECTED)
        metafunc.parametrize("backend", [b for b in SELECTED if b in here], scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
    # `make test` sets this: a missing feature there is a broken setup, not a reason to skip.
    require = os.environ.get("YOGURT_REQUIRE_KERNEL") == "1"
    missing = {b: why for b in SELECTED if (why := OFFERED.get(b)) is not None}
    if require and (missing or _REASON):
        raise pytest.UsageError(f"YOGURT_REQUIRE_KERNEL=1 but {_REASON or missing}")
    for item in items:
        if "kernel" not in item.keywords:
            continue
        param = getattr(item, "callspec", None)
        why = _REASON or (missing.get(param.params.get("backend", "")) if param else None)
        if why:
            item.add_marker(pytest.mark.skip(reason=f"{why} (`make test` runs netkit in a VM)"))


@pytest.fixture(scope="module")
def backend() -> str | None:
    """Overridden by parametrization for wire/verb tests; None: the plugin picks ("mode": "auto")."""
    return None


class Node:
    """The plugin's view of this node, for one test."""

    def __init__(self, tmp_path: Any, backend: str | None = None) -> None:
        self.tmp = tmp_path
        self.backend = backend
        self.tag = uuid.uuid4().hex[:6]
        self.counter = itertools.count(1)
        self.cni_path = lab.have_host_local() or "/usr/lib/cni"
        self.namespaces: list[lab.Netns] = []
        # Containers a runtime named itself (cnitool, podman, containerd), not
        # after one of our namespaces: watched for leftovers all the same.
        self.runtime_ids: set[str] = set()
        self.ifindexes: set[int] = set()  # host-side devices this test's ADDs made
        self.pins = Pins.under(BPFFS_DIR)
        self.registry = Registry(STATE_DIR)
        self.exe: list[str] | None = None  # the plugin's command line; None: this package's

    def conf(
        self,
        name: str = "",
        version: str = "1.1.0",
        subnet4: str = "10.42.0.0/24",
        subnet6: str | None = "fd42::/64",
        **extra: Any,
    ) -> dict[str, Any]:
        ranges = [[{"subnet": subnet4}]] + ([[{"subnet": subnet6}]] if subnet6 else [])
        return {
            "cniVersion": version,
            "name": name or f"net-{self.tag}",
            "type": "yogurt",
            "bpffsDir": BPFFS_DIR,
            "stateDir": STATE_DIR,
            "logFile": LOG_FILE,
            "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"), "ranges": ranges},
            **(BACKENDS[self.backend] if self.backend else {}),
            **extra,
        }

    def conflist(self, name: str, subnet: str = "10.42.0.0/24") -> dict[str, Any]:
        """conf/10-yogurt.conflist, on this test's node state, for a runtime to read."""
        return {
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "yogurt",
                    "line": f"phone-{self.tag}",
                    "bpffsDir": BPFFS_DIR,
                    "stateDir": STATE_DIR,
                    "logFile": LOG_FILE,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.tmp / "ipam"),
                        "ranges": [[{"subnet": subnet}]],
                        "routes": [{"dst": subnet}],
                    },
                }
            ],
        }

    def binary_bin_dir(self) -> Path:
        """A CNI bin dir as a node has it: `yogurt` (dist/yogurt, not the venv) and host-local."""
        return binary_bin_dir(self.tmp / "cni-bin", "host-local")

    def plugin_events(self, container_ids: set[str]) -> set[tuple[str, str]]:
        """(verb, container id) of every call from the plugin's log that ended "ok"."""
        return {
            (e["verb"], e["container_id"])
            for e in plugin_log(container_ids)
            if e.get("outcome") == "ok" and e.get("container_id") in container_ids
        }

    def netns(self) -> lab.Netns:
        ns = lab.Netns(f"yt-{self.tag}-{next(self.counter)}").create()
        self.namespaces.append(ns)
        return ns

    def run(self, command: str, conf: dict[str, Any], ns: lab.Netns | None, **kw: Any) -> lab.PluginRun:
        kw.setdefault("container_id", ns.name if ns else "gone")
        kw.setdefault("exe", self.exe)
        return lab.run_plugin(command, conf, netns=ns.path if ns else "", cni_path=self.cni_path, **kw)

    def add(self, conf: dict[str, Any], ns: lab.Netns, **kw: Any) -> dict[str, Any]:
        run = self.run("ADD", conf, ns, **kw)
        assert run.rc == 0, f"ADD {ns.name} failed: {run.out} {run.stderr}"
        self.ifindexes.add(ifindex(run.out["interfaces"][0]["name"]))
        want = self.expected_pick(conf)
        got = run.out["yogurt"]
        assert want is None or (got["backend"], got["attach"]) == want, f"wanted {want}: {run.out}"
        return run.out

    def expected_pick(self, conf: dict[str, Any]) -> tuple[str, str] | None:
        """(backend, attach) an ADD with `conf` must end on; None: any."""
        if "mode" not in conf:
            keys = BACKENDS[AUTO_PICKS]
        elif self.backend and self.backend != "auto":
            keys = BACKENDS[self.backend]
        else:
            return None
        return keys["mode"], keys.get("vethAttach", "netkit")

    def delete(self, conf: dict[str, Any], ns: lab.Netns, **kw: Any) -> None:
        run = self.run("DEL", conf, ns, **kw)
        assert run.rc == 0, f"DEL {ns.name} failed: {run.out} {run.stderr}"

    # -- what the node holds ---------------------------------------------------

    def container_ids(self) -> set[str]:
        return {ns.name for ns in self.namespaces} | self.runtime_ids

    def host_names(self) -> set[str]:
        return {naming.host_ifname(cid, "eth0") for cid in self.container_ids()}

    def devices(self) -> set[str]:
        with Rtnl() as nl:
            return {
                name for link in nl.links() if (name := link.get_attr("IFLA_IFNAME")) in self.host_names()
            }

    def map_entries(self) -> dict[int, Any]:
        if not self.pins.loaded():
            return {}
        with PairMap(self.pins) as pairs:
            found: dict[Any, Any] = {
                k: v for k, v in pairs.items() if k in self.ifindexes or v.host_ifindex in self.ifindexes
            }
        if self.pins.has_impair():
            with ImpairMap(self.pins) as impairs:
                found |= {f"impair {k}": impairs.get(k) for k in impairs.keys() if k in self.ifindexes}  # noqa: SIM118
        return found

    def ends(self) -> dict[str, Any]:
        ours = self.container_ids()
        return {k: e for k, e in self.registry.snapshot().items() if e.container_id in ours}

    def leases(self) -> list[str]:
        root = self.tmp / "ipam"
        if not root.exists():
            return []
        return sorted(p.name for p in root.rglob("*") if p.is_file() and _is_ip(p.name))

    def leftovers(self) -> dict[str, Any]:
        found = {
            "devices": sorted(self.devices()),
            "link pins": sorted(pinned_link_names(self.pins) & self.host_names()),
            "map entries": self.map_entries(),
            "line ends": sorted(self.ends()),
            "IP leases": self.leases(),
        }
        return {k: v for k, v in found.items() if v}


def admin_cli(*argv: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """The admin CLI on the tests' node dirs (as `user` if given)."""
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    return subprocess.run(
        [*prefix, *lab.self_command(), *argv, "--state-dir", STATE_DIR, "--bpffs-dir", BPFFS_DIR],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def node(tmp_path: Any, backend: str | None) -> Iterator[Node]:
    n = Node(tmp_path, backend)
    before = n.leftovers()
    assert not before, f"node not clean before the test: {before}"
    with _must_leave_nothing(n, "test"):
        yield n


class Phone:
    """Two ends of one line, wired: shared by the tests that only observe it (the `phone`
    fixture), or made by a test on a config of its own (`conf`)."""

    def __init__(
        self,
        node: Node,
        subnet4: str = "10.42.0.0/24",
        subnet6: str = "fd42::/64",
        conf: dict[str, Any] | None = None,
    ) -> None:
        self.node = node
        self.conf = conf or node.conf(subnet4=subnet4, subnet6=subnet6)
        self.one, self.two = node.netns(), node.netns()
        self.r1, self.r2 = node.add(self.conf, self.one), node.add(self.conf, self.two)
        self.a4, self.a6 = addresses(self.r1)
        self.b4, self.b6 = addresses(self.r2)
        self.host_one = self.r1["interfaces"][0]["name"]
        self.host_two = self.r2["interfaces"][0]["name"]
        self.mac_one = self.r1["interfaces"][1]["mac"]
        self.mac_two = self.r2["interfaces"][1]["mac"]

    def hang_up(self) -> None:
        self.node.delete(self.conf, self.one)
        self.node.delete(self.conf, self.two)


@pytest.fixture(scope="module")
def phone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, backend: str | None
) -> Iterator[Phone]:
    """One per test module; a module whose tests route host traffic to the phone names its own
    subnets (PHONE_SUBNETS), so that two modules' host routes never collide."""
    n = Node(tmp_path_factory.mktemp("phone"), backend)
    with _must_leave_nothing(n, "the phone"):
        p = Phone(n, *getattr(request.module, "PHONE_SUBNETS", ()))
        yield p
        p.hang_up()


@contextlib.contextmanager
def private_dirs(node: Node, tmp_path: Path, purpose: str) -> Iterator[dict[str, Any]]:
    """node.conf() on a state dir and a bpffs dir no other test uses, for tests that break
    them on purpose or load programs of their own there; the bpffs dir goes afterwards."""
    bpffs = f"/sys/fs/bpf/cni-yogurt-{purpose}-{node.tag}"
    conf = node.conf(stateDir=str(tmp_path / "state"), bpffsDir=bpffs)
    node.pins, node.registry = Pins.under(bpffs), Registry(conf["stateDir"])
    try:
        yield conf
    finally:
        shutil.rmtree(bpffs, ignore_errors=True)  # every release's pins under it


@contextlib.contextmanager
def _must_leave_nothing(n: Node, who: str) -> Iterator[None]:
    """Delete the namespaces, then fail if anything of `who`'s containers is left."""
    try:
        yield
    finally:
        for ns in n.namespaces:
            ns.delete()
    after = n.leftovers()
    _scrub(n)
    assert not after, f"{who} left state behind: {after}"


def _scrub(n: Node) -> None:
    """Best effort, so that one failing test does not fail those that follow."""
    with Rtnl() as nl:
        for link in nl.links():
            if link.get_attr("IFLA_IFNAME") in n.host_names():
                nl.delete_link(link["index"])
    for name in n.host_names():
        detach(n.pins, name)
    for end in n.ends().values():
        leave(n.registry, n.pins, end)
    if n.pins.loaded():
        with PairMap(n.pins) as pairs:
            for index in n.ifindexes:
                pairs.cut(index)


def binary_bin_dir(dest: Path, *plugins: str) -> Path:
    """`dest` as a runtime's CNI bin dir: `yogurt` (dist/yogurt) and these reference plugins."""
    dest.mkdir()
    (dest / "yogurt").symlink_to(BINARY)
    found = lab.have_host_local() or "/usr/lib/cni"  # a directory, or host-local itself if only on PATH
    plugin_dir = os.path.dirname(found) if found.endswith("/host-local") else found
    for name in plugins:
        (dest / name).symlink_to(os.path.join(plugin_dir, name))
    return dest


def plugin_log(mentioning: Iterable[str]) -> list[dict[str, Any]]:
    """The plugin's log events whose line mentions any of these strings.

    A line another process is still writing is skipped.
    """
    wanted = tuple(mentioning)
    if not os.path.exists(LOG_FILE):
        return []
    events = []
    with open(LOG_FILE, encoding="utf-8") as f:
        for line in f:
            if any(m in line for m in wanted):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
    return events


def require_binary(test_file: str, *others: tuple[str, str]) -> None:
    """Fail collection of a runtime test whose artefacts are missing: broken setup, not a skip.

    Checked before the kernel tests' skip (no netkit) could hide it; `make test`
    builds them all before it boots the VM. `others`: (path or command, how to get it).
    """
    missing = [] if os.access(BINARY, os.X_OK) else [f"{BINARY}: build it with `make binary`"]
    missing += [
        f"{what}: {how}" for what, how in others if not (os.access(what, os.X_OK) or shutil.which(what))
    ]
    if missing:
        pytest.fail(f"{test_file}: " + "; ".join(missing), pytrace=False)


def ifindex(device: str) -> int:
    with open(f"/sys/class/net/{device}/ifindex") as f:
        return int(f.read())


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def addresses(result: dict[str, Any]) -> tuple[str, str | None]:
    """(IPv4, IPv6 or None) that ADD gave the container."""
    ips = [ip["address"].split("/")[0] for ip in result["ips"]]
    return next(ip for ip in ips if ":" not in ip), next((ip for ip in ips if ":" in ip), None)
