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
//
// Lines across nodes (cni_yogurt/line/remote.py): an end whose partner is on
// another node has no yogurt_pairs entry but a yogurt_remote one.  Its sender
// gives the packet a tunnel key (the line's VNI, the partner node's WireGuard
// address) and redirects it to the node's tunnel device, an external-mode
// VXLAN device whose outer packets go through WireGuard:
//
//  container A --tx--> [sender] --set_tunnel_key, bpf_redirect--> yvx0 (VXLAN)
//  --> WireGuard --> ... partner node: WireGuard --> yvx0
//  --> [yogurt_tunnel: tc ingress of yvx0] --> B's guard --> container B
//
//   No mark on the way out: it leaves the node inside WireGuard.  The receive
//   program takes a packet only if its (VNI, outer source) is the pair
//   recorded for one local end (yogurt_tunnel_in) and that end still has the
//   matching yogurt_remote entry; it marks it with cb[2] = FROM_TUNNEL (no
//   ifindex: ifindexes are positive int32) and hands it to the end as the
//   local sender would: bpf_redirect_peer to the container-side ingress
//   (veth), bpf_redirect to the primary's egress (netkit).  The guard passes
//   FROM_TUNNEL only for a device wired to a remote partner.  WireGuard
//   authenticates the outer source (its allowed-ips); the node's firewall
//   takes the VXLAN port only from the WireGuard device (nodelab.py), so a
//   frame sent in clear to the underlay never reaches the tunnel device.
//
//   VXLAN carries Ethernet frames, and both backends' packets have an
//   Ethernet header at these hooks: netkit's "L3" devices are Ethernet
//   devices without ARP (all-zero addresses), so a frame crosses unchanged.

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

// cb[2] of a packet the tunnel's receive program marked: never an ifindex.
#define FROM_TUNNEL 0xffffffff
#define TUNNEL_TTL 64

// Set in yogurt_tunnel_in's value: the end is a netkit pair (else veth).
#define END_NETKIT 1

// An end wired to a partner on another node, keyed by its host-side ifindex.
struct yogurt_remote {
    u32 vni;             // the line's tunnel id
    u32 node_ipv4;       // the partner node's WireGuard address, host byte order
    u32 tunnel_ifindex;  // the node's tunnel device
    u32 flags;           // END_NETKIT
};

BPF_HASH(yogurt_remote, u32, struct yogurt_remote, 65536);

// What the tunnel delivers where: (VNI, outer source) -> the local end.
struct yogurt_tunnel_key {
    u32 vni;
    u32 node_ipv4;  // host byte order, as bpf_skb_get_tunnel_key gives it
};

struct yogurt_tunnel_end {
    u32 host_ifindex;
    u32 flags;  // END_NETKIT
};

BPF_HASH(yogurt_tunnel_in, struct yogurt_tunnel_key, struct yogurt_tunnel_end, 65536);

// The tunnel's receive program, per node (one entry), per CPU.
struct yogurt_tunnel_counters {
    u64 delivered_packets;  // handed to a local end
    u64 delivered_bytes;
    u64 drop_no_key;        // no tunnel metadata (not from the external-mode device)
    u64 drop_unknown;       // (VNI, outer source) of no local end: another line's, another node's
    u64 drop_no_mark;       // the secret is not set (never after a complete load)
};

BPF_PERCPU_ARRAY(yogurt_tunnel_counters, struct yogurt_tunnel_counters, 1);

// Impairments of what one end sends, keyed by its host-side ifindex (line/impairment.py);
// an end without an entry is sent as is, for one hash lookup per packet.  Probabilities
// are fractions of 2^32, compared with bpf_get_prandom_u32(): 0 never, 0xffffffff always
// but one draw in 2^32.  The rate is a GCRA token bucket (a virtual clock, `due`): a packet
// passes if the clock, after its cost, runs at most `burst_ns` ahead of now.  No queue: a
// packet is sent at once or dropped, since a queue (a qdisc) would overwrite the mark in
// skb->cb (docs/labs.md, measured), so delay and jitter are not done here.  What they did is
// counted here, not in yogurt_counters, whose layout older releases read (a rollback).
struct yogurt_impair {
    u32 loss;
    u32 corrupt;
    u32 duplicate;
    u32 reserved;
    u64 ps_per_byte;  // the rate: picoseconds one byte takes (0: no limit)
    u64 burst_ns;
    // The programs' own, shared by the CPUs (atomic adds):
    u64 due;          // the bucket's clock, ns (bpf_ktime_get_ns)
    u64 lost;         // dropped as the loss asked
    u64 over_rate;    // dropped over the rate
    u64 duplicated;   // copies sent besides the packet
    u64 corrupted;    // sent with one bit of the IPv4 header flipped
};

