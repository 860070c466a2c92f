"""`yogurt agent`: the verbs served from one resident process, over <stateDir>/agent.sock.

Each request runs cni.skel.run with the caller's environment and stdin, the
very code the exec'd plugin runs: one implementation of ADD/DEL/CHECK/STATUS/
GC, two ways to reach it.  Requests are served concurrently, a thread each;
that is safe because the verbs' shared state is in flocks (lock.py opens the
file per call, so a flock excludes the agent's own threads as it excludes
other processes) and a netns switch is per thread (kernel/netns.py).  So an
agent and plugins running without it can share a node.

The socket is bound under a temporary name, made root-only, then renamed
into place: a client never reaches an agent that is not ready (programs
loaded, live lines moved).  One agent per stateDir: <stateDir>/agent.lock is
flocked for the agent's life.  SIGTERM stops accepting, lets calls in flight
finish (bounded), removes the socket and exits 0; every line keeps passing
packets, its links are pinned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import signal
import socket
import struct
import threading
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cni_yogurt import __version__, backend, datapath, release
from cni_yogurt.agent import protocol
from cni_yogurt.agent.frontend import DEFAULT_STATE_DIR, peek_config
from cni_yogurt.cni import skel
from cni_yogurt.datapath import Pins
from cni_yogurt.line import moving, recovery
from cni_yogurt.line.registry import Registry

if TYPE_CHECKING:
    from cni_yogurt.agent.metrics import Observer  # imported for real only when metrics are asked for
    from cni_yogurt.agent.pool import Pool

READ_TIMEOUT = 10.0  # a client that sends half a request is dropped after this
WRITE_TIMEOUT = 10.0  # and one that never reads its answer
STOP_GRACE = 30.0  # SIGTERM: how long calls in flight may take to finish
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


def _load_verbs() -> ModuleType:
    from cni_yogurt import plugin

    return plugin


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, protocol.SOCKET_NAME)


def result_code(rc: int, stdout: str) -> int:
    """The CNI code of an answer: 0 for success, else the error JSON's code."""
    if rc == 0:
        return 0
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        code = json.loads(stdout).get("code")
        if isinstance(code, int):
            return code
    return 999


class AgentBusy(Exception):
    """Another agent serves this stateDir."""


