"""The plugin's verbs timed as a runtime execs them, side by side with ptp + host-local.

Every figure here is one exec of a plugin binary with CNI_* variables and the
config on stdin (cni_yogurt.lab.run_plugin), so process start-up is included:
it is most of what a CNI plugin costs.  Plugins take turns in every round
(yogurt, yogurt binary, ptp, yogurt, ...) so that a burst of load on the
machine hits them alike.

Everything is made under bench-only names: network names `ybench-*`, netns
`ybn*`, subnets 10.201-203.0.0/16, yogurt's own bpffsDir/stateDir; `Scratch`
removes all of it, even after a failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_yogurt import lab
from cni_yogurt.datapath import PairMap, Pins, pinned_link_names, unload
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.line import naming
from cni_yogurt.line.registry import Registry

# YOGURT_TEST_NODE_DIRS=<suffix>, as for the kernel tests: a run of its own beside another checkout's.
_SUFFIX = os.environ.get("YOGURT_TEST_NODE_DIRS", "")
PREFIX = "ybn" + _SUFFIX[:6]  # netns names; the kernel tests use other prefixes
BPFFS = "/sys/fs/bpf/cni-yogurt-bench" + (f"-{_SUFFIX}" if _SUFFIX else "")
STATE = "/run/cni-yogurt-bench" + (f"-{_SUFFIX}" if _SUFFIX else "")
# The node agent's (`yogurt agent`): dirs of its own, so that the plugins without it neither reach
# it (it serves its stateDir only) nor find the programs it loaded (the entry point's first ADD).
AGENT_BPFFS = BPFFS + "-agent"
AGENT_STATE = STATE + "-agent"


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class Plugin:
    key: str  # venv | bin | ptp
    label: str
    exe: list[str]
    type: str  # the netconf "type": yogurt or ptp
    subnet: str
    size: int | None = None  # bytes on disk (None: the venv entry point)
    via_agent: bool = False  # its configs name the node agent's stateDir: the exec forwards
    conf_keys: dict[str, str] = field(default_factory=dict)  # more netconf keys (the veth attach mode)

    @property
    def state(self) -> str:
        return AGENT_STATE if self.via_agent else STATE

    @property
    def bpffs(self) -> str:
        return AGENT_BPFFS if self.via_agent else BPFFS

    @property
    def is_yogurt(self) -> bool:
        return self.type == "yogurt"


@dataclass
class Samples:
    """Seconds per (plugin key, figure)."""

    data: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, key: str, figure: str, seconds: float) -> None:
        self.data.setdefault(key, {}).setdefault(figure, []).append(seconds)


class Scratch:
    """Bench-only configs, netns and dirs; `close` removes every one, whatever happened."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="yogurt-bench-")
        self.netns: dict[str, lab.Netns] = {}
        # What an ADD may have made and no DEL has removed yet: (network, cid, ifname) -> how to DEL it.
        self.attachments: dict[tuple[str, str, str], tuple[Plugin, dict[str, Any], str]] = {}
        self.names_made: set[tuple[bool, str, str]] = set()
        self._lock = threading.Lock()
        for bpffs, state in ((BPFFS, STATE), (AGENT_BPFFS, AGENT_STATE)):  # left by an interrupted run
            unload(Pins.under(bpffs))
            shutil.rmtree(state, ignore_errors=True)

    def conf(self, plugin: Plugin, network: str, cni_version: str = "1.0.0") -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": cni_version,
            "name": f"ybench-{network}",
            "type": plugin.type,
            # IPv4 only: ptp waits for IPv6 DAD to settle, which would time a timer, not the plugin.
            # The route lets two ptp containers reach each other through the host (the wire bench).
            "ipam": {
                "type": "host-local",
                "dataDir": f"{self.tmp}/ipam",
                "ranges": [[{"subnet": plugin.subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}] if not plugin.is_yogurt else [],
            },
        }
        if plugin.is_yogurt:
            conf.update(bpffsDir=plugin.bpffs, stateDir=plugin.state, logFile=f"{self.tmp}/yogurt.log")
        conf.update(plugin.conf_keys)
        return conf

    def ns(self, name: str) -> lab.Netns:
        with self._lock:
            if name not in self.netns:
                self.netns[name] = lab.Netns(f"{PREFIX}{name}").create()
            return self.netns[name]

    def track(self, plugin: Plugin, conf: dict[str, Any], cid: str, netns: str, ifname: str) -> None:
        with self._lock:
            self.attachments[conf["name"], cid, ifname] = (plugin, conf, netns)
            self.names_made.add((plugin.is_yogurt, cid, ifname))

    def untrack(self, conf: dict[str, Any], cid: str = "", ifname: str = "eth0") -> None:
        """DEL succeeded (or GC removed the whole network: no cid)."""
        with self._lock:
            for key in [
                k for k in self.attachments if k[0] == conf["name"] and (not cid or k[1:] == (cid, ifname))
            ]:
                del self.attachments[key]

    def close(self) -> None:
        """DEL whatever ADD may have left, then remove netns, pins, state, IPAM leases."""
        if self.attachments:
            log(f"cleanup: DEL of {len(self.attachments)} attachments")
        with ThreadPoolExecutor(8) as pool:
            for (_, cid, ifname), (plugin, conf, netns) in self.attachments.items():
                pool.submit(run, plugin, "DEL", conf, cid, netns, ifname, cni_path=lab.CNI_PATH_DEFAULT)
        # A device whose DEL failed still carries our name: remove it by that name.
        names = {naming.host_ifname(cid, ifname) for yogurt, cid, ifname in self.names_made if yogurt}
        with Rtnl() as host:
            for link in host.links():
                if link.get_attr("IFLA_IFNAME") in names:
                    with contextlib.suppress(OSError):
                        host.delete_link(link["index"])
        for ns in self.netns.values():
            ns.delete()
        for bpffs, state in ((BPFFS, STATE), (AGENT_BPFFS, AGENT_STATE)):
            unload(Pins.under(bpffs))
            shutil.rmtree(bpffs, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch() -> Iterator[Scratch]:
    s = Scratch()
    try:
        yield s
    finally:
        s.close()


def run(
    plugin: Plugin,
    command: str,
    conf: dict[str, Any],
    cid: str = "",
    netns: str = "",
    ifname: str = "eth0",
    *,
    cni_path: str,
    cni_args: str = "",
    check: bool = False,
) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    result = lab.run_plugin(
        command,
        conf,
        exe=plugin.exe,
        container_id=cid,
        netns=netns,
        ifname=ifname,
        cni_path=cni_path,
        cni_args=cni_args,
    )
    elapsed = time.perf_counter() - start
    if check and result.rc != 0:
        raise BenchError(f"{plugin.label} {command} {cid} failed (rc {result.rc}): {result.out}")
    return elapsed, result.out


def version(plugins: list[Plugin], rounds: int, samples: Samples) -> None:
    """VERSION, and `python3 -c pass` as the floor of any Python program."""
    floor = Plugin("python", "python3 -c pass", ["/usr/bin/python3", "-c", "pass"], "none", "")
    conf = {"cniVersion": "1.0.0"}
    plugins = [p for p in plugins if not p.via_agent]  # VERSION is never forwarded to the agent
    for i in range(3 + rounds):  # 3 warm-up rounds: a node execs a plugin it has run before
        for plugin in [*plugins, floor]:
            elapsed, _ = run(plugin, "VERSION", conf, cni_path="", check=plugin is not floor)
            if i >= 3:
                samples.add(plugin.key, "VERSION", elapsed)


def verbs(
    plugins: list[Plugin],
    rounds: int,
    s: Scratch,
    samples: Samples,
    cni_path: str,
    figure: str = "",
    pause: float = 0.0,
) -> None:
    """ADD, CHECK, DEL of two containers (for yogurt both ends of one line), `rounds` times, interleaved.

    `figure` suffixes the figure names (" @500 lines" when 500 lines are already up; then no
    CHECK).  `pause`: seconds without a call before each plugin's turn (pods spaced out, as
    against back to back)."""
    tag = "".join(c for c in figure if c.isalnum())
    confs = {p.key: s.conf(p, f"{p.key}{tag or '1'}") for p in plugins}
    for i in range(1 + rounds):  # round 0 warms up (yogurt: the first ADD compiles the programs)
        for plugin in plugins:
            conf = confs[plugin.key]
            pair = [s.ns(f"{plugin.key}{tag}{j}") for j in (1, 2)]
            results = []
            time.sleep(pause)
            for ns in pair:
                cid = f"ybench-{plugin.key}{tag}-{ns.name}"
                s.track(plugin, conf, cid, ns.path, "eth0")
                elapsed, out = run(plugin, "ADD", conf, cid, ns.path, cni_path=cni_path, check=True)
                results.append((cid, ns, out))
                if i:
                    samples.add(plugin.key, f"ADD{figure}", elapsed)
                elif (plugin is plugins[0] or plugin.key == "agent") and not figure and ns is pair[0]:
                    # The entry point's: bcc compiles. Through the agent: it loaded them at start.
                    samples.add(plugin.key, "first ADD", elapsed)
            if not figure:
                for cid, ns, out in results:
                    elapsed, _ = run(
                        plugin,
                        "CHECK",
                        {**conf, "prevResult": out},
                        cid,
                        ns.path,
                        cni_path=cni_path,
                        check=True,
                    )
                    if i:
                        samples.add(plugin.key, "CHECK", elapsed)
            for cid, ns, _ in reversed(results):
                elapsed, _ = run(plugin, "DEL", conf, cid, ns.path, cni_path=cni_path, check=True)
                s.untrack(conf, cid)
                if i:
                    samples.add(plugin.key, f"DEL{figure}", elapsed)


def del_nothing(plugins: list[Plugin], rounds: int, s: Scratch, samples: Samples, cni_path: str) -> None:
    """DEL of an attachment that was never added (containerd sends DEL twice)."""
    for _ in range(rounds):
        for plugin in plugins:
            ns = s.ns("gone")
            elapsed, _ = run(
                plugin, "DEL", s.conf(plugin, f"{plugin.key}1"), "ybench-never", ns.path, cni_path=cni_path
            )
            samples.add(plugin.key, "DEL (nothing)", elapsed)


# -- many lines ---------------------------------------------------------------


def _in_process(command: str, conf: dict[str, Any], cid: str, netns: str, ifname: str, line: str) -> int:
    """One verb run inside this process, through the same protocol layer a runtime's exec reaches.

    Only to put a node's worth of ends in place quickly (no interpreter start per end); every
    timed figure is an exec."""
    from cni_yogurt import plugin as verbs_module
    from cni_yogurt.cni import skel

    environ = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": lab.CNI_PATH_DEFAULT,
        "CNI_ARGS": f"YOGURT_LINE={line}",
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    out = io.StringIO()
    rc = skel.run(environ, io.BytesIO(json.dumps(conf).encode()), out, io.StringIO(), lambda: verbs_module)
    if rc != 0:
        raise BenchError(f"in-process {command} {cid}/{ifname}: {out.getvalue().strip()}")
    return rc


def fill(plugin: Plugin, s: Scratch, lines: int, netns_count: int = 10) -> tuple[dict[str, Any], float]:
    """`lines` full lines (2 x lines ends) up on the node, spread over `netns_count` netns."""
    conf = s.conf(plugin, "fill")
    nss = [s.ns(f"fill{k}") for k in range(netns_count)]
    start = time.perf_counter()

    def one(idx: int) -> None:
        ns, ifname = nss[idx % netns_count], f"e{idx // netns_count}"
        cid = f"ybench-fill-{idx}"
        s.track(plugin, conf, cid, ns.path, ifname)
        try:
            _in_process("ADD", conf, cid, ns.path, ifname, f"fill{idx // 2}")
        except BenchError as exc:
            # Background only, not a figure: one retry after a DEL (an ifindex or name clash).
            log(f"fill: {exc}; DEL and one retry")
            _in_process("DEL", conf, cid, ns.path, ifname, f"fill{idx // 2}")
            _in_process("ADD", conf, cid, ns.path, ifname, f"fill{idx // 2}")

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(one, idx) for idx in range(2 * lines)]:
            future.result()
    return conf, time.perf_counter() - start


