"""The node agent (`yogurt agent`): the verbs through it, and what happens when it dies or misbehaves.

Every test runs a real agent on a stateDir and bpffsDir of its own (an agent
on the suite's shared stateDir would take over other test files' calls) and
drives the real executable as a runtime does: with the agent there, the exec
forwards to it. Per backend the kernel offers.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Node, Phone, addresses, private_dirs
from frames import inject, receives, udp_datagram

from cni_yogurt import lab
from cni_yogurt.agent import frontend, protocol
from cni_yogurt.agent.pool import PREFIX as POOL_PREFIX
from cni_yogurt.cni.errors import Code
from cni_yogurt.datapath import ABI, pinned_link_names
from cni_yogurt.faults import ADD_POINTS, DEL_POINTS, ENV
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.kernel.netns import open_netns as os_open_netns


class Agent:
    """One `yogurt agent` process on a test's private dirs."""

    started: list[Agent] = []  # killed after each test, should a failing test leave one running

    def __init__(self, conf: dict[str, Any], *extra: str, crash_at: str | None = None) -> None:
        self.conf = conf
        self.state_dir = conf["stateDir"]
        env = {k: v for k, v in os.environ.items() if k != ENV}
        if crash_at:
            env[ENV] = crash_at
        argv = [*lab.self_command(), "agent", "--state-dir", self.state_dir, "--bpffs-dir", conf["bpffsDir"]]
        self.proc = subprocess.Popen([*argv, *extra], env=env, stderr=subprocess.PIPE, text=True)
        Agent.started.append(self)

    def ready(self, timeout: float = 120) -> Agent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.info() is not None:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited {self.proc.returncode}: {self.proc.stderr.read()}")
            time.sleep(0.05)
        raise AssertionError("the agent did not start serving")

    def info(self) -> dict[str, Any] | None:
        return frontend.info(self.state_dir, timeout=30)  # a loaded machine answers late

    def served(self) -> int:
        found = self.info()
        assert found is not None
        return int(found["served"])  # type: ignore[call-overload]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(60)
        self.proc.stderr.close()
        return rc


@pytest.fixture(autouse=True)
def no_agent_left() -> Iterator[None]:
    yield
    for left in Agent.started:
        if left.proc.poll() is None:
            left.proc.kill()
            left.proc.wait(60)
    Agent.started.clear()


@pytest.fixture
def conf(node: Node, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with private_dirs(node, tmp_path, "agent") as private:
        yield private


@pytest.fixture
def agent(conf: dict[str, Any]) -> Iterator[Agent]:
    running = Agent(conf).ready()
    yield running
    assert running.stop() == 0


def _clean_error(run: lab.PluginRun) -> bool:
    return run.rc > 0 and run.out.get("code") not in (None, Code.INTERNAL) and "Traceback" not in run.stderr


def _settled_fds(pid: int) -> int:
    """The agent's open files once no connection is being served (the same count thrice in a row)."""
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (len(seen) < 3 or len(set(seen[-3:])) > 1):
        seen.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.2)
    return seen[-1]


def test_verbs_through_the_agent_and_lines_outlive_it(node: Node, conf: dict[str, Any]) -> None:
    agent = Agent(conf).ready()
    assert node.pins.loaded(), "programs loaded at start: the first ADD pays no compile"
    fds = _settled_fds(agent.proc.pid)
    phone = Phone(node, conf=conf)
    assert agent.served() == 2
    assert lab.ping(phone.one, phone.b4) == 2
    check = node.run("CHECK", {**conf, "prevResult": phone.r1}, phone.one)
    assert check.rc == 0, check
    assert agent.served() == 3
    assert _settled_fds(agent.proc.pid) == fds, "a call left a file or socket open"
    # SIGTERM: a clean exit, the socket gone, the line still passing packets (its links are pinned).
    assert agent.stop() == 0
    assert not os.path.exists(os.path.join(conf["stateDir"], protocol.SOCKET_NAME))
    assert lab.ping(phone.one, phone.b4) == 2
    assert node.run("CHECK", {**conf, "prevResult": phone.r2}, phone.two).rc == 0  # no agent: here
    # A restarted agent adopts the node.
    agent = Agent(conf).ready()
    assert node.run("CHECK", {**conf, "prevResult": phone.r2}, phone.two).rc == 0
    phone.hang_up()
    assert agent.served() == 3
    assert agent.stop() == 0


