"""`yogurt leave --cluster <file>`: take this node out of the cluster, cleanly.

Run with the node's agent stopped (it would make it all again).  In order: the node's record and
every claim of its ends go from etcd (its lease revoked), its WireGuard address goes back to the
range; every end's remote wiring is cut and the tunnel's receive program detached; the agent's
nftables table and the devices the agent made (none it adopted) are removed.  It says what it
left: ends still on the node (DEL them, or let the runtime do it) and the WireGuard key, kept in
dataDir so that the node comes back as itself (remove the file to forget it).
"""

from __future__ import annotations

import json
from typing import Any

from cni_yogurt.agent import devices, firewall, frontend
from cni_yogurt.cluster import config, nodes, wgaddress
from cni_yogurt.cluster import lease as leases
from cni_yogurt.cluster.claims import LineClaims
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.errors import StoreError
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cni.errors import CNIError
from cni_yogurt.datapath import Pins
from cni_yogurt.line.registry import Registry


def _store_part(cfg: config.ClusterConfig, report: dict[str, Any]) -> None:
    client, keys = Client.from_config(cfg), Keys(cfg.prefix)
    with client.deadline():
        kv = client.get(keys.node(cfg.node))
        if kv is not None and kv.lease:
            leases.revoke(client, leases.Lease(kv.lease, 0))  # the record and the ready claims
        nodes.deregister(client, keys, cfg.node)
        claims = LineClaims(client, keys, cfg.node)
        for c in claims.ends_on_node():  # claims of ADDs under their own leases
            claims.release(c.line, c.end_key)
        report["released"] = {
            "node": kv is not None,
            "wireguard_addresses": wgaddress.release(client, keys, cfg.node),
        }


def _kernel_part(cfg: config.ClusterConfig, bpffs_dir: str, report: dict[str, Any]) -> None:
    from cni_yogurt.line import remote

    pins = Pins.under(bpffs_dir)
    cut = []
    if pins.loaded():
        for index in sorted(remote.remote_partners(pins)):
            remote.cut_remote(pins, index)
            cut.append(index)
        remote.detach_tunnel(pins, cfg.tunnel_device)
    report["cut"] = cut
    report["firewall_removed"] = firewall.remove()
    report["devices_removed"] = devices.remove_owned(cfg)


def leave(cluster_file: str, node: str, state_dir: str, bpffs_dir: str, as_json: bool) -> int:
    if frontend.info(state_dir) is not None:
        print(f"yogurt leave: an agent serves {state_dir}: stop it first (it would make it all again)")
        return 1
    try:
        cfg = config.load(cluster_file, node=node, agent=False)
    except CNIError as e:
        print(f"yogurt leave: {e.msg}: {e.details}")
        return 1
    report: dict[str, Any] = {"node": cfg.node}
    rc = 0
    try:
        _store_part(cfg, report)
    except (StoreError, CNIError) as e:
        report["store_error"] = f"{e.msg}: {e.details}"
        rc = 1
    try:
        _kernel_part(cfg, bpffs_dir, report)
    except (OSError, firewall.FirewallError) as e:
        report["kernel_error"] = str(e)
        rc = 1
    left = [end for end in Registry(state_dir).snapshot().values() if end.cluster]
    report["ends_left"] = [end.holder() for end in left]
    report["kept"] = [str(devices.data_dir(cfg) / devices.KEY_FILE)]
    if as_json:
        print(json.dumps(report, indent=1))
        return rc
    print(f"node {cfg.node} left the cluster" + ("" if rc == 0 else " (not all of it: see below)"))
    if "released" in report:
        addresses = ", ".join(report["released"]["wireguard_addresses"]) or "none"
        print(f"  store: node record and claims removed; WireGuard address given back: {addresses}")
    if "store_error" in report:
        print(f"  store: NOT reached ({report['store_error']}): its record ages out with its lease")
    if "kernel_error" in report:
        print(f"  node: {report['kernel_error']}")
    else:
        print(f"  remote wiring cut for {len(report['cut'])} end(s); tunnel program detached")
        print(
            f"  nftables table inet {firewall.TABLE}: {'removed' if report['firewall_removed'] else 'none'}"
        )
        print(f"  devices removed: {', '.join(report['devices_removed']) or 'none (adopted ones stay)'}")
    for holder in report["ends_left"]:
        print(f"  left: end {holder} (DEL it, or let the runtime)")
    print(f"  kept: {report['kept'][0]} (the node's WireGuard key: remove it to forget the node)")
    return rc
