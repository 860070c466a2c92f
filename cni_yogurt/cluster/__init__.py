"""Lines across nodes: etcd as the cluster's line registry (the store layer only).

One module per concept: config (what the node is told), keys (where things live in etcd), gateway
(etcd's v3 JSON messages, pure), client (endpoints, failover, deadlines, TLS), errors (what a failure
means to a runtime), lease, watch, nodes (registration under a lease), claims (line ends by
transaction), vni (tunnel ids by transaction), probe (what doctor and STATUS will report).
The verbs reach it only through the node agent (agent/cluster.py), for networks with "cluster": true;
without a cluster configured, lines stay node-local and nothing here is imported.
"""