def _admin(command: str, conf: dict[str, Any]) -> Any:
    argv = [
        *lab.self_command(),
        command,
        "--json",
        "--state-dir",
        conf["stateDir"],
        "--bpffs-dir",
        conf["bpffsDir"],
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False).stdout
    return json.loads(out)


def _doctor_agent(conf: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in _admin("doctor", conf) if f["name"] == "agent")


def test_status_and_doctor_show_the_agent(conf: dict[str, Any]) -> None:
    assert _admin("status", conf)["agent"] is None
    assert _doctor_agent(conf)["ok"] and "none" in _doctor_agent(conf)["detail"]
    agent = Agent(conf).ready()
    status = _admin("status", conf)["agent"]
    assert status["pid"] == agent.proc.pid and status["abi"] == ABI
    found = _doctor_agent(conf)
    assert found["ok"] and f"pid {agent.proc.pid}" in found["detail"], found
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    found = _doctor_agent(conf)  # its socket is left, nobody answers
    assert not found["ok"] and not found["fatal"] and "no agent answers" in found["detail"], found
    agent = Agent(conf).ready()
    assert _doctor_agent(conf)["ok"]
    assert agent.stop() == 0


def test_a_second_agent_on_the_same_state_dir_refuses_to_start(conf: dict[str, Any], agent: Agent) -> None:
    second = Agent(conf)
    assert second.proc.wait(60) == 1
    assert "another agent" in second.proc.stderr.read()
    second.proc.stderr.close()
    assert agent.info() is not None


def _hostile_calls(node: Node, conf: dict[str, Any], phone: Phone) -> list[tuple[str, int, Any]]:
    ns = node.netns()
    calls = [
        node.run("ADD", conf, None, container_id="x1"),  # no netns
        node.run("ADD", conf, ns, ifname="eth/0"),
        node.run("ADD", conf, ns, cni_args="NO_SUCH_ARG=web"),  # unknown, no IgnoreUnknown
        node.run("ADD", {**conf, "mtu": "big"}, ns),
        node.run("ADD", {**conf, "cniVersion": "9.9.9"}, ns),
        node.run("ADD", {**conf, "ipam": {**conf["ipam"], "type": "no-such-ipam"}}, ns),
        node.run("ADD", conf, ns),  # a third end on a full line
        node.run("CHECK", conf, phone.one),  # no prevResult
        node.run("GC", {**conf, "cniVersion": "1.0.0"}, None),
    ]
    return [(c.stderr.count("Traceback"), c.rc, c.out.get("code")) for c in calls]


def test_bad_requests_get_the_same_answers_through_the_agent(node: Node, conf: dict[str, Any]) -> None:
    agent = Agent(conf).ready()
    phone = Phone(node, conf=conf)
    served = agent.served()
    through = _hostile_calls(node, conf, phone)
    assert agent.served() == served + len(through), "every call went through the agent"
    assert agent.stop() == 0
    without = _hostile_calls(node, conf, phone)
    assert through == without
    assert [code for _, _, code in through] == [4, 4, 4, 7, 1, 7, 100, 7, 1]
    phone.hang_up()


