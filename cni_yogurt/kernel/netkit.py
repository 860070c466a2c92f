"""The netkit link kind for pyroute2 (IFLA_INFO_KIND "netkit", Linux >= 6.7).

pyroute2 0.9.7 knows no netkit.  `netkit_data` describes IFLA_INFO_DATA the
way pyroute2's own link-kind plugins do (modelled on its veth support) and
is registered with `ifinfmsg.ifinfo.register_link_kind`, so it could be
sent upstream as `pyroute2/netlink/rtnl/ifinfmsg/plugins/netkit.py`.

Attribute numbers are from include/uapi/linux/if_link.h (IFLA_NETKIT_*).
"""

from __future__ import annotations

from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.ifinfmsg import ifinfbase, ifinfmsg

KIND = "netkit"

# enum netkit_action: program verdicts and device policies
NETKIT_NEXT = -1
NETKIT_PASS = 0
NETKIT_DROP = 2
NETKIT_REDIRECT = 7

# enum netkit_mode
NETKIT_L2 = 0
NETKIT_L3 = 1

# enum netkit_scrub
NETKIT_SCRUB_NONE = 0
NETKIT_SCRUB_DEFAULT = 1


class netkit_data(nla):
    """IFLA_INFO_DATA of a netkit device."""

    prefix = "IFLA_"
    nla_map = (
        ("IFLA_NETKIT_UNSPEC", "none"),
        ("IFLA_NETKIT_PEER_INFO", "peer_info"),
        ("IFLA_NETKIT_PRIMARY", "uint8"),
        ("IFLA_NETKIT_POLICY", "uint32"),
        ("IFLA_NETKIT_PEER_POLICY", "uint32"),
        ("IFLA_NETKIT_MODE", "uint32"),
        ("IFLA_NETKIT_SCRUB", "uint32"),
        ("IFLA_NETKIT_PEER_SCRUB", "uint32"),
        ("IFLA_NETKIT_HEADROOM", "uint16"),
        ("IFLA_NETKIT_TAILROOM", "uint16"),
    )

    class peer_info(ifinfbase, nla):
        """A `struct ifinfomsg` followed by IFLA_* attributes for the peer.

        It must be an nla built on ifinfbase (like pyroute2's ifinfveth):
        deriving from ifinfmsg would write a 16-byte nlmsghdr first, the
        kernel would then ignore the peer's attributes and silently create
        it in the caller's netns as "nk0".
        """


def register() -> None:
    """Teach pyroute2's ifinfmsg to encode and decode netkit's IFLA_INFO_DATA."""
    if ifinfmsg.ifinfo.data_map.get(KIND) is not netkit_data:
        ifinfmsg.ifinfo.register_link_kind(module={KIND: netkit_data})


register()


def link_info(
    peer_name: str,
    peer_netns_fd: int | None = None,
    *,
    peer_index: int = 0,
    mode: int = NETKIT_L3,
    policy: int = NETKIT_DROP,
    peer_policy: int = NETKIT_DROP,
) -> dict[str, object]:
    """IFLA_LINKINFO for a new pair.  Both ends default to blackhole: the
    pair is closed until programs are attached and decide otherwise."""
    peer_attrs: list[tuple[str, object]] = [("IFLA_IFNAME", peer_name)]
    if peer_netns_fd is not None:
        peer_attrs.append(("IFLA_NET_NS_FD", peer_netns_fd))
    return {
        "attrs": [
            ("IFLA_INFO_KIND", KIND),
            (
                "IFLA_INFO_DATA",
                {
                    "attrs": [
                        ("IFLA_NETKIT_PEER_INFO", {"index": peer_index, "attrs": peer_attrs}),
                        ("IFLA_NETKIT_MODE", mode),
                        ("IFLA_NETKIT_POLICY", policy),
                        ("IFLA_NETKIT_PEER_POLICY", peer_policy),
                    ]
                },
            ),
        ]
    }
