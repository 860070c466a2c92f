"""`yogurt demo`: the blog's yogurt phone, built through the real CNI protocol.

Two namespaces, yogurt-1 and yogurt-2, join one line; they ping and talk
TCP over IPv4 and IPv6; the host, even with a route towards a host-side
device, reaches neither.  Everything is torn down with DEL at the end.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Any

from cni_yogurt import health, lab
from cni_yogurt.cni.netconf import DEFAULT_STATE_DIR

NETWORK = "yogurt-demo"


def _conf(data_dir: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "yogurt",
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": "10.42.0.0/24"}], [{"subnet": "fd42::/64"}]],
        },
    }


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def line(self, ok: bool, text: str) -> None:
        self.failures += not ok
        print(f"  {'✔' if ok else '✘'} {text}", flush=True)


def demo(keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("yogurt demo needs root (netns, netlink, bpf)")
        return 1
    kind = health.check_backend(DEFAULT_STATE_DIR, "auto", "auto", cached=False)
    cni_path = lab.have_host_local()
    if not kind.ok or cni_path is None:
        print(kind.detail if not kind.ok else "host-local IPAM plugin not found")
        print("fix:", kind.fix if not kind.ok else "apt-get install containernetworking-plugins")
        return 1
    print(f"yogurt phone demo, backend: {kind.detail}")
    report = Report()
    conf = _conf(tempfile.mkdtemp(prefix="yogurt-demo-ipam-"))
    one, two = yogurts = [lab.Netns("yogurt-1"), lab.Netns("yogurt-2")]
    results: dict[str, dict[str, Any]] = {}
    try:
        for ns in yogurts:
            ns.create()
            run = lab.run_plugin("ADD", conf, container_id=ns.name, netns=ns.path, cni_path=cni_path)
            results[ns.name] = run.out
            ips = ", ".join(ip["address"] for ip in run.out.get("ips", [])) or str(run.out)
            how = run.out.get("yogurt", {})
            via = f" ({how.get('backend')}, {how.get('attach')})" if how else ""
            report.line(run.rc == 0, f"ADD {ns.name}: eth0 {ips}{via}")
            if run.rc != 0:
                return 1
        (a4, a6), (b4, b6) = (_addresses(results[ns.name]) for ns in yogurts)
        for src, dst, ip in ((one, two, b4), (two, one, a4), (one, two, b6), (two, one, a6)):
            got = lab.ping(src, ip, count=3)
            report.line(got == 3, f"ping {src.name} -> {dst.name} {ip}: {got}/3 replies")
        report.line(lab.tcp_exchange(two, b4, one), f"TCP {one.name} -> {two.name} {b4}:4242 echoed")
        report.line(lab.tcp_exchange(one, a6, two), f"TCP {two.name} -> {one.name} [{a6}]:4242 echoed")

        # The host tries too, with a route that points straight at the host-side device.
        device = results[two.name]["interfaces"][0]["name"]
        subprocess.run(["ip", "route", "add", f"{b4}/32", "dev", device], check=True)
        got = lab.ping(None, b4, count=2)
        report.line(got == 0, f"host -> {two.name} {b4} via {device}: {got}/2 replies (blocked)")
        reached = lab.tcp_exchange(two, b4, None, port=4343, timeout=1.5)
        report.line(not reached, f"host TCP -> {two.name} {b4}:4343 {'CONNECTED' if reached else 'blocked'}")
        subprocess.run(["ip", "route", "del", f"{b4}/32", "dev", device], check=False)

        for ns in yogurts:
            run = lab.run_plugin(
                "CHECK",
                {**conf, "prevResult": results[ns.name]},
                container_id=ns.name,
                netns=ns.path,
                cni_path=cni_path,
            )
            report.line(run.rc == 0, f"CHECK {ns.name}: {'ok' if run.rc == 0 else run.out}")
    finally:
        if not keep:
            for ns in yogurts:
                run = lab.run_plugin("DEL", conf, container_id=ns.name, netns=ns.path, cni_path=cni_path)
                report.line(run.rc == 0, f"DEL {ns.name}")
                ns.delete()
    print("the yogurt phone works" if report.failures == 0 else f"{report.failures} check(s) failed")
    return 0 if report.failures == 0 else 1


def _addresses(result: dict[str, Any]) -> tuple[str, str]:
    """The IPv4 and IPv6 address ADD gave a container."""
    ips = [ip["address"].split("/")[0] for ip in result.get("ips", [])]
    return next(ip for ip in ips if ":" not in ip), next(ip for ip in ips if ":" in ip)