def test_the_compiled_front_end_relays_to_the_agent_and_falls_back_without_it(
    node: Node, conf: dict[str, Any], tmp_path: Path
) -> None:
    """agent/frontend.c as a node installs it (`yogurt`, with the plugin beside it as yogurt-full):
    every verb reaches the agent, bad requests get the same answers as from the plugin alone, and
    with the agent stopped yogurt-full does the work."""
    node.exe = [lab.compiled_front(str(tmp_path / "bin"), lab.self_command())]
    agent = Agent(conf).ready()
    phone = Phone(node, conf=conf)
    assert lab.ping(phone.one, phone.b4) == 2
    assert node.run("CHECK", {**conf, "prevResult": phone.r1}, phone.one).rc == 0
    assert agent.served() == 3
    through = _hostile_calls(node, conf, phone)
    assert agent.served() == 3 + len(through), "every call went through the agent"
    assert [code for _, _, code in through] == [4, 4, 4, 7, 1, 7, 100, 7, 1]
    assert agent.stop() == 0
    assert _hostile_calls(node, conf, phone) == through  # yogurt-full, no agent
    assert node.run("CHECK", {**conf, "prevResult": phone.r2}, phone.two).rc == 0
    node.delete(conf, phone.one)  # DEL without an agent
    agent = Agent(conf).ready()
    node.delete(conf, phone.two)  # and through it
    assert agent.served() == 1
    assert agent.stop() == 0


def _ended_killed(agent: Agent, run: lab.PluginRun | None = None) -> None:
    """The agent died at its crash point (`run`: the call that should have reached it, said if not)."""
    assert agent.proc.wait(60) == -signal.SIGKILL, f"the agent did not die at its crash point: {run}"
    agent.proc.stderr.close()


@pytest.mark.parametrize("recover", ["restarted-agent", "plugin"])
@pytest.mark.parametrize("point", ADD_POINTS)
def test_agent_killed_at_each_step_of_add(node: Node, conf: dict[str, Any], point: str, recover: str) -> None:
    partner = node.netns()
    if point != "add:loading":  # only an agent's start loads the programs: its partner comes later
        first = Agent(conf).ready()
        node.add(conf, partner)
        assert first.stop() == 0
    crashed = node.netns()
    dying = Agent(conf, crash_at=point)
    if point == "add:loading":
        _ended_killed(dying)  # killed while loading, before it ever listened
        run = node.run("ADD", conf, crashed)
        assert run.rc == 0, f"no agent: the plugin's own path loads and adds: {run}"
    else:
        dying.ready()
        run = node.run("ADD", conf, crashed)
        _ended_killed(dying, run)
        assert run.rc == 1 and run.out["code"] == Code.TRY_AGAIN_LATER, run
        assert "agent.sock" in run.out["msg"]
    # The runtime retries: through a restarted agent, or the plugin's own path if none is back.
    agent = Agent(conf).ready() if recover == "restarted-agent" else None
    retry = node.run("ADD", conf, crashed)
    if retry.rc == 0:
        if point != "add:loading":
            b4, _ = addresses(retry.out)
            assert lab.ping(partner, b4) == 2, "a retried ADD that succeeds must be wired"
    else:
        assert _clean_error(retry), retry
    node.delete(conf, crashed)
    node.delete(conf, partner)
    if agent is not None:
        assert agent.served() >= 1
        assert agent.stop() == 0
    assert node.leftovers() == {}


@pytest.mark.parametrize("point", DEL_POINTS)
def test_agent_killed_at_each_step_of_del(node: Node, conf: dict[str, Any], point: str) -> None:
    first = Agent(conf).ready()
    one, two = node.netns(), node.netns()
    node.add(conf, one)
    b4, _ = addresses(node.add(conf, two))
    assert first.stop() == 0
    dying = Agent(conf, crash_at=point).ready()
    run = node.run("DEL", conf, two)
    _ended_killed(dying, run)
    # The agent died mid-DEL: the exec finished it on its own path. A DEL never fails for the agent.
    assert run.rc == 0, run
    assert lab.ping(one, b4, count=1) == 0
    node.delete(conf, two)  # the runtime's own retry, now with no agent at all
    node.delete(conf, one)
    assert node.leftovers() == {}


