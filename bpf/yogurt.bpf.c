// SPDX-License-Identifier: GPL-2.0
//
// The yogurt phone's wire.  Both programs are attached to the host-side
// (primary) device of every netkit pair; compiled and loaded once per node
// by bcc (cni_yogurt/kernel/loader.py) and pinned in bpffs.
//
//  container A --tx--> [peer hook on A's pair]  --bpf_redirect--> B's host
//  device --tx--> [primary hook on B's pair] --> container B
//
// bpf_redirect() must target the partner's *host-side* device: the peer
// device lives in another netns, where skb_do_redirect() cannot find it.
// The redirected packet then leaves through the partner's primary hook,
// which is also where anything the host itself sends would go.  So the
// peer hook marks what it redirects in skb->cb (which, unlike skb->mark,
// survives netkit's scrubbing) and the primary hook passes nothing else.
//
// The mark is a secret chosen at load time (YOGURT_SECRET, a -D define)
// plus the sender's host-side ifindex; the primary hook checks that the
// sender is really paired with this device.

#include <uapi/linux/bpf.h>

// Not in the kernel headers bcc may be using (netkit arrived in 6.7).
#ifndef NETKIT_NEXT
#define NETKIT_NEXT -1
#define NETKIT_PASS 0
#define NETKIT_DROP 2
#define NETKIT_REDIRECT 7
#endif

#ifndef YOGURT_SECRET
#error "YOGURT_SECRET must be defined at load time"
#endif

// One entry per wired end, keyed by its host-side ifindex.
struct yogurt_end {
    u32 partner_host_ifindex;  // where the peer hook redirects to
    u32 partner_peer_ifindex;  // skb->ifindex the partner's primary hook sees
};

BPF_HASH(yogurt_pairs, u32, struct yogurt_end, 65536);

// Container transmit.  skb->ifindex is the sender's host-side device.
int yogurt_peer(struct __sk_buff *skb)
{
    u32 self = skb->ifindex;
    struct yogurt_end *end = yogurt_pairs.lookup(&self);

    if (!end)
        return NETKIT_DROP;  // not (or no longer) on a wired line
    skb->cb[0] = YOGURT_SECRET;
    skb->cb[1] = self;
    bpf_redirect(end->partner_host_ifindex, 0);
    return NETKIT_REDIRECT;
}

// Transmit into the container.  skb->ifindex is the container-side device
// (netkit sets skb->dev to the peer before running the program).
int yogurt_primary(struct __sk_buff *skb)
{
    u32 sender = skb->cb[1];
    struct yogurt_end *end;

    if (skb->cb[0] != YOGURT_SECRET)
        return NETKIT_DROP;  // host-originated or injected
    end = yogurt_pairs.lookup(&sender);
    if (!end || end->partner_peer_ifindex != skb->ifindex)
        return NETKIT_DROP;  // sender is not this device's partner (any more)
    skb->cb[0] = 0;
    skb->cb[1] = 0;
    return NETKIT_PASS;
}
