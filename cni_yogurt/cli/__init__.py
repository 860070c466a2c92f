"""`yogurt` without CNI_COMMAND: the admin CLI."""

from __future__ import annotations

import argparse
import json

from cni_yogurt.cni.netconf import DEFAULT_BPFFS_DIR, DEFAULT_STATE_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yogurt",
        description="cni-yogurt: a private netkit+eBPF wire between two containers. "
        'With CNI_COMMAND set, this executable is the CNI plugin (type "yogurt").',
    )
    parser.add_argument("--version", action="store_true", help="the release (as `yogurt version`)")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    version = sub.add_parser("version", help="the release, its pin ABI and commit, the CNI spec versions")
    version.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("doctor", "can this node run the plugin? (netkit, bpffs, bcc, privileges)"),
        ("status", "lines, their ends and whether their programs are attached"),
        ("upgrade", "move live lines onto this release's programs in place, then remove older pins"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
        p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "doctor":
            p.add_argument("--cluster", metavar="FILE", help="also check the cluster store of this file")
    agent = sub.add_parser("agent", help="serve CNI calls from one resident process (optional; see README)")
    agent.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    agent.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    agent.add_argument("--metrics-address", metavar="HOST:PORT", help="serve Prometheus metrics over HTTP")
    agent.add_argument("--metrics-socket", metavar="PATH", help="serve Prometheus metrics on a unix socket")
    agent.add_argument(
        "--cluster", metavar="FILE", help='join the cluster store (etcd) for networks with "cluster": true'
    )
    agent.add_argument(
        "--node", metavar="NAME", default="", help="the node's name (replaces the cluster file's)"
    )
    agent.add_argument(
        "--address",
        metavar="IP",
        default="",
        help="the node's underlay address (replaces the cluster file's)",
    )
    agent.add_argument(
        "--pool",
        type=int,
        default=8,
        metavar="N",
        help="veth pairs kept made and attached ahead, for ADDs on veth + tcx (0: none)",
    )
    link = sub.add_parser("link", help="set a line, or one end, down (no carrier, nothing passes) or up")
    link.add_argument("state", choices=("down", "up"))
    which = link.add_mutually_exclusive_group(required=True)
    which.add_argument("--line", metavar="LINE", help="every end of this line on this node")
    which.add_argument("--end", metavar="CONTAINER/IFNAME", help="one end (as `yogurt status` names it)")
    link.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    link.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    link.add_argument("--json", action="store_true", help="machine-readable output")
    imp = sub.add_parser("impair", help="impair what a line's ends send (loss, corruption, duplicate, rate)")
    imp.add_argument("action", choices=("set", "show", "reset"))
    which = imp.add_mutually_exclusive_group(required=False)
    which.add_argument("--line", metavar="LINE", help="every end of this line on this node")
    which.add_argument("--end", metavar="CONTAINER/IFNAME", help="one end: what it sends (one way)")
    imp.add_argument("--loss", type=float, metavar="PERCENT", help="packets dropped")
    imp.add_argument(
        "--corruption", type=float, metavar="PERCENT", help="packets with a bit of their IPv4 header flipped"
    )
    imp.add_argument("--duplicate", type=float, metavar="PERCENT", help="packets sent twice")
    imp.add_argument("--rate", type=int, metavar="KBIT", help="at most this many kbit/s (0: no limit)")
    imp.add_argument("--delay", metavar="MS", help=argparse.SUPPRESS)  # refused, with the reason
    imp.add_argument("--jitter", metavar="MS", help=argparse.SUPPRESS)
    imp.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    imp.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    imp.add_argument("--json", action="store_true", help="machine-readable output")
    cap = sub.add_parser("capture", help="copy a line's packets (both ways) into pcapng or pcap; root only")
    which = cap.add_mutually_exclusive_group(required=True)
    which.add_argument("--line", metavar="LINE", help="the line, seen from its first end on this node")
    which.add_argument("--end", metavar="CONTAINER/IFNAME", help="one end (as `yogurt status` names it)")
    which.add_argument("--device", metavar="HOST_IFNAME", help="the end whose host-side device this is")
    which.add_argument("--pod", metavar="NAMESPACE/NAME", help="the end a pod holds")
    cap.add_argument("-w", "--write", metavar="FILE", required=True, help="the capture file, or - for stdout")
    cap.add_argument("--format", choices=("pcapng", "pcap"), default="pcapng")
    cap.add_argument("-s", "--snaplen", type=int, default=262144, help="bytes kept of each packet")
    cap.add_argument("-c", "--count", type=int, help="stop after this many packets")
    cap.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    cap.add_argument(
        "--drops", action="store_true", help="also what the end's guard drops, with why (pcapng: as comments)"
    )
    cap.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    cap.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    leave = sub.add_parser("leave", help="take this node out of the cluster: its record, devices, firewall")
    leave.add_argument("--cluster", metavar="FILE", required=True, help="the agent's cluster file")
    leave.add_argument("--node", metavar="NAME", default="", help="the node's name (replaces the file's)")
    leave.add_argument("--bpffs-dir", default=DEFAULT_BPFFS_DIR)
    leave.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    leave.add_argument("--json", action="store_true", help="machine-readable output")
    demo = sub.add_parser("demo", help="the yogurt phone: two netns on one line, through the CNI protocol")
    demo.add_argument("--keep", action="store_true", help="leave the namespaces wired up afterwards")
    demo.add_argument(
        "--nodes",
        type=int,
        default=1,
        metavar="N",
        help="2: one line across two nodes (netns, WireGuard, etcd)",
    )
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "version" or args.version:
        from cni_yogurt import release

        as_json = args.cmd == "version" and args.json
        print(json.dumps(release.describe()) if as_json else release.line())
        return 0
    if args.cmd == "doctor":
        from cni_yogurt.cli.doctor import doctor

        return doctor(args.bpffs_dir, args.state_dir, args.json, args.cluster)
    if args.cmd == "status":
        from cni_yogurt.cli.status import status

        return status(args.bpffs_dir, args.state_dir, args.json)
    if args.cmd == "upgrade":
        from cni_yogurt.cli.upgrade import upgrade

        return upgrade(args.bpffs_dir, args.state_dir, args.json)
    if args.cmd == "agent":
        from cni_yogurt.agent.server import run

        return run(
            args.state_dir,
            args.bpffs_dir,
            args.metrics_address,
            args.metrics_socket,
            args.cluster,
            args.pool,
            node_name=args.node,
            node_address=args.address,
        )
    if args.cmd == "link":
        from cni_yogurt.cli.link import link as set_link

        return set_link(args.state, args.line, args.end, args.state_dir, args.bpffs_dir, args.json)
    if args.cmd == "impair":
        from cni_yogurt.cli.impair import impair

        if args.action != "show" and not (args.line or args.end):
            parser.error(f"impair {args.action}: --line or --end")
        given = {k: getattr(args, k) for k in ("loss", "corruption", "duplicate", "rate", "delay", "jitter")}
        return impair(args.action, args.line, args.end, given, args.state_dir, args.bpffs_dir, args.json)
    if args.cmd == "capture":
        from cni_yogurt.cli.capture import capture

        if args.snaplen < 1 or (args.count is not None and args.count < 1):
            parser.error("--snaplen and --count are at least 1")
        if args.drops and args.format == "pcap":
            parser.error("--drops writes why as a packet comment, which classic pcap has no room for: pcapng")
        return capture(
            line=args.line,
            end=args.end,
            device=args.device,
            pod=args.pod,
            write=args.write,
            fmt=args.format,
            snaplen=args.snaplen,
            count=args.count,
            duration=args.duration,
            drops=args.drops,
            state_dir=args.state_dir,
            bpffs_dir=args.bpffs_dir,
        )
    if args.cmd == "leave":
        from cni_yogurt.cli.leave import leave

        return leave(args.cluster, args.node, args.state_dir, args.bpffs_dir, args.json)
    if args.cmd == "demo":
        if args.nodes != 1:
            from cni_yogurt.cli.demo_nodes import demo_nodes

            if args.nodes != 2:
                parser.error("--nodes: 1 (one node) or 2 (a line across two nodes)")
            return demo_nodes(args.nodes)
        from cni_yogurt.cli.demo import demo

        return demo(keep=args.keep)
    parser.print_help()
    return 0 if not argv else 2
