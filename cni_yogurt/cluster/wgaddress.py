"""The node's address inside WireGuard, allocated from the cluster's range by transaction.

With `wireguardRange` in the cluster file every node's address comes from that range: the key
<prefix>/wireguard/<ip> holds the name of the node that has it, created only if absent (one
transaction), with no lease — a node keeps its address across restarts and outages of its agent,
as it keeps its tunnel ids' lines, and gives it back only when it leaves (`yogurt leave`).  The
node also remembers it in its dataDir and asks for that one first (as flannel takes back its
previous subnet): after a reboot, or a store rebuilt from scratch, it comes back with the same
address whenever nobody else took it.
"""

from __future__ import annotations

import ipaddress

from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cni.errors import CNIError, Code

MAX_ATTEMPTS = 64


def candidates(network: ipaddress.IPv4Network, taken: set[str], remembered: str = "") -> list[str]:
    """The addresses to try, best first (pure): the remembered one if it is in the range and free,
    then the range's hosts in order, without the taken ones."""
    out = []
    if remembered and remembered not in taken:
        try:
            if ipaddress.IPv4Address(remembered) in network and remembered not in (
                str(network.network_address),
                str(network.broadcast_address),
            ):
                out.append(remembered)
        except ValueError:
            pass
    out += [str(h) for h in network.hosts() if str(h) not in taken and str(h) != remembered]
    return out


def owners(client: Client, keys: Keys) -> dict[str, str]:
    """Every allocated address and the node that has it."""
    head = keys.wireguard_addresses()
    kvs, _ = client.get_prefix(head)
    return {kv.key[len(head) :].decode(): kv.value.decode() for kv in kvs}


def allocate(client: Client, keys: Keys, node: str, network: str, remembered: str = "") -> str:
    """The node's address in `network` (no prefix): the one it has in the store already, else the
    remembered one if free, else the lowest free.  Code 11 if none is left or the race never ends."""
    net = ipaddress.IPv4Network(network)
    for _ in range(MAX_ATTEMPTS):
        have = owners(client, keys)
        mine = sorted((ip for ip, who in have.items() if who == node), key=ipaddress.IPv4Address)
        if remembered in mine:
            return remembered
        if mine and ipaddress.IPv4Address(mine[0]) in net:
            return mine[0]
        free = candidates(net, set(have), remembered)
        if not free:
            raise CNIError(
                Code.TRY_AGAIN_LATER, "cluster: no WireGuard address left", f"all of {net} are taken"
            )
        key = keys.wireguard_address(free[0])
        resp = client.txn([gw.compare(key, "CREATE", "EQUAL", 0)], [gw.op_put(key, node.encode())])
        if gw.succeeded(resp):
            return free[0]
    raise CNIError(Code.TRY_AGAIN_LATER, "cluster: no WireGuard address", "too many nodes allocating at once")


def release(client: Client, keys: Keys, node: str) -> list[str]:
    """Give back the node's addresses (it leaves the cluster); the ones given back."""
    gone = []
    for ip, who in owners(client, keys).items():
        if who != node:
            continue
        key = keys.wireguard_address(ip)
        resp = client.txn([gw.compare(key, "VALUE", "EQUAL", node.encode())], [gw.op_delete(key)])
        if gw.succeeded(resp):
            gone.append(ip)
    return gone