BPF_HASH(yogurt_impair, u32, struct yogurt_impair, 65536);

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define IPV4_HEADER 20

// An end's counters on this CPU; NULL for a device ADD did not make (then nothing is counted).
static __always_inline struct yogurt_counters *counters_of(u32 end)
{
    return yogurt_counters.lookup(&end);
}

// The partner of the host-side device `self`, with the mark written; NULL if
// the end has no partner on this node.
static __always_inline struct yogurt_end *mark_for_partner(struct __sk_buff *skb, u32 self)
{
    struct yogurt_end *end = yogurt_pairs.lookup(&self);
    struct yogurt_mark *mark = the_mark();

    if (!end || !mark || !(mark->lo | mark->hi))
        return 0;
    skb->cb[0] = mark->lo;
    skb->cb[1] = mark->hi;
    skb->cb[2] = self;
    return end;
}

static __always_inline void count_sent(struct __sk_buff *skb, struct yogurt_counters *count)
{
    if (count) {
        count->redirected_packets++;
        count->redirected_bytes += skb->len;
    }
}

// The end's remote partner, with the tunnel key set; NULL if it has none (or
// the packet cannot be sent: then it is dropped as not wired).
static __always_inline struct yogurt_remote *tunnel_to_partner(struct __sk_buff *skb, u32 self)
{
    struct yogurt_remote *remote = yogurt_remote.lookup(&self);
    struct bpf_tunnel_key key = {};

    if (!remote)
        return 0;
    key.tunnel_id = remote->vni;
    key.remote_ipv4 = remote->node_ipv4;
    key.tunnel_ttl = TUNNEL_TTL;
    if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX))
        return 0;
    return remote;
}

// What the end's impairments do to a packet the sender is about to redirect (its mark is
// written): 1 to drop it, else 0, after maybe corrupting it and sending a copy to `copy_to`
// (an egress: the partner's host-side device, or the tunnel device with its key set).  A
// dropped packet is not counted as sent: the impairment counted it.
static __always_inline int impaired(struct __sk_buff *skb, u32 self, u32 copy_to)
{
    struct yogurt_impair *impair = yogurt_impair.lookup(&self);

    if (!impair)
        return 0;
    if (impair->loss && bpf_get_prandom_u32() < impair->loss) {
        __sync_fetch_and_add(&impair->lost, 1);
        return 1;
    }
    if (impair->ps_per_byte) {
        u64 now = bpf_ktime_get_ns();
        u64 cost = (u64)skb->len * impair->ps_per_byte / 1000;

        if (impair->due < now)
            impair->due = now;  // an idle bucket is full; a lost race here only refills it
        if (impair->due + cost > now + impair->burst_ns) {
            __sync_fetch_and_add(&impair->over_rate, 1);
            return 1;
        }
        __sync_fetch_and_add(&impair->due, cost);  // other CPUs may send on this end too
    }
    if (impair->corrupt && skb->protocol == bpf_htons(ETH_P_IP) && bpf_get_prandom_u32() < impair->corrupt) {
        // One bit of bytes 1..19 of the IPv4 header: the one checksum every receiver checks (a
        // container's L4 checksum is still the device's to finish here, and receivers on veth
        // and netkit trust it), and byte 0 (version, length) would fail before the check.
        u32 draw = bpf_get_prandom_u32();
        u32 at = ETH_HLEN + 1 + (draw >> 8) % (IPV4_HEADER - 1);
        u8 byte;

        if (!bpf_skb_load_bytes(skb, at, &byte, 1)) {
            byte ^= 1 << (draw & 7);
            if (!bpf_skb_store_bytes(skb, at, &byte, 1, 0))
                __sync_fetch_and_add(&impair->corrupted, 1);
        }
    }
    if (impair->duplicate && bpf_get_prandom_u32() < impair->duplicate) {
        // The copy keeps skb->cb (the mark) and leaves by the partner's host-side device,
        // whose frames reach the partner's guard as the packet does.
        if (!bpf_clone_redirect(skb, copy_to, 0))
            __sync_fetch_and_add(&impair->duplicated, 1);
    }
    return 0;
}

static __always_inline void count_not_wired(struct yogurt_counters *count)
{
    if (count)
        count->drop_not_wired++;
}

