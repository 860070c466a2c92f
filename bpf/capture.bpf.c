// SPDX-License-Identifier: GPL-2.0
//
// `yogurt capture`: a copy of every packet a line's sender sees, for root on
// the node (cni_yogurt/capture/tap.py).  Not part of the wire: compiled by bcc
// when a capture starts, attached with links that the capturing process
// alone holds, *before* the end's sender at the same hook, and gone when
// that process exits, however it exits.  While nobody captures, nothing of
// this runs: the line costs what it costs without it.
//
//   netkit: the peer hook of the end's primary (host-side) device
//   veth:   tcx ingress of the end's host-side device (before the sender,
//           whether that is a tcx link or, on "tc" and "split", a cls_bpf
//           filter: tcx runs before the clsact filters)
//
// Both see what the container sent, Ethernet header included (netkit's L3
// devices carry an all-zero one), with skb->ifindex the end's host-side
// device, whose ifindex both of an end's devices share.  The program never
// changes the packet or the verdict: it returns "next" (netkit and tcx alike
// take -1 as "run the next program"), so the sender behind it decides.
//
// SNAPLEN is defined by the loader (the capture's snap length, >= 1).
//
// `--drops` adds a third program, before the end's guard: it copies what the
// guard is about to drop, with why (GUARD_* below: the loader defines the
// pin paths of the end's maps, which it opens as they are).

#include <uapi/linux/bpf.h>

#ifndef SNAPLEN
#define SNAPLEN 262144
#endif

#define NEXT -1  // TCX_NEXT, NETKIT_NEXT

// What precedes each packet in the perf record; the kernel appends `caplen`
// bytes of the packet after it.
struct capture_event {
    u64 ts_ns;    // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u32 ifindex;  // the device it was copied at: a sending end's host side, or the tunnel
    u32 len;      // the packet's length on the wire
    u32 caplen;   // bytes that follow
    u32 dropped;  // 0: copied at a sender; else why the guard drops it (DROP_*)
};

BPF_PERF_OUTPUT(yogurt_capture_events);

// The packet, cut at SNAPLEN, after its event header, into the perf buffer.
static __always_inline int copy(struct __sk_buff *skb, u32 dropped)
{
    struct capture_event event = {};
    u32 caplen = skb->len < SNAPLEN ? skb->len : SNAPLEN;

    event.ts_ns = bpf_ktime_get_ns();
    event.ifindex = skb->ifindex;
    event.len = skb->len;
    event.caplen = caplen;
    event.dropped = dropped;
    yogurt_capture_events.perf_submit_skb(skb, caplen, &event, sizeof(event));
    return NEXT;
}

int yogurt_capture(struct __sk_buff *skb)
{
    return copy(skb, 0);
}

// An end wired across nodes: what its partner sends arrives through the
// node's tunnel device.  Copied at the tunnel's ingress, before the receive
// program, for the one (VNI, outer source) that is this end's line
// (TUNNEL_VNI, TUNNEL_NODE: the partner node's WireGuard address, host byte
// order as bpf_skb_get_tunnel_key gives it); reported with the tunnel
// device's ifindex, which tells userspace it came in for the end.
#ifdef TUNNEL_VNI
int yogurt_capture_tunnel(struct __sk_buff *skb)
{
    struct bpf_tunnel_key key = {};

    if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
        return NEXT;
    if (key.tunnel_id != TUNNEL_VNI || key.remote_ipv4 != TUNNEL_NODE)
        return NEXT;
    return copy(skb, 0);
}
#endif

// What the end's guard (yogurt_primary in bpf/yogurt.bpf.c) will drop,
// decided as it decides, from the same pinned maps, just before it runs: at
// netkit's primary hook, or tcx ingress of the container-side veth (before
// the guard, whether that is a tcx link or a cls_bpf filter).  skb->ifindex
// is the container-side device, whose ifindex is the end's.  The layouts and
// sizes are the wire's (this release's: tap.py taps no other's guard).
#ifdef GUARD_MARK
#define FROM_TUNNEL 0xffffffff
#define DROP_UNMARKED 1       // no mark: sent by the host, forwarded or injected
#define DROP_WRONG_SENDER 2   // marked, but not by this end's partner (any more)

struct yogurt_mark {
    u32 lo;
    u32 hi;
};
struct yogurt_end {
    u32 partner_host_ifindex;
    u32 partner_peer_ifindex;
};
struct yogurt_remote {
    u32 vni;
    u32 node_ipv4;
    u32 tunnel_ifindex;
    u32 flags;
};

BPF_TABLE_PINNED("array", u32, struct yogurt_mark, yogurt_mark, 1, GUARD_MARK);
BPF_TABLE_PINNED("hash", u32, struct yogurt_end, yogurt_pairs, 65536, GUARD_PAIRS);
BPF_TABLE_PINNED("hash", u32, struct yogurt_remote, yogurt_remote, 65536, GUARD_REMOTE);

int yogurt_capture_guard(struct __sk_buff *skb)
{
    u32 self = skb->ifindex;
    u32 sender = skb->cb[2];
    u32 zero = 0;
    struct yogurt_mark *mark = yogurt_mark.lookup(&zero);
    struct yogurt_end *end;

    if (!mark || !(mark->lo | mark->hi) || skb->cb[0] != mark->lo || skb->cb[1] != mark->hi)
        return copy(skb, DROP_UNMARKED);
    if (sender == FROM_TUNNEL)
        return yogurt_remote.lookup(&self) ? NEXT : copy(skb, DROP_WRONG_SENDER);
    end = yogurt_pairs.lookup(&sender);
    if (!end || end->partner_peer_ifindex != self)
        return copy(skb, DROP_WRONG_SENDER);
    return NEXT;
}
#endif
