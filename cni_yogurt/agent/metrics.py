"""Prometheus metrics of the node agent (`yogurt agent --metrics-address/--metrics-socket`).

prometheus_client (Debian's python3-prometheus-client) is imported only here,
so only an agent asked for metrics needs it.  Each end's counters are read
from the pinned counters map at scrape time, for the ends the line registry
knows; the verbs' counts and latencies are recorded as the agent serves them.

    yogurt_end_sent_packets_total{line,end,host_ifname}      to the partner
    yogurt_end_sent_bytes_total{...}
    yogurt_end_dropped_packets_total{...,reason}   not_wired | unmarked | wrong_sender
    yogurt_agent_requests_total{verb,code}         code 0: success, else the CNI error code
    yogurt_agent_request_duration_seconds{verb}    histogram
    yogurt_agent_start_time_seconds
    yogurt_agent_info{version,abi,commit}          1 (commit "" where unknown)
    yogurt_cluster_ends_lost                       with --cluster: ends whose line two other ends
                                                   took while this node's claims were gone
    yogurt_cluster_nodes_refused                   with --cluster: nodes of another cluster protocol
                                                   that partner ends of this node (not wired)
"""

from __future__ import annotations

import contextlib
import os
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from cni_yogurt import __version__, datapath
from cni_yogurt.capture.tap import end_captured
from cni_yogurt.datapath import CounterMap, Pins
from cni_yogurt.line.impairment import shown
from cni_yogurt.line.registry import Registry

# (verb, CNI result code: 0 if it succeeded, seconds): what the agent tells the metrics per call.
Observer = Callable[[str, int, float], None]


class Served(Protocol):
    """What the metrics read of the agent that serves them (agent/server.py's Agent): named here so
    that this module needs nothing of the server's (which imports it)."""

    state_dir: str
    bpffs_dir: str
    started: float
    commit: str
    owned_paths: list[str]
    cluster: Any


DROP_REASONS = {
    "drop_not_wired": "not_wired",
    "drop_unmarked": "unmarked",
    "drop_wrong_sender": "wrong_sender",
}
# ADD through the agent is tens of ms; a DEL that waits on the kernel's grace periods, ~100 ms; GC, seconds.
BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EndCounters:
    """A prometheus_client collector: every end's counters, read from the map when scraped."""

    def __init__(self, state_dir: str, bpffs_dir: str) -> None:
        self.state_dir = state_dir
        self.pins = Pins.under(bpffs_dir)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["line", "end", "host_ifname"]
        sent = CounterMetricFamily(
            "yogurt_end_sent_packets", "Packets sent to the line's partner", labels=labels
        )
        sent_bytes = CounterMetricFamily(
            "yogurt_end_sent_bytes", "Bytes sent to the line's partner", labels=labels
        )
        dropped = CounterMetricFamily(
            "yogurt_end_dropped_packets",
            "Packets dropped: no partner on the line (not_wired), without the mark: what the host "
            "sent, forwarded or injected (unmarked), or from another end than the partner (wrong_sender)",
            labels=[*labels, "reason"],
        )
        impaired = CounterMetricFamily(
            "yogurt_end_impaired_packets",
            "What the end's impairments (`yogurt impair`) did to what it sent: lost, over_rate (both "
            "dropped), duplicated (a copy sent too), corrupted; since they were first set",
            labels=[*labels, "how"],
        )
        captured = GaugeMetricFamily(
            "yogurt_end_captured",
            "1 while `yogurt capture` copies what the end sends (its privacy lifted by root on this node)",
            labels=labels,
        )
        for end, counts in self._ends():
            values = [end.line, end.key, end.host_ifname]
            sent.add_metric(values, counts["redirected_packets"])
            sent_bytes.add_metric(values, counts["redirected_bytes"])
            for field, reason in DROP_REASONS.items():
                dropped.add_metric([*values, reason], counts[field])
            for how, count in self._impaired(end).items():
                impaired.add_metric([*values, how], count)
            captured.add_metric(values, 1 if end_captured(end) else 0)
        yield from (sent, sent_bytes, dropped, impaired, captured)

    def _impaired(self, end: Any) -> dict[str, int]:
        """What an impaired end's impairments did (line/impairment.py); {} for an end without."""
        if not end.impair:
            return {}
        with contextlib.suppress(OSError):
            return shown(self.pins, end)["did"] or {}
        return {}

    def _ends(self) -> Iterator[tuple[Any, dict[str, int]]]:
        ends = Registry(self.state_dir).snapshot().values()
        by_pins: dict[Pins, list[Any]] = {}
        for end in ends:
            if end.host_ifindex:
                by_pins.setdefault(end.pin_dir(self.pins), []).append(end)
        for pins, users in by_pins.items():
            if not pins.loaded():
                continue
            with contextlib.suppress(OSError), CounterMap(pins) as counters:
                for end in users:
                    counts = counters.get(end.host_ifindex)
                    if counts is not None:
                        yield end, counts


def serve(agent: Served, address: str | None, socket_path: str | None) -> Observer:
    """Register the metrics, serve them where asked; the observer the agent calls per request."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

    registry = CollectorRegistry(auto_describe=True)
    registry.register(EndCounters(agent.state_dir, agent.bpffs_dir))  # type: ignore[arg-type]  # duck-typed
    requests = Counter(
        "yogurt_agent_requests",
        "CNI calls served, by verb and result code (0: success)",
        ["verb", "code"],
        registry=registry,
    )
    latency = Histogram(
        "yogurt_agent_request_duration_seconds",
        "Time to serve a CNI call, by verb",
        ["verb"],
        buckets=BUCKETS,
        registry=registry,
    )
    start = Gauge("yogurt_agent_start_time_seconds", "When the agent started (Unix time)", registry=registry)
    start.set(agent.started)
    info = Gauge(
        "yogurt_agent_info",
        "The agent's release, program ABI and commit",
        ["version", "abi", "commit"],
        registry=registry,
    )
    info.labels(__version__, str(datapath.ABI), agent.commit).set(1)
    if agent.cluster is not None:
        lost = Gauge(
            "yogurt_cluster_ends_lost",
            "Ends on this node whose line two other ends took while the node's claims were gone",
            registry=registry,
        )
        lost.set_function(lambda: len(agent.cluster.lost) if agent.cluster is not None else 0)
        refused = Gauge(
            "yogurt_cluster_nodes_refused",
            "Nodes whose release speaks another cluster protocol, partnering ends of this node (not wired)",
            registry=registry,
        )
        refused.set_function(lambda: len(agent.cluster.refused) if agent.cluster is not None else 0)

    if address:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    if socket_path:
        _serve_on_unix_socket(socket_path, registry, agent.owned_paths)

    def observe(verb: str, code: int, seconds: float) -> None:
        verb = verb if verb in ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION") else "other"
        requests.labels(verb, str(code)).inc()
        latency.labels(verb).observe(seconds)

    return observe


def _serve_on_unix_socket(path: str, registry: Any, owned: list[str]) -> None:
    """HTTP on a root-only unix socket (bound under another name, then renamed into place)."""
    from prometheus_client.exposition import MetricsHandler

    class Handler(MetricsHandler):
        def address_string(self) -> str:  # a unix socket's peer has no address
            return "unix"

    Handler.registry = registry

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    temporary = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    old_umask = os.umask(0o177)
    try:
        server = Server(temporary, Handler)
    finally:
        os.umask(old_umask)
    os.chmod(temporary, 0o600)
    os.rename(temporary, path)
    owned.append(path)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