// netkit peer hook (container transmit).  skb->ifindex is the sender's
// host-side device.
int yogurt_peer(struct __sk_buff *skb)
{
    u32 self = skb->ifindex;
    struct yogurt_counters *count = counters_of(self);
    struct yogurt_end *end = mark_for_partner(skb, self);
    struct yogurt_remote *remote;

    if (end) {
        if (impaired(skb, self, end->partner_host_ifindex))
            return NETKIT_DROP;
        count_sent(skb, count);
        bpf_redirect(end->partner_host_ifindex, 0);
        return NETKIT_REDIRECT;
    }
    remote = tunnel_to_partner(skb, self);
    if (!remote) {
        count_not_wired(count);
        return NETKIT_DROP;
    }
    if (impaired(skb, self, remote->tunnel_ifindex))
        return NETKIT_DROP;
    count_sent(skb, count);
    bpf_redirect(remote->tunnel_ifindex, 0);
    return NETKIT_REDIRECT;
}

// veth: tc ingress of the host-side device (container transmit).  Nothing
// a container sends reaches the host's stack: it goes to the partner or is
// dropped.
int yogurt_veth_peer(struct __sk_buff *skb)
{
    u32 self = skb->ifindex;
    struct yogurt_counters *count = counters_of(self);
    struct yogurt_end *end = mark_for_partner(skb, self);
    struct yogurt_remote *remote;

    if (end) {
        if (impaired(skb, self, end->partner_host_ifindex))
            return NETKIT_DROP;
        count_sent(skb, count);
        return bpf_redirect_peer(end->partner_host_ifindex, 0);
    }
    remote = tunnel_to_partner(skb, self);
    if (!remote) {
        count_not_wired(count);
        return NETKIT_DROP;
    }
    if (impaired(skb, self, remote->tunnel_ifindex))
        return NETKIT_DROP;
    count_sent(skb, count);
    return bpf_redirect(remote->tunnel_ifindex, 0);
}

// The tunnel device's receive program (tc ingress of the node's external-mode
// VXLAN device, tcx or cls_bpf): deliver to the one end recorded for the
// packet's (VNI, outer source), marked as from the tunnel; drop the rest.
int yogurt_tunnel(struct __sk_buff *skb)
{
    u32 zero = 0;
    struct yogurt_tunnel_counters *count = yogurt_tunnel_counters.lookup(&zero);
    struct yogurt_mark *mark = the_mark();
    struct bpf_tunnel_key key = {};
    struct yogurt_tunnel_key where = {};
    struct yogurt_tunnel_end *end;
    struct yogurt_remote *remote;
    u32 target;

    if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0)) {
        if (count)
            count->drop_no_key++;
        return NETKIT_DROP;
    }
    where.vni = key.tunnel_id;
    where.node_ipv4 = key.remote_ipv4;
    end = yogurt_tunnel_in.lookup(&where);
    if (!end) {
        if (count)
            count->drop_unknown++;
        return NETKIT_DROP;
    }
    target = end->host_ifindex;
    // A stale entry (a cut cut short) must not deliver: the end's own wiring says the same.
    remote = yogurt_remote.lookup(&target);
    if (!remote || remote->vni != where.vni || remote->node_ipv4 != where.node_ipv4) {
        if (count)
            count->drop_unknown++;
        return NETKIT_DROP;
    }
    if (!mark || !(mark->lo | mark->hi)) {
        if (count)
            count->drop_no_mark++;
        return NETKIT_DROP;
    }
    skb->cb[0] = mark->lo;
    skb->cb[1] = mark->hi;
    skb->cb[2] = FROM_TUNNEL;
    if (count) {
        count->delivered_packets++;
        count->delivered_bytes += skb->len;
    }
    if (end->flags & END_NETKIT)
        return bpf_redirect(target, 0);
    return bpf_redirect_peer(target, 0);
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
    if (sender == FROM_TUNNEL) {
        // Only the tunnel's receive program marks so, and only for an end wired to a
        // remote partner whose (VNI, node) the packet came with: this device must be one.
        if (!yogurt_remote.lookup(&self)) {
            if (count)
                count->drop_wrong_sender++;
            return NETKIT_DROP;
        }
        goto pass;
    }
    end = yogurt_pairs.lookup(&sender);
    if (!end || end->partner_peer_ifindex != self) {
        if (count)
            count->drop_wrong_sender++;  // not this device's partner (any more)
        return NETKIT_DROP;
    }
pass:
    skb->cb[0] = 0;
    skb->cb[1] = 0;
    skb->cb[2] = 0;
    return NETKIT_PASS;
}
