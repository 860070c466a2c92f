"""Link state, as a network lab uses it (`yogurt link down|up`, the config's `linkState`): the
container sees its interface lose carrier and get it back, nothing passes either way while an
end is down, and the line is as it was after up (CHECK passes).  Per backend: veth natively,
netkit in the VM."""

from __future__ import annotations

import json

from conftest import Node, Phone, addresses
from conftest import admin_cli as yogurt

from cni_yogurt import lab


def carrier(ns: lab.Netns) -> bool:
    """Whether the container's interface has carrier (its own admin state is never touched)."""
    [link] = json.loads(ns.run("ip", "-j", "link", "show", "eth0").stdout)
    assert "UP" in link["flags"], link  # the container's side stays as the container left it
    return "NO-CARRIER" not in link["flags"]


def passes(p: Phone) -> tuple[bool, bool]:
    """(one -> two, two -> one): whether a ping gets through each way."""
    return passes_between(p.one, p.two, p.a4, p.b4)


def passes_between(one: lab.Netns, two: lab.Netns, a4: str, b4: str) -> tuple[bool, bool]:
    return lab.ping(one, b4, count=1, wait=1) == 1, lab.ping(two, a4, count=1, wait=1) == 1


def delivered(src: lab.Netns, dst: lab.Netns, address: str) -> bool:
    """Whether one UDP datagram from `src` reaches `dst`: one way only, which a ping cannot tell."""
    send = lambda: lab.udp_send(src, b"link-state", address, 4343)  # noqa: E731
    return lab.udp_receive(dst, address, 4343, send, wait=1.0) == b"link-state"


def down_ends(line: str) -> dict[str, str]:
    run = yogurt("status", "--json")
    assert run.returncode == 0, run.stderr
    return {e["end"]: e["down"] for e in json.loads(run.stdout)["lines"].get(line, [])}


def check(node: Node, p: Phone) -> None:
    for ns, result in ((p.one, p.r1), (p.two, p.r2)):
        run = node.run("CHECK", {**p.conf, "prevResult": result}, ns)
        assert run.rc == 0, run.out


def test_a_line_set_down_loses_carrier_and_passes_nothing_until_up(node: Node) -> None:
    p = Phone(node)
    line = p.conf["name"]
    assert passes(p) == (True, True) and carrier(p.one) and carrier(p.two)
    run = yogurt("link", "down", "--line", line)
    assert run.returncode == 0, run.stderr
    assert not carrier(p.one) and not carrier(p.two)
    assert passes(p) == (False, False)
    assert set(down_ends(line).values()) == {"line"}
    assert "DOWN (yogurt link up)" in yogurt("status").stdout
    run = yogurt("link", "up", "--line", line)
    assert run.returncode == 0, run.stderr
    assert carrier(p.one) and carrier(p.two)
    assert passes(p) == (True, True)
    assert set(down_ends(line).values()) == {""}
    check(node, p)
    p.hang_up()


def test_one_end_down_passes_nothing_either_way_and_only_it_loses_carrier(node: Node) -> None:
    p = Phone(node)
    end = f"{p.one.name}/eth0"
    assert delivered(p.two, p.one, p.a4) and delivered(p.one, p.two, p.b4)
    run = yogurt("link", "down", "--end", end, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["ends"] == [{"end": end, "line": p.conf["name"]}]
    assert not carrier(p.one) and carrier(p.two)
    # Not even one way: the partner, which has carrier, reaches nothing (its sender has no wire).
    assert not delivered(p.two, p.one, p.a4) and not delivered(p.one, p.two, p.b4)
    assert passes(p) == (False, False)
    assert yogurt("link", "up", "--end", end).returncode == 0
    assert carrier(p.one) and passes(p) == (True, True)
    check(node, p)
    p.hang_up()


def test_a_line_configured_down_starts_down_and_its_partner_waits(node: Node) -> None:
    conf = node.conf(linkState="down")
    one, two = node.netns(), node.netns()
    a4 = addresses(node.add(conf, one))[0]  # starts down
    b4 = addresses(node.add({**conf, "args": {"cni": {"linkState": "up"}}}, two))[0]  # its partner is down
    assert not carrier(one) and carrier(two)
    assert passes_between(one, two, a4, b4) == (False, False)
    assert yogurt("link", "up", "--end", f"{one.name}/eth0").returncode == 0
    assert carrier(one) and passes_between(one, two, a4, b4) == (True, True)
    node.delete(conf, one)
    node.delete(conf, two)


def test_a_bad_link_state_is_refused_and_leaves_nothing(node: Node) -> None:
    for conf in (node.conf(linkState="sideways"), node.conf(args={"cni": {"linkState": 0}})):
        run = node.run("ADD", conf, node.netns())
        assert run.rc != 0 and run.out["code"] == 7, run.out
        assert "linkState" in run.out["msg"] and "Traceback" not in run.stderr
    assert node.leftovers() == {}


def test_link_is_for_root_alone(node: Node) -> None:
    p = Phone(node)
    run = yogurt("link", "down", "--line", p.conf["name"], user=65534)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert carrier(p.one) and passes(p) == (True, True)
    assert yogurt("link", "down", "--line", "no-such-line").returncode == 1
    p.hang_up()
