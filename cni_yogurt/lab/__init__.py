"""The labs: what exists for the demo, the tests and the benchmark, not for the plugin itself.

This module: throw-away network namespaces and the plugin driven as a runtime drives it.  Beside it,
nodes.py (a cluster of nodes as network namespaces on one machine), etcd.py (a three-member etcd)
and cluster.py (an agent per node on those, with that etcd).  The verbs never import this package;
only `yogurt demo` does.

Shared by `yogurt demo` and the kernel tests: exec the plugin with CNI_*
variables and the config on stdin, then measure what crosses the wire.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cni_yogurt.kernel.netns import run_in

CNI_PATH_DEFAULT = "/usr/lib/cni:/opt/cni/bin"


def self_command() -> list[str]:
    """How to exec this very plugin: the one-file binary, or the package."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "cni_yogurt"]


def build_front(out: str, *defines: str) -> str:
    """Compile agent/frontend.c (static, as `make front` does) into `out`; `defines`: -D names."""
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "agent", "frontend.c")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler for the compiled front end (`make deps` installs gcc)")
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-static", *(f"-D{d}" for d in defines)]
    if defines:  # a test build (FRONTEND_SCAN_ONLY) leaves most functions out
        flags.append("-Wno-unused-function")
    subprocess.run([cc, *flags, "-o", out, source], check=True)
    return out


def compiled_front(bin_dir: str, full: list[str]) -> str:
    """A CNI bin dir as a node with the compiled front end has it: `yogurt` built here from
    agent/frontend.c, `yogurt-full` beside it exec'ing `full`. The path of `yogurt`."""
    os.makedirs(bin_dir, exist_ok=True)
    front = build_front(os.path.join(bin_dir, "yogurt"))
    script = os.path.join(bin_dir, "yogurt-full")
    with open(script, "w", encoding="utf-8") as f:
        f.write(f'#!/bin/sh\nexec {shlex.join(full)} "$@"\n')
    os.chmod(script, 0o755)
    return front


@dataclass
class PluginRun:
    rc: int
    out: dict[str, Any]
    stderr: str


def run_plugin(
    command: str,
    conf: dict[str, Any],
    *,
    container_id: str = "",
    netns: str = "",
    ifname: str = "eth0",
    cni_args: str = "",
    cni_path: str = CNI_PATH_DEFAULT,
    exe: list[str] | None = None,
) -> PluginRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=container_id,
        CNI_NETNS=netns,
        CNI_IFNAME=ifname,
        CNI_PATH=cni_path,
        CNI_ARGS=cni_args,
    )
    proc = subprocess.run(
        exe or self_command(),
        input=json.dumps(conf).encode(),
        capture_output=True,
        env=env,
        check=False,
        timeout=300,
    )
    text = proc.stdout.decode().strip()
    try:
        out = json.loads(text) if text else {}
    except ValueError:
        out = {"unparsed": text}
    return PluginRun(proc.returncode, out, proc.stderr.decode())


class Netns:
    """A named netns under /run/netns, as `ip netns add` makes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def create(self) -> Netns:
        self.delete()
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self

    def delete(self) -> None:
        if os.path.exists(self.path):
            subprocess.run(["ip", "netns", "del", self.name], check=False)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def ping(netns: Netns | None, address: str, count: int = 2, wait: float = 1.0) -> int:
    """How many echo replies came back (0 if blocked)."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(wait), "-i", "0.2", address]
    if netns is None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    else:
        proc = netns.run(*argv)
    match = re.search(r"(\d+) (?:packets )?received", proc.stdout)
    return int(match.group(1)) if match else 0


def socket_in(
    netns: Netns | None, family: int, kind: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket of that netns (None: the host's), made there by a thread that joined it."""

    def make() -> socket.socket:
        return socket.socket(family, kind, proto)

    return make() if netns is None else run_in(netns.path, make)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def udp_send(netns: Netns | None, payload: bytes, address: str, port: int) -> None:
    with socket_in(netns, _family(address), socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, (address, port))


def udp_receive(
    netns: Netns | None, address: str, port: int, send: Callable[[], object], wait: float = 1.5
) -> bytes | None:
    """What a UDP socket bound to address:port in `netns` gets while `send()` runs (None: nothing
    within `wait` seconds): how the demos and tests tell a packet that arrives from one dropped."""
    with socket_in(netns, _family(address), socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        sock.settimeout(wait)
        send()
        try:
            return sock.recv(100)
        except TimeoutError:
            return None


def tcp_exchange(
    server_ns: Netns, server_addr: str, client_ns: Netns | None, port: int = 4242, timeout: float = 3.0
) -> bool:
    """Listen in one netns, connect from another (None: the host), send a line and get it echoed."""
    family = socket.AF_INET6 if ":" in server_addr else socket.AF_INET
    server = socket_in(server_ns, family)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((server_addr, port))
    server.listen(1)
    server.settimeout(timeout)

    def echo_once() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(timeout)
                conn.sendall(conn.recv(64).upper())
        except OSError:
            pass

    thread = threading.Thread(target=echo_once, daemon=True)
    thread.start()
    client = socket_in(client_ns, family)
    client.settimeout(timeout)
    try:
        client.connect((server_addr, port))
        client.sendall(b"hello yogurt")
        return client.recv(64) == b"HELLO YOGURT"
    except OSError:
        return False
    finally:
        client.close()
        thread.join(timeout + 1)
        server.close()


def have_host_local() -> str | None:
    for directory in CNI_PATH_DEFAULT.split(":"):
        path = os.path.join(directory, "host-local")
        if os.access(path, os.X_OK):
            return directory
    return shutil.which("host-local")