class Agent:
    def __init__(self, state_dir: str, bpffs_dir: str, log: Any, observe: Observer | None = None) -> None:
        self.state_dir = state_dir
        self.bpffs_dir = bpffs_dir
        self.path = socket_path(state_dir)
        self.log = log
        self.observe = observe
        self.started = time.time()
        self.commit = release.commit()  # once: git may be asked (a checkout), never per call
        self.served = 0
        self._stop = threading.Event()
        self._lock_fd = -1
        self._listener: socket.socket | None = None
        self._inode = 0
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self.owned_paths: list[str] = []  # the metrics socket, removed with ours
        self.cluster: Any = None  # agent/cluster.py's ClusterNode with --cluster
        self.pool: Pool | None = None

    # -- start ------------------------------------------------------------------

    def claim(self) -> None:
        """Hold <stateDir>/agent.lock: one agent per stateDir (AgentBusy if another runs)."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.state_dir, "agent.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AgentBusy(f"another agent serves {self.state_dir}") from exc
            raise
        self._lock_fd = fd

    def prepare(self) -> int:
        """Load the programs (or adopt the pinned ones) and move live ends onto them, as
        `yogurt upgrade` does: the first ADD then costs what any ADD costs. Ends moved."""
        pins = Pins.under(self.bpffs_dir)
        registry = Registry(
            self.state_dir,
            recover=lambda: recovery.rebuild(pins, self.state_dir),
            on_heal=lambda what: self.log.error("line registry healed", detail=what),
        )
        lost = datapath.ensure_loaded(pins, self.state_dir)
        return moving.move(registry, pins, self.log, lost) if moving.needed(registry, pins, lost) else 0

    def start_pool(self, size: int) -> None:
        """Keep `size` veth pairs made and attached ahead (agent/pool.py) where this node's
        ADDs get veth + tcx (no netkit; tcx); the verbs run in this process take from it."""
        if size <= 0 or backend.resolve("auto", "auto", self.state_dir) != backend.VETH_TCX:
            return
        from cni_yogurt import plugin
        from cni_yogurt.agent.pool import Pool

        self.pool = Pool(Pins.under(self.bpffs_dir), size, self.log)
        plugin.device_pool = self.pool
        self.pool.start()

    def bind(self) -> None:
        """Listen on agent.sock, root-only, atomically: bound under another name, then renamed."""
        temporary = os.path.join(self.state_dir, f".agent.sock.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # never reachable by others, not even between bind and chmod
        try:
            listener.bind(temporary)
        finally:
            os.umask(old_umask)
        os.chmod(temporary, 0o600)
        listener.listen(256)
        listener.settimeout(0.5)  # to notice a stop request
        os.rename(temporary, self.path)  # replaces a dead agent's socket; the lock says none is alive
        self._inode = os.stat(self.path).st_ino
        self._listener = listener

    # -- serve ------------------------------------------------------------------

    def serve(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                self.log.error("accept failed", error=str(exc))
                time.sleep(0.1)
                continue
            thread = threading.Thread(target=self._connection, args=(conn,), daemon=True)
            with self._threads_lock:
                self._threads.add(thread)
            thread.start()

    def stop(self, *_: object) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop listening, remove our socket (not a successor's), let calls in flight finish."""
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
        for path in self.owned_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        deadline = time.monotonic() + STOP_GRACE
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.pool is not None:
            from cni_yogurt import plugin

            plugin.device_pool = None
            self.pool.close()
            self.pool = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve_one(conn)
        except (OSError, protocol.ProtocolError) as exc:
            # Garbage, half a request, a client gone or never reading: this connection only.
            self.log.warning("request dropped", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001  (one bad request must not stop the agent)
            self.log.error("request failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def _serve_one(self, conn: socket.socket) -> None:
        _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid != 0:  # the socket is 0600 already; this holds if someone loosens it
            raise PermissionError(f"uid {uid} is not root")
        conn.settimeout(READ_TIMEOUT)
        request = protocol.decode_request(protocol.read_frame(conn.recv, protocol.MAX_REQUEST))
        if request.kind == protocol.INFO:
            if self.cluster is not None:
                self.cluster.wake()  # asked after an admin change (`yogurt link`): reconcile now
            answer = protocol.Answer(protocol.INFO, stdout=json.dumps(self.info()).encode())
        else:
            answer = self.call(request)
        conn.settimeout(WRITE_TIMEOUT)
        conn.sendall(protocol.encode_answer(answer))

    def call(self, request: protocol.Request) -> protocol.Answer:
        """One CNI call, exactly as the exec'd plugin would make it."""
        conf = peek_config(request.stdin)
        if conf is not None and not self._mine(conf.get("stateDir", DEFAULT_STATE_DIR)):
            return protocol.Answer(protocol.NOT_MINE)
        out, err = io.StringIO(), io.StringIO()
        started = time.monotonic()
        with self.pool.call() if self.pool is not None else contextlib.nullcontext():
            rc = skel.run(request.env, io.BytesIO(request.stdin), out, err, _load_verbs)
        self.served += 1
        if self.observe is not None:
            verb = request.env.get("CNI_COMMAND", "")
            self.observe(verb, result_code(rc, out.getvalue()), time.monotonic() - started)
        return protocol.Answer(
            protocol.ANSWER,
            rc,
            out.getvalue().encode("utf-8", "surrogateescape"),
            err.getvalue().encode("utf-8", "surrogateescape"),
        )

    def _mine(self, state_dir: object) -> bool:
        """A config whose stateDir is not ours goes back to the caller (or the verb's own
        error, if it is no path at all)."""
        if not isinstance(state_dir, str) or not state_dir or "\0" in state_dir:
            return True
        return os.path.realpath(state_dir) == os.path.realpath(self.state_dir)

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "commit": self.commit,
            "abi": datapath.ABI,
            "started": self.started,
            "state_dir": self.state_dir,
            "bpffs_dir": self.bpffs_dir,
            "served": self.served,
            "cluster": self.cluster.describe() if self.cluster is not None else None,
            "pool": None
            if self.pool is None
            else {"size": self.pool.size, "ready": self.pool.indexes(), "taken": self.pool.taken},
        }


def start_cluster(
    cluster_file: str, state_dir: str, bpffs_dir: str, log: Any, node_name: str = "", node_address: str = ""
) -> Any:
    """Join the cluster store (agent/cluster.py) and hand the verbs the node's hold on it."""
    from cni_yogurt import plugin
    from cni_yogurt.agent.cluster import ClusterNode
    from cni_yogurt.cluster import config

    cfg = config.load(cluster_file, node=node_name, address=node_address)
    node = ClusterNode(cfg, state_dir, bpffs_dir, log).start()
    plugin.cluster_node = node
    log.info("cluster: node registered", **node.describe())
    return node


def run(
    state_dir: str,
    bpffs_dir: str,
    metrics_address: str | None,
    metrics_socket: str | None,
    cluster_file: str | None = None,
    pool_size: int = 0,
    *,
    node_name: str = "",
    node_address: str = "",
) -> int:
    """`yogurt agent`, in the foreground."""
    from cni_yogurt.cni.errors import CNIError
    from cni_yogurt.log import get_logger

    log = get_logger(None, command="agent", state_dir=state_dir)
    observe: Observer | None = None
    agent = Agent(state_dir, bpffs_dir, log)
    node = None
    try:
        agent.claim()
        moved = agent.prepare()
        if cluster_file:
            node = start_cluster(cluster_file, state_dir, bpffs_dir, log, node_name, node_address)
            agent.cluster = node
        if metrics_address or metrics_socket:
            from cni_yogurt.agent import metrics

            observe = metrics.serve(agent, metrics_address, metrics_socket)
            agent.observe = observe
        signal.signal(signal.SIGTERM, agent.stop)
        signal.signal(signal.SIGINT, agent.stop)
        agent.start_pool(pool_size)
        agent.bind()
    except AgentBusy as exc:
        log.error("agent not started", error=str(exc))
        return 1
    except CNIError as exc:  # the cluster's configuration or store: named, no traceback
        log.error("agent not started", error=f"{exc.msg}: {exc.details}" if exc.details else exc.msg)
        agent.close()
        return 1
    except Exception as exc:  # noqa: BLE001  (an admin command: say what failed, no traceback)
        log.error("agent not started", error=f"{type(exc).__name__}: {exc}")
        agent.close()
        return 1
    log.info(
        "agent serving",
        socket=agent.path,
        pins=Pins.under(bpffs_dir).root,
        moved=moved,
        pool=agent.pool.size if agent.pool else 0,
    )
    agent.serve()
    agent.close()
    if node is not None:
        node.stop()
    log.info("agent stopped", served=agent.served)
    return 0