def gc_all(plugin: Plugin, conf: dict[str, Any], s: Scratch, samples: Samples, cni_path: str) -> int:
    """GC with no valid attachment: every end of `conf`'s network is stale (GC touches only
    devices labelled for its own stateDir and network, so other tests on the host are safe)."""
    registry = Registry(STATE)
    stale = sum(1 for e in registry.snapshot().values() if e.network == conf["name"])
    elapsed, out = run(
        plugin,
        "GC",
        {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []},
        cni_path=cni_path,
        check=True,
    )
    samples.add(plugin.key, f"GC ({stale} stale ends)", elapsed)
    left = [e for e in registry.snapshot().values() if e.network == conf["name"]]
    if left:
        raise BenchError(f"GC left {len(left)} ends")
    s.untrack(conf)  # all gone: nothing for cleanup to DEL
    return stale


# -- parallel ADDs ------------------------------------------------------------


@dataclass
class Burst:
    adds: int
    wall_s: float
    dels_wall_s: float
    wired: int  # lines whose two ends the pairing map sends to each other (yogurt)
    reached: int  # lines (ptp: pairs) whose first end pinged the second
    leftovers: list[str]


def burst(plugin: Plugin, s: Scratch, cni_path: str, adds: int = 200, at_a_time: int = 20) -> Burst:
    """`adds` ADDs, `at_a_time` in flight, two per line; then check every line and DEL all."""
    conf = s.conf(plugin, f"{plugin.key}burst")
    ends = []
    for idx in range(adds):
        ns = s.ns(f"b{idx}")
        ends.append((f"ybench-burst-{plugin.key}-{idx}", ns, f"burst{idx // 2}"))
    outs: dict[str, dict[str, Any]] = {}

    def args(line: str) -> str:
        return f"YOGURT_LINE={line}" if plugin.is_yogurt else ""

    def add(end: tuple[str, lab.Netns, str]) -> None:
        cid, ns, line = end
        s.track(plugin, conf, cid, ns.path, "eth0")
        _, outs[cid] = run(
            plugin, "ADD", conf, cid, ns.path, cni_path=cni_path, cni_args=args(line), check=True
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(at_a_time) as pool:
        for future in [pool.submit(add, e) for e in ends]:
            future.result()
    wall = time.perf_counter() - start

    wired = _wired(plugin, conf, ends) if plugin.is_yogurt else 0
    reached = _reached(ends, outs)

    def delete(end: tuple[str, lab.Netns, str]) -> None:
        cid, ns, line = end
        run(plugin, "DEL", conf, cid, ns.path, cni_path=cni_path, cni_args=args(line), check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(at_a_time) as pool:
        for future in [pool.submit(delete, e) for e in ends]:
            future.result()
    dels_wall = time.perf_counter() - start
    leftovers = _leftovers(plugin, conf, s, ends)
    s.untrack(conf)
    return Burst(adds, wall, dels_wall, wired, reached, leftovers)


def _wired(plugin: Plugin, conf: dict[str, Any], ends: list[tuple[str, lab.Netns, str]]) -> int:
    """Lines whose two ends the registry pairs and the map sends to each other."""
    by_key = Registry(plugin.state).snapshot()
    good = 0
    with PairMap(Pins.under(plugin.bpffs)) as pairs:
        for a, b in zip(ends[::2], ends[1::2], strict=True):
            ea, eb = by_key.get(f"{a[0]}/eth0"), by_key.get(f"{b[0]}/eth0")
            if ea is None or eb is None or ea.line != a[2] or eb.line != b[2]:
                continue
            pa, pb = pairs.get(ea.host_ifindex), pairs.get(eb.host_ifindex)
            if (
                pa
                and pb
                and (pa.host_ifindex, pa.peer_ifindex) == eb.wire
                and (
                    pb.host_ifindex,
                    pb.peer_ifindex,
                )
                == ea.wire
            ):
                good += 1
    return good


def _reached(ends: list[tuple[str, lab.Netns, str]], outs: dict[str, dict[str, Any]]) -> int:
    """Pairs whose first end pings the second's address (one echo, bounded wait)."""

    def one(a: tuple[str, lab.Netns, str], b: tuple[str, lab.Netns, str]) -> bool:
        address = outs[b[0]]["ips"][0]["address"].split("/")[0]
        return lab.ping(a[1], address, count=1, wait=2) == 1

    with ThreadPoolExecutor(10) as pool:
        return sum(pool.map(one, ends[::2], ends[1::2]))


def _leftovers(
    plugin: Plugin, conf: dict[str, Any], s: Scratch, ends: list[tuple[str, lab.Netns, str]]
) -> list[str]:
    found = []
    for _, ns, _ in ends:
        links = ns.run("ip", "-o", "link", "show").stdout
        if "eth0" in links:
            found.append(f"eth0 still in {ns.name}")
    leases = Path(conf["ipam"]["dataDir"], conf["name"])
    if leases.is_dir():
        found += [f"lease {p.name}" for p in leases.iterdir() if p.name[0].isdigit()]
    if plugin.is_yogurt:
        names = {naming.host_ifname(cid, "eth0") for cid, _, _ in ends}
        registry = Registry(plugin.state)
        found += [f"end {e.key}" for e in registry.snapshot().values() if e.network == conf["name"]]
        found += [f"link pin {n}" for n in pinned_link_names(Pins.under(plugin.bpffs)) & names]
        host_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        found += [f"device {n}" for n in names if f" {n}@" in host_links or f" {n}:" in host_links]
    return found


def timed(what: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    log(f"{what} ...")
    value = fn()
    log(f"{what}: {time.perf_counter() - start:.1f} s")
    return value
