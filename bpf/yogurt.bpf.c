// SPDX-License-Identifier: GPL-2.0
//
// The yogurt phone's wire.  Compiled and loaded once per node by bcc
// (cni_yogurt/kernel/loader.py) and pinned in bpffs; one pairing map and the
// same mark for both device backends, which differ only in where the two
// programs sit and which redirect the sender uses.
//
// netkit (the default):
//  container A --tx--> [yogurt_peer: A's peer hook] --bpf_redirect--> B's
//  host device --tx--> [yogurt_primary: B's primary hook] --> container B
//
//   bpf_redirect() must target the partner's *host-side* device: the peer
//   device lives in another netns, where skb_do_redirect() cannot find it.
//   The redirected packet then leaves through the partner's primary hook,
//   which is also where anything the host itself sends would go.
//
// veth (kernels without netkit):
//  container A --tx--> [yogurt_veth_peer: tc ingress of A's host-side veth]
//  --bpf_redirect_peer--> [yogurt_primary: tc ingress of B's container-side
//  veth] --> container B
//
//   The guard cannot sit on the host-side veth's egress: a frame the host
//   sends from an AF_PACKET socket with PACKET_QDISC_BYPASS skips tc egress.
//   Every frame that enters a container, however it was sent, passes the
//   container-side device's ingress, so the guard sits there, and the sender
//   reaches it with bpf_redirect_peer(), which moves the packet from the
//   sender's host-side ingress straight to the partner's container side.
//
// Either way the sender marks what it redirects in skb->cb (which, unlike
// skb->mark, survives netkit's scrubbing and the netns crossing) and the
// guard passes nothing else.  The mark is a 64-bit secret in cb[0..1] plus
// the sender's host-side ifindex in cb[2]; the guard checks that the sender
// is really paired with this device.  The secret lives in a map (yogurt_mark)
// rather than in the code: a new release's loader copies it from the old
// pins, so old and new programs agree on the mark while live lines move from
// one to the other (cni_yogurt/line/moving.py).  The mark's layout is part of
// that contract: a release that changes it must accept the old one while
// lines move.  On the host's own transmit and forward paths the same cb
// words hold what the IPv4/IPv6 layers left there (IPCB/IP6CB: option and
// extension header offsets a remote sender may choose), so 64 bits stand
// between those and a pass, not 32.  netkit's verdicts have the values of
// tc's (PASS = TC_ACT_OK, DROP = TC_ACT_SHOT, REDIRECT = TC_ACT_REDIRECT), so
// one guard serves both backends.
//
// Every end's two devices have the same ifindex (the plugin asks for it when
// it makes the pair), so the guard, which sees the container-side device,
// finds its own end's counters under the same key as the sender.

#include <uapi/linux/bpf.h>

// Not in the kernel headers bcc may be using (netkit arrived in 6.7).
#ifndef NETKIT_NEXT
#define NETKIT_NEXT -1
#define NETKIT_PASS 0
#define NETKIT_DROP 2
#define NETKIT_REDIRECT 7
#endif

// The secret: random per node, written by the loader before any program is
// pinned; never 0 (a zeroed cb must not pass; both programs check).  An array lookup of a
// constant key is inlined by the verifier: no helper call per packet.
struct yogurt_mark {
    u32 lo;  // cb[0]
    u32 hi;  // cb[1]
};

BPF_ARRAY(yogurt_mark, struct yogurt_mark, 1);

static __always_inline struct yogurt_mark *the_mark(void)
{
    u32 zero = 0;

    return yogurt_mark.lookup(&zero);
}

// One entry per wired end, keyed by its host-side ifindex.
struct yogurt_end {
    u32 partner_host_ifindex;  // where the sender redirects to
    u32 partner_peer_ifindex;  // skb->ifindex the partner's guard sees
};

BPF_HASH(yogurt_pairs, u32, struct yogurt_end, 65536);

// What each end's programs did, per CPU; one entry per end, made by ADD.
struct yogurt_counters {
    u64 redirected_packets;  // sent to the partner
    u64 redirected_bytes;
    u64 drop_not_wired;      // the container sent while its line had no partner
    u64 drop_unmarked;       // towards the container without the mark: host-sent or injected
    u64 drop_wrong_sender;   // marked, but by an end that is not this one's partner (any more)
};

BPF_PERCPU_HASH(yogurt_counters, u32, struct yogurt_counters, 65536);

// An end's counters on this CPU; NULL for a device ADD did not make (then nothing is counted).
static __always_inline struct yogurt_counters *counters_of(u32 end)
{
    return yogurt_counters.lookup(&end);
}

// The partner of the host-side device `self`, with the mark written; NULL if
// the end is not (or no longer) on a wired line.
static __always_inline struct yogurt_end *mark_for_partner(struct __sk_buff *skb, u32 self)
{
    struct yogurt_end *end = yogurt_pairs.lookup(&self);
    struct yogurt_counters *count = counters_of(self);
    struct yogurt_mark *mark = the_mark();

    if (!end || !mark || !(mark->lo | mark->hi)) {
        if (count)
            count->drop_not_wired++;
        return 0;
    }
    skb->cb[0] = mark->lo;
    skb->cb[1] = mark->hi;
    skb->cb[2] = self;
    if (count) {
        count->redirected_packets++;
        count->redirected_bytes += skb->len;
    }
    return end;
}

// netkit peer hook (container transmit).  skb->ifindex is the sender's
// host-side device.
int yogurt_peer(struct __sk_buff *skb)
{
    struct yogurt_end *end = mark_for_partner(skb, skb->ifindex);

    if (!end)
        return NETKIT_DROP;
    bpf_redirect(end->partner_host_ifindex, 0);
    return NETKIT_REDIRECT;
}

// veth: tc ingress of the host-side device (container transmit).  Nothing
// a container sends reaches the host's stack: it goes to the partner or is
// dropped.
int yogurt_veth_peer(struct __sk_buff *skb)
{
    struct yogurt_end *end = mark_for_partner(skb, skb->ifindex);

    if (!end)
        return NETKIT_DROP;
    return bpf_redirect_peer(end->partner_host_ifindex, 0);
}

// The guard: netkit primary hook, or tc ingress of the container-side veth.
// Either way skb->ifindex is the container-side device (netkit sets skb->dev
// to the peer before running the program).
int yogurt_primary(struct __sk_buff *skb)
{
    u32 self = skb->ifindex;
    u32 sender = skb->cb[2];
    struct yogurt_counters *count = counters_of(self);
    struct yogurt_mark *mark = the_mark();
    struct yogurt_end *end;

    if (!mark || !(mark->lo | mark->hi) || skb->cb[0] != mark->lo || skb->cb[1] != mark->hi) {
        if (count)
            count->drop_unmarked++;  // host-originated, forwarded or injected
        return NETKIT_DROP;
    }
    end = yogurt_pairs.lookup(&sender);
    if (!end || end->partner_peer_ifindex != self) {
        if (count)
            count->drop_wrong_sender++;  // not this device's partner (any more)
        return NETKIT_DROP;
    }
    skb->cb[0] = 0;
    skb->cb[1] = 0;
    skb->cb[2] = 0;
    return NETKIT_PASS;
}
