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
    u32 pad;
};

BPF_PERF_OUTPUT(yogurt_capture_events);

// The packet, cut at SNAPLEN, after its event header, into the perf buffer.
static __always_inline int copy(struct __sk_buff *skb)
{
    struct capture_event event = {};
    u32 caplen = skb->len < SNAPLEN ? skb->len : SNAPLEN;

    event.ts_ns = bpf_ktime_get_ns();
    event.ifindex = skb->ifindex;
    event.len = skb->len;
    event.caplen = caplen;
    yogurt_capture_events.perf_submit_skb(skb, caplen, &event, sizeof(event));
    return NEXT;
}

int yogurt_capture(struct __sk_buff *skb)
{
    return copy(skb);
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
    return copy(skb);
}
#endif