def test_an_ipam_plugin_does_not_outlive_an_agent_killed_mid_add(
    node: Node, conf: dict[str, Any], tmp_path: Path
) -> None:
    """The agent runs the IPAM plugin beside the device work. Killed -9 while that plugin is
    still busy, it takes the plugin with it: a plugin left running would write its lease after
    the runtime's retry (a DEL, on the plugin's own path) had released everything."""
    cni_dir = tmp_path / "cni"
    cni_dir.mkdir()
    slow = cni_dir / "slow-host-local"
    # Slow for ADD only, so a DEL's release comes first and a surviving ADD would lease after it.
    slow.write_text(f'#!/bin/sh\n[ "$CNI_COMMAND" = ADD ] && sleep 2\nexec {node.cni_path}/host-local "$@"\n')
    slow.chmod(0o755)
    # A version host-local takes at once (Debian 12's stops at 1.0.0; 1.1.0 is refused, then sent again).
    slow_conf = {**conf, "cniVersion": "1.0.0", "ipam": {**conf["ipam"], "type": slow.name}}
    cni_path = f"{cni_dir}:{node.cni_path}"
    ns = node.netns()
    dying = Agent(slow_conf, crash_at="add:device").ready()
    run = lab.run_plugin("ADD", slow_conf, container_id=ns.name, netns=ns.path, cni_path=cni_path)
    _ended_killed(dying, run)
    assert run.rc == 1 and run.out["code"] == Code.TRY_AGAIN_LATER, run
    retry = lab.run_plugin("DEL", slow_conf, container_id=ns.name, netns=ns.path, cni_path=cni_path)
    assert retry.rc == 0, retry
    time.sleep(3)  # past the moment a surviving plugin would have leased
    assert node.leases() == []


