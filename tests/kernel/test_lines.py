"""Lines: at most two ends, re-pairing, and many lines wired in parallel."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from conftest import Node, addresses, ifindex

from cni_yogurt import lab
from cni_yogurt.datapath import Partner
from cni_yogurt.line import naming


def test_third_end_is_refused_and_leaves_nothing(node: Node) -> None:
    conf = node.conf()
    one, two, three = node.netns(), node.netns(), node.netns()
    node.add(conf, one)
    node.add(conf, two)
    before = node.leftovers()
    run = node.run("ADD", conf, three)
    assert run.rc != 0
    assert run.out["code"] == 100
    assert conf["name"] in run.out["msg"]
    assert one.name in run.out["details"] and two.name in run.out["details"]
    assert "Traceback" not in run.stderr
    assert node.leftovers() == before
    assert naming.host_ifname(three.name, "eth0") not in node.devices()
    assert three.run("ip", "-o", "link", "show", "eth0").returncode != 0
    node.delete(conf, one)
    node.delete(conf, two)


def test_line_from_cni_args_overrides_config(node: Node) -> None:
    conf = node.conf(line="from-config")
    one, two = node.netns(), node.netns()
    node.add(conf, one, cni_args="IgnoreUnknown=1;YOGURT_LINE=from-args;K8S_POD_NAME=x")
    node.add(conf, two, cni_args="YOGURT_LINE=from-args")
    assert {e.line for e in node.ends().values()} == {"from-args"}
    node.delete(conf, one)
    node.delete(conf, two)


def test_del_of_one_end_leaves_the_other_reaching_nothing_then_a_new_end_pairs(node: Node) -> None:
    conf = node.conf()
    one, two = node.netns(), node.netns()
    r1, r2 = node.add(conf, one), node.add(conf, two)
    (a4, _), (b4, _) = addresses(r1), addresses(r2)
    assert lab.ping(one, b4) == 2
    node.delete(conf, two)
    assert node.map_entries() == {}
    assert lab.ping(one, b4) == 0
    os.system(f"ip addr add 10.42.0.253/24 dev {r1['interfaces'][0]['name']}")
    assert lab.ping(one, "10.42.0.253") == 0  # unpaired: not even to the host
    three = node.netns()
    r3 = node.add(conf, three)
    c4, _ = addresses(r3)
    assert lab.ping(one, c4) == 2
    assert lab.ping(three, a4) == 2
    node.delete(conf, one)
    node.delete(conf, three)


def test_parallel_adds_for_many_lines_wire_each_to_its_partner(node: Node) -> None:
    lines = 5
    conf = node.conf(subnet6=None)
    jobs = [(f"par-{i}", node.netns()) for i in range(lines) for _ in range(2)]

    def add(job: tuple[str, lab.Netns]) -> dict:
        line, ns = job
        return node.add(conf, ns, cni_args=f"YOGURT_LINE={line}")

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(add, jobs))
    entries = node.map_entries()
    assert len(entries) == 2 * lines
    index = {}
    for (line, ns), result in zip(jobs, results, strict=True):
        index[ns.name] = (line, ifindex(result["interfaces"][0]["name"]))
    for i in range(lines):
        (_, x), (_, y) = [(ns, index[ns.name][1]) for line, ns in jobs if line == f"par-{i}"]
        assert entries[x].host_ifindex == y
        assert entries[y].host_ifindex == x
        assert isinstance(entries[x], Partner)
    # and packets follow the map: each first end reaches its own partner only
    for i in range(0, len(jobs), 2):
        partner_ip, _ = addresses(results[i + 1])
        assert lab.ping(jobs[i][1], partner_ip, count=1) == 1
    other_ip, _ = addresses(results[3])
    assert lab.ping(jobs[0][1], other_ip, count=1) == 0
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        list(pool.map(lambda job: node.delete(conf, job[1]), jobs))
