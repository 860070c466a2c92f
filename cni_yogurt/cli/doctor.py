"""`yogurt doctor`: what this node lacks for ADD to work, and how to fix it."""

from __future__ import annotations

import json
from dataclasses import asdict

from cni_yogurt import health
from cni_yogurt.agent import report
from cni_yogurt.health import Finding


def cluster_finding(cluster_file: str) -> Finding:
    """The cluster store as this node sees it (cluster/probe.py): config, members, quorum, registration."""
    from cni_yogurt.cluster import config
    from cni_yogurt.cluster.probe import probe
    from cni_yogurt.cni.errors import CNIError

    try:
        cfg = config.load(cluster_file)
    except CNIError as e:
        return Finding("cluster", False, f"{e.msg}: {e.details}", f"fix {cluster_file}")
    found = probe(cfg)
    if not found.ok:
        return Finding(
            "cluster",
            False,
            "; ".join(found.problems + found.warnings),
            "check endpoints, certificates and the node name; is `yogurt agent --cluster` running?",
        )
    members = ", ".join(f"{ep} (etcd {v})" for ep, v in found.versions.items())
    detail = f"node {cfg.node} registered; {members}" + (
        f"; warnings: {'; '.join(found.warnings)}" if found.warnings else ""
    )
    return Finding("cluster", True, detail)


def wireguard_finding(cluster_file: str) -> Finding:
    """The node's WireGuard device as the agent made or adopted it (agent/devices.py)."""
    from cni_yogurt.agent import devices
    from cni_yogurt.cluster import config
    from cni_yogurt.cni.errors import CNIError

    try:
        return Finding("wireguard", True, devices.describe_wireguard(config.load(cluster_file)))
    except CNIError as e:
        return Finding("wireguard", False, f"{e.msg}: {e.details}", f"fix {cluster_file}")
    except (devices.DeviceError, OSError) as e:
        return Finding("wireguard", False, str(e), "start `yogurt agent --cluster`: it makes or adopts it")


def tunnel_guard_finding(cluster_file: str) -> Finding:
    """Whether the tunnel's UDP port is open to WireGuard alone (agent/firewall.py)."""
    from cni_yogurt.agent import firewall
    from cni_yogurt.cluster import config
    from cni_yogurt.cni.errors import CNIError

    try:
        cfg = config.load(cluster_file)
        tunnel = firewall.tunnel_device(cfg.tunnel_device)
    except CNIError as e:
        return Finding("tunnel", False, f"{e.msg}: {e.details}", f"fix {cluster_file}")
    except firewall.FirewallError as e:
        return Finding("tunnel", False, str(e), "start `yogurt agent --cluster`: it makes or adopts it")
    dropped = firewall.guarding(tunnel.port, cfg.wireguard_device)
    if dropped is None:
        return Finding(
            "tunnel",
            False,
            f"UDP {tunnel.port} ({tunnel.name}) is not limited to {cfg.wireguard_device}: "
            "tunnel frames sent in clear to this node would reach it",
            "start `yogurt agent --cluster`, which puts the rule in place (nft table inet cni_yogurt)",
        )
    return Finding(
        "tunnel",
        True,
        f"UDP {tunnel.port} ({tunnel.name}) only through {cfg.wireguard_device}; {dropped} dropped",
    )


def doctor(bpffs_dir: str, state_dir: str, as_json: bool, cluster_file: str | None = None) -> int:
    findings = [*health.node_findings(bpffs_dir, state_dir, cached=False), report.finding(state_dir)]
    if cluster_file:
        findings += [
            cluster_finding(cluster_file),
            wireguard_finding(cluster_file),
            tunnel_guard_finding(cluster_file),
        ]
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=1))
    else:
        for f in findings:
            print(f"{'ok ' if f.ok else 'BAD'} {f.name:<10} {f.detail}")
            if not f.ok and f.fix:
                print(f"    fix: {f.fix}")
    return 0 if all(f.ok for f in findings) else 1
