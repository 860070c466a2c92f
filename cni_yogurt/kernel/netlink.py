"""A small synchronous rtnetlink client on top of pyroute2's message classes.

pyroute2 supplies the protocol (message layouts, attribute codecs, our
netkit kind); this module is the API.  pyroute2's own IPRoute is built on
asyncio and its import alone costs more than a whole ADD needs, so requests
are sent and answers read here on a plain netlink socket.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni_yogurt.kernel import netkit, tc  # netkit: registers the link kind with pyroute2
from cni_yogurt.kernel.netns import create_in, netlink_route_socket

IFF_UP = 0x1
IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254
_DECODERS = {RTM_NEWLINK: ifinfmsg, RTM_NEWADDR: ifaddrmsg, RTM_NEWROUTE: rtmsg, tc.RTM_NEWTFILTER: tc.tcmsg}
_HDR = struct.Struct("=IHHII")


class Rtnl:
    """One NETLINK_ROUTE socket, in the netns it was created in."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or netlink_route_socket()
        self.seq = 0

    @classmethod
    def in_netns(cls, netns_fd: int) -> Rtnl:
        return cls(create_in(netns_fd, netlink_route_socket))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        """Send one request; return the decoded answers; raise OSError on a NACK."""
        self.seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        answers: list[Any] = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    raise OSError(errno.EPROTO, "truncated netlink message")
                chunk = data[offset : offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_DONE:
                    return answers
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from("=i", chunk, _HDR.size)[0]
                    if code:
                        raise OSError(-code, f"netlink: {errno.errorcode.get(-code, -code)}")
                    return answers  # the ACK; dumps end with DONE instead
                decoder = _DECODERS.get(kind)
                if decoder is not None:
                    answer = decoder(chunk)
                    answer.decode()
                    answers.append(answer)

    # -- links ---------------------------------------------------------------

    def link(self, name: str) -> Any | None:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            found = self.request(msg, RTM_GETLINK)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return found[0] if found else None

    def link_by_index(self, index: int) -> Any | None:
        msg = ifinfmsg()
        msg["index"] = index
        try:
            found = self.request(msg, RTM_GETLINK)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return found[0] if found else None

    def links(self) -> list[Any]:
        return self.request(ifinfmsg(), RTM_GETLINK, NLM_F_DUMP)

    def create_netkit(
        self, name: str, peer_name: str, peer_netns_fd: int | None, mtu: int | None = None, index: int = 0
    ) -> None:
        """A netkit pair, both ends in blackhole: closed until programs decide otherwise.
        `index`: both ends get this ifindex (0: the kernel picks each)."""
        self._create_pair(name, netkit.link_info(peer_name, peer_netns_fd, peer_index=index), mtu, index)

    def create_veth(
        self,
        name: str,
        peer_name: str,
        peer_netns_fd: int,
        mtu: int | None = None,
        index: int = 0,
        peer_mac: str | None = None,
    ) -> None:
        """A veth pair, both ends down: nothing crosses before programs are attached and ends set up."""
        peer: list[tuple[str, Any]] = [("IFLA_IFNAME", peer_name), ("IFLA_NET_NS_FD", peer_netns_fd)]
        if mtu:
            peer.append(("IFLA_MTU", mtu))
        if peer_mac:
            peer.append(("IFLA_ADDRESS", peer_mac))
        info = {
            "attrs": [
                ("IFLA_INFO_KIND", "veth"),
                ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"index": index, "attrs": peer})]}),
            ]
        }
        self._create_pair(name, info, mtu, index)

    def _create_pair(self, name: str, link_info: dict[str, Any], mtu: int | None, index: int) -> None:
        msg = ifinfmsg()
        msg["index"] = index  # the kernel gives the peer this one too only when both ask for it
        attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", link_info)]
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def create_link(self, name: str, kind: str, data: list[tuple[str, Any]] | None = None) -> None:
        """A device of `kind` (wireguard, vxlan...), with its kind's settings: EEXIST if the name is taken."""
        info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if data:
            info.append(("IFLA_INFO_DATA", {"attrs": data}))
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": info})]
        self.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def set_up(self, index: int, mtu: int | None = None) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
        if mtu:
            msg["attrs"] = [("IFLA_MTU", mtu)]
        self.request(msg, RTM_NEWLINK)

    def set_down(self, index: int) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        msg["flags"] = 0
        msg["change"] = IFF_UP
        self.request(msg, RTM_NEWLINK)

    def set_link(
        self, index: int, name: str | None = None, mtu: int | None = None, mac: str | None = None
    ) -> None:
        """Rename a device (it must be down) and/or set its MTU and MAC address."""
        msg = ifinfmsg()
        msg["index"] = index
        attrs: list[tuple[str, Any]] = []
        if name:
            attrs.append(("IFLA_IFNAME", name))
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        if mac:
            attrs.append(("IFLA_ADDRESS", mac))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWLINK)

    def move_link(self, index: int, netns_fd: int, name: str) -> None:
        """Move a device of this netns into another one, renamed, keeping its ifindex: the
        kernel fails (EBUSY) rather than pick another one if it is taken there."""
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [("IFLA_NET_NS_FD", netns_fd), ("IFLA_IFNAME", name), ("IFLA_NEW_IFINDEX", index)]
        self.request(msg, RTM_NEWLINK)

    def set_alias(self, index: int, alias: str) -> None:
        """The interface alias (`ip link` shows it); the kernel ignores one given at creation."""
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [("IFLA_IFALIAS", alias)]
        self.request(msg, RTM_NEWLINK)

    def delete_link(self, index: int) -> bool:
        msg = ifinfmsg()
        msg["index"] = index
        try:
            self.request(msg, RTM_DELLINK)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def delete_links(self, indexes: list[int], group: int) -> None:
        """Delete many devices in one request: put them in a device group of their own,
        then delete the group.  The kernel unregisters them as one batch, paying the grace
        periods of a veth teardown once instead of once per device (≈ 40 ms each here);
        an attached tcx link still costs one grace period each.  `group`: a group id
        nothing else on the host uses."""
        moved = False
        for index in indexes:
            msg = ifinfmsg()
            msg["index"] = index
            msg["attrs"] = [("IFLA_GROUP", group)]
            try:
                self.request(msg, RTM_NEWLINK)
                moved = True
            except OSError as exc:
                if exc.errno not in (errno.ENODEV, errno.ENOENT):
                    raise
        if moved:
            msg = ifinfmsg()
            msg["attrs"] = [("IFLA_GROUP", group)]
            self.request(msg, RTM_DELLINK)

    # -- addresses and routes -------------------------------------------------

    def add_address(self, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        msg = ifaddrmsg()
        msg["index"] = index
        msg["family"] = socket.AF_INET if address.version == 4 else socket.AF_INET6
        msg["prefixlen"] = address.network.prefixlen
        ip = str(address.ip)
        attrs: list[tuple[str, Any]] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
        if address.version == 6:
            # The partner answers no neighbour solicitation (L3, NOARP) and we
            # hand out the address from IPAM: duplicate detection only delays it.
            attrs = [("IFA_ADDRESS", ip), ("IFA_FLAGS", IFA_F_NODAD)]
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)

    def addresses(self, index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        out = []
        for msg in self.request(ifaddrmsg(), RTM_GETADDR, NLM_F_DUMP):
            if msg["index"] == index:
                addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
                out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        return out

    def add_route(
        self,
        dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
        gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        oif: int,
        **extra: int | None,
    ) -> None:
        msg = rtmsg()
        msg["family"] = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        msg["dst_len"] = dst.prefixlen
        msg["table"] = extra.get("table") or RT_TABLE_MAIN
        msg["proto"] = 4  # RTPROT_STATIC
        msg["scope"] = extra.get("scope") if extra.get("scope") is not None else (0 if gateway else 253)
        msg["type"] = 1  # RTN_UNICAST
        attrs: list[tuple[str, Any]] = [("RTA_OIF", oif)]
        if dst.prefixlen:
            attrs.append(("RTA_DST", str(dst.network_address)))
        if gateway is not None:
            attrs.append(("RTA_GATEWAY", str(gateway)))
        if extra.get("priority") is not None:
            attrs.append(("RTA_PRIORITY", extra["priority"]))
        if msg["table"] > 255:
            attrs.append(("RTA_TABLE", msg["table"]))
            msg["table"] = 252  # RT_TABLE_COMPAT
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)

    def routes(self, oif: int) -> list[tuple[str, str | None]]:
        """(dst/prefix, gateway) of the routes through one device."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            query = rtmsg()
            query["family"] = family
            for msg in self.request(query, RTM_GETROUTE, NLM_F_DUMP):
                if msg.get_attr("RTA_OIF") != oif:
                    continue
                dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
                out.append((net.with_prefixlen, msg.get_attr("RTA_GATEWAY")))
        return out

    # -- tc: clsact + cls_bpf (the veth attach path on kernels without tcx) ----

    def add_clsact(self, index: int) -> None:
        try:
            self.request(tc.clsact_msg(index), tc.RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def add_bpf_filter(self, index: int, parent: int, prog_fd: int, name: str) -> None:
        """Our one filter per direction (fixed handle and priority), replacing one already there."""
        self.request(
            tc.bpf_filter_msg(index, parent, prog_fd, name), tc.RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_REPLACE
        )

    def delete_bpf_filter(self, index: int, parent: int) -> bool:
        """Remove our filter (add_bpf_filter's handle and priority); False if there was none."""
        try:
            self.request(tc.bpf_filter_msg(index, parent, 0, "", options=False), tc.RTM_DELTFILTER)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                return False
            raise
        return True

    def bpf_filter_ids(self, index: int, parent: int) -> list[int]:
        """IDs of the programs in the cls_bpf filters of one clsact direction."""
        try:
            found = self.request(tc.filter_dump_msg(index, parent), tc.RTM_GETTFILTER, NLM_F_DUMP)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # no clsact qdisc on the device
                return []
            raise
        return [i for msg in found if (i := tc.bpf_prog_id(msg)) is not None]


def link_kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def link_data(msg: Any) -> dict[str, Any]:
    """The kind's own settings of a link (IFLA_INFO_DATA: IFLA_VXLAN_PORT...), by attribute name."""
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is None or isinstance(data, (bytes, str)):
        return {}
    return {name: value for name, value in data.get("attrs", [])}