def _line_args(i: int) -> str:
    return f"YOGURT_LINE=l{i // 2}"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_agent_restarted_while_50_calls_are_in_flight(node: Node, conf: dict[str, Any], how: int) -> None:
    agent = Agent(conf).ready()
    spaces = [node.netns() for _ in range(26)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        for verb in ("ADD", "DEL"):
            futures = [
                pool.submit(node.run, verb, conf, ns, cni_args=_line_args(i)) for i, ns in enumerate(spaces)
            ]
            time.sleep(0.5)
            agent.stop(how)
            agent = Agent(conf).ready()
            runs = [f.result() for f in futures]
            for run in runs:
                assert run.rc == 0 or _clean_error(run), run
                if verb == "DEL":
                    assert run.rc == 0, f"a DEL failed: {run}"
            if verb == "ADD":
                assert any(run.rc == 0 for run in runs)
                for run in runs:
                    if run.rc == 0:
                        node.ifindexes.add(_ifindex(run.out))
    assert agent.stop() == 0
    assert node.leftovers() == {}


def _ifindex(result: dict[str, Any]) -> int:
    with open(f"/sys/class/net/{result['interfaces'][0]['name']}/ifindex") as f:
        return int(f.read())


def test_agent_and_plugins_without_it_share_a_node(node: Node, conf: dict[str, Any]) -> None:
    """Half the calls reach the agent; then its socket is taken away mid-run and the other half
    runs in the execs themselves, while the first half is still in flight."""
    agent = Agent(conf).ready()
    sock = os.path.join(conf["stateDir"], protocol.SOCKET_NAME)
    spaces = [node.netns() for _ in range(16)]
    order = [i for pair in zip(range(0, 16, 2), range(1, 16, 2), strict=True) for i in pair]
    first, second = order[::2], order[1::2]  # one end of each line each
    results: dict[int, lab.PluginRun] = {}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for verb in ("ADD", "DEL"):
            before = agent.served()
            futures = {i: pool.submit(node.run, verb, conf, spaces[i], cni_args=_line_args(i)) for i in first}
            deadline = time.monotonic() + 240
            while agent.served() < before + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.rename(sock, sock + ".away")
            futures |= {
                i: pool.submit(node.run, verb, conf, spaces[i], cni_args=_line_args(i)) for i in second
            }
            results = {i: f.result() for i, f in futures.items()}
            os.rename(sock + ".away", sock)
            assert all(run.rc == 0 for run in results.values()), results
            if verb == "ADD":
                node.ifindexes |= {_ifindex(run.out) for run in results.values()}
            served = agent.served() - before
            assert 2 <= served <= len(first), f"{verb}: {served} through the agent"
            if verb == "ADD":
                for i in range(0, 16, 2):
                    b4, _ = addresses(results[i + 1].out)
                    assert lab.ping(spaces[i], b4, count=3) >= 1, f"line l{i // 2} not wired"
    assert agent.stop() == 0


def _connect_as_nobody(path: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(60)\n"
        "try:\n"
        f"    s.connect({path!r})\n"
        f"    s.sendall({protocol.encode_request({}, b'', protocol.INFO)!r})\n"
        "    print('answer', len(s.recv(100)))\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_user_other_than_root_cannot_reach_the_agent(node: Node, tmp_path: Path) -> None:
    # Dirs anyone may traverse, so that only the sockets' own protection is tested.
    base = tempfile.mkdtemp(prefix="yogurt-agent-perm-")
    os.chmod(base, 0o755)
    try:
        conf = node.conf(stateDir=f"{base}/state", bpffsDir=f"/sys/fs/bpf/cni-yogurt-agent-perm-{node.tag}")
        metrics = f"{base}/metrics.sock"
        agent = Agent(conf, "--metrics-socket", metrics).ready()
        os.chmod(conf["stateDir"], 0o755)
        sock = os.path.join(conf["stateDir"], protocol.SOCKET_NAME)
        for path in (sock, metrics):
            assert os.stat(path).st_mode & 0o777 == 0o600, path
            assert _connect_as_nobody(path).stdout.strip() == "PermissionError", path
        # Even with the socket opened to all, the agent answers root only (SO_PEERCRED).
        os.chmod(sock, 0o666)
        # Refused at once: closed before or while the request is written.
        refused = ("answer 0", "ConnectionResetError", "BrokenPipeError")
        assert _connect_as_nobody(sock).stdout.strip() in refused, "no answer"
        assert agent.info() is not None
        assert agent.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(f"/sys/fs/bpf/cni-yogurt-agent-perm-{node.tag}", ignore_errors=True)


def test_garbage_on_the_socket_leaves_the_agent_serving(
    node: Node, conf: dict[str, Any], agent: Agent
) -> None:
    path = os.path.join(conf["stateDir"], protocol.SOCKET_NAME)
    held = []

    def client(data: bytes) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(data)
        held.append(s)
        return s

    client(b"this is not a request at all, and no frame either\n")
    client((1 << 31).to_bytes(4, "big"))  # announces 2 GiB
    client(protocol.frame(b"V\0\0\0\x05ABC"))  # a frame, but no request
    client(protocol.encode_request({b"CNI_COMMAND": b"ADD"}, b"{}")[:12])  # half a request, then silence
    never_reads = client(protocol.encode_request({b"CNI_COMMAND": b"DEL"}, json.dumps(conf).encode()))
    never_reads.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    # Meanwhile, real calls are served.
    phone = Phone(node, conf=conf)
    assert lab.ping(phone.one, phone.b4) == 2
    phone.hang_up()
    assert agent.served() >= 4
    for s in held:
        s.close()
    assert agent.proc.poll() is None


def _scrape_unix(path: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode().partition("\r\n\r\n")[2]


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.partition("{")[0] == name and all(f'{k}="{v}"' in metric for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no {name} {labels} in the metrics")


def test_metrics_scraped_for_real(node: Node, conf: dict[str, Any], tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics_sock = str(tmp_path / "metrics.sock")
    agent = Agent(conf, "--metrics-address", f"127.0.0.1:{port}", "--metrics-socket", metrics_sock).ready()
    phone = Phone(node, conf=conf)
    assert lab.ping(phone.one, phone.b4, count=3) == 3
    node.run("CHECK", conf, phone.one)  # an error: code 7, no prevResult
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        http = response.read().decode()
    for text in (http, _scrape_unix(metrics_sock)):
        end = f"{phone.one.name}/eth0"
        assert _sample(text, "yogurt_end_sent_packets_total", end=end, host_ifname=phone.host_one) >= 3
        assert _sample(text, "yogurt_end_sent_bytes_total", end=end) > 0
        assert _sample(text, "yogurt_end_dropped_packets_total", end=end, reason="wrong_sender") == 0
        assert _sample(text, "yogurt_agent_requests_total", verb="ADD", code="0") == 2
        assert _sample(text, "yogurt_agent_requests_total", verb="CHECK", code="7") == 1
        assert _sample(text, "yogurt_agent_request_duration_seconds_count", verb="ADD") == 2
        assert abs(_sample(text, "yogurt_agent_start_time_seconds") - time.time()) < 600
        assert _sample(text, "yogurt_agent_info", abi=str(ABI)) == 1
    phone.hang_up()
    assert agent.stop() == 0
    assert not os.path.exists(metrics_sock)


# -- the pool of pairs made ahead (agent/pool.py) ---------------------------------------


def _pool(agent: Agent) -> dict[str, Any]:
    found = agent.info()
    assert found is not None
    return found["pool"]  # type: ignore[no-any-return]


def _pool_full(agent: Agent, size: int, timeout: float = 60) -> list[int]:
    """The pooled pairs' ifindexes, once the pool holds `size` again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = _pool(agent)["ready"]
        if len(ready) == size:
            return ready  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"the pool did not refill to {size}: {_pool(agent)}")


def _pooled_devices() -> set[str]:
    with Rtnl() as nl:
        return {n for link in nl.links() if (n := link.get_attr("IFLA_IFNAME")).startswith(POOL_PREFIX)}


def _pooled_devices_gone(before: set[str], timeout: float = 20) -> set[str]:
    """Which of `before` are still there after `timeout` (a netns dies asynchronously)."""
    deadline = time.monotonic() + timeout
    while (left := _pooled_devices() & before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _wire_holds(phone: Phone) -> None:
    """What test_wire checks, in short: the partners talk, the host reaches and injects nothing."""
    assert lab.ping(phone.one, phone.b4) == 2
    assert lab.ping(phone.two, phone.a4) == 2
    assert phone.b6 and lab.ping(phone.one, phone.b6) == 2
    assert lab.tcp_exchange(phone.two, phone.b4, phone.one)
    for bypass in (False, True):
        packet = udp_datagram(phone.a4, phone.b4, 7800 + bypass, b"from the host")
        send = lambda p=packet, b=bypass: inject(None, phone.host_two, p, phone.mac_two, b)  # noqa: E731
        assert receives(phone.two, phone.b4, 7800 + bypass, send) is None
    device = phone.host_two
    os.system(f"ip addr add 10.42.0.254/32 dev {device}; ip route add {phone.b4}/32 dev {device}")
    try:
        assert lab.ping(None, phone.b4) == 0
    finally:
        os.system(f"ip route del {phone.b4}/32 dev {device}; ip addr del 10.42.0.254/32 dev {device}")


def test_add_takes_a_pooled_pair_and_the_pool_refills(node: Node, conf: dict[str, Any], backend: str) -> None:
    agent = Agent(conf, "--pool", "2").ready()
    pooled = set(_pool_full(agent, 2))
    devices = _pooled_devices()
    phone = Phone(node, conf=conf)
    ends = {_ifindex(phone.r1), _ifindex(phone.r2)}
    if backend == "veth-tcx":  # what the pool serves: both ends are pooled pairs, moved and renamed
        assert ends == pooled, (ends, pooled)
        assert _pool(agent)["taken"] == 2
        assert not devices & {phone.host_one, phone.host_two}, "renamed"
        for result, ns in ((phone.r1, phone.one), (phone.r2, phone.two)):
            fd = os_open_netns(ns.path)
            try:
                with Rtnl.in_netns(fd) as cont:
                    assert cont.link("eth0")["index"] == _ifindex(result), "one ifindex per pair"
            finally:
                os.close(fd)
    else:  # tc filters do not survive a netns move: the usual path
        assert not ends & pooled
        assert _pool(agent)["taken"] == 0
    _wire_holds(phone)
    assert len(_pool_full(agent, 2)) == 2, "refilled"
    assert not set(_pool(agent)["ready"]) & ends
    run = node.run("CHECK", {**conf, "prevResult": phone.r1}, phone.one)
    assert run.rc == 0, run.out
    phone.hang_up()
    left = _pooled_devices()
    assert agent.stop() == 0
    assert not _pooled_devices_gone(left), "the pool goes with the agent"


def test_pool_of_a_killed_agent_goes_and_a_new_agent_adopts_the_node(
    node: Node, conf: dict[str, Any]
) -> None:
    agent = Agent(conf, "--pool", "4").ready()
    _pool_full(agent, 4)
    phone = Phone(node, conf=conf)
    _pool_full(agent, 4)
    pooled = _pooled_devices()
    agent.stop(signal.SIGKILL)
    assert not _pooled_devices_gone(pooled), "a killed agent's pool dies with its netns"
    assert not {n for n in pinned_link_names(node.pins) if n.startswith(POOL_PREFIX)}
    assert lab.ping(phone.one, phone.b4) == 2, "the line outlives the agent"
    again = Agent(conf, "--pool", "4").ready()
    _pool_full(again, 4)
    gc = node.run("GC", {**conf, "cni.dev/valid-attachments": []}, None)
    assert gc.rc == 0, gc.out
    assert node.leftovers() == {}, "GC through the new agent removed both ends"
    phone.hang_up()  # nothing left to do: DEL is idempotent
    left = _pooled_devices()
    assert again.stop() == 0
    assert not _pooled_devices_gone(left)


def test_more_parallel_adds_than_the_pool_holds(node: Node, conf: dict[str, Any]) -> None:
    agent = Agent(conf, "--pool", "2").ready()
    _pool_full(agent, 2)
    spaces = [node.netns() for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        runs = list(pool.map(lambda i: node.run("ADD", conf, spaces[i], cni_args=_line_args(i)), range(12)))
    assert all(run.rc == 0 for run in runs), [r.out for r in runs if r.rc]
    node.ifindexes |= {_ifindex(run.out) for run in runs}
    assert len(node.ifindexes) == 12
    for i in range(0, 12, 2):
        b4, _ = addresses(runs[i + 1].out)
        assert lab.ping(spaces[i], b4, count=3) >= 1, f"line l{i // 2} not wired"
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        dels = list(pool.map(lambda i: node.run("DEL", conf, spaces[i], cni_args=_line_args(i)), range(12)))
    assert all(run.rc == 0 for run in dels), [r.out for r in dels if r.rc]
    assert agent.stop() == 0


def test_pooled_ifindex_taken_in_the_container_falls_back(
    node: Node, conf: dict[str, Any], backend: str
) -> None:
    agent = Agent(conf, "--pool", "1").ready()
    (index,) = _pool_full(agent, 1)
    one, two = node.netns(), node.netns()
    # Something of the container's holds the pooled pair's ifindex already.
    assert os.system(f"ip -n {one.name} link add name squat index {index} type veth peer name squat1") == 0
    r1 = node.add(conf, one)
    assert _ifindex(r1) != index, "made on the usual path"
    r2 = node.add(conf, two)
    assert lab.ping(one, addresses(r2)[0]) == 2
    assert lab.ping(two, addresses(r1)[0]) == 2
    with Rtnl() as nl:
        held = any(link["index"] == index for link in nl.links())
    # veth + tcx: the pair was taken, found not to fit and given up; tc: never taken
    assert held == (backend != "veth-tcx")
    node.delete(conf, one)
    node.delete(conf, two)
    assert agent.stop() == 0
