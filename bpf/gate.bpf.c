// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * meshauth datapath gate: tc (clsact) programs for the host side of each
 * workload's interface.
 *
 *   from_workload  tc ingress of the host-side veth (the workload's egress)
 *   to_workload    tc egress of the host-side veth (the workload's ingress)
 *
 * For every IPv4/IPv6 packet, whatever its protocol (TCP, UDP, ICMP, ICMPv6,
 * SCTP, ESP, anything), the gate takes the local identity from the workload's
 * address bound (by the agent) to the interface it sits on — a workload's packet
 * from any other source is dropped —, resolves the remote address to an identity
 * through the ipcache (host entries in a hash, prefixes in an LPM trie), which on
 * the way to the workload counts only if the packet arrived the way that
 * identity's node sends (arrived_from_its_node), and passes the
 * packet while the pair has an unexpired entry in the auth map; without one,
 * only if the policy (or its default) says the pair needs no authentication.
 * Otherwise it drops the packet and queues an "authentication required" signal
 * for the agent, at most one per key per signal interval (the rate limit lives
 * here, in an LRU map, so a flood of drops cannot flood the agent). Expiry is
 * enforced here too: an entry stops passing traffic on time even if the agent
 * is dead.
 *
 * ARP and IPv6 neighbour discovery (ICMPv6 133-137 with hop limit 255, where it
 * stays on the link: nd_stays_on_link) pass ungated; every other non-IP frame is
 * dropped. Passing packets return TC_ACT_UNSPEC so that a CNI filter at a later
 * preference still runs.
 *
 * Layouts: meshauth.h.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "meshauth.h"

/* Default capacities; the loader creates the maps with those of the config (datapath.capacities). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} ipcache SEC(".maps");

/*
 * The ipcache's host entries (/32, /128): one hash lookup instead of a trie walk, keyed by the
 * bare address so that hashing and comparing an IPv4 key touches 4 bytes, not 24.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 163840);
	__type(key, __be32);
	__type(value, struct ipcache_value);
} ipcache_hosts4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 163840);
	__type(key, struct ipv6_host_key);
	__type(value, struct ipcache_value);
} ipcache_hosts6 SEC(".maps");

/*
 * The addresses of the workload behind each gated interface, by (ifindex, address), with its
 * identity. Binding the local identity to the interface and the address together means a
 * workload can send only as itself: a source address not bound to its interface is dropped
 * (a forged neighbour's address borrows none of the neighbour's pairs), and an address bound
 * on another interface is not its own. Interfaces with several endpoints (several identities)
 * need no special case. A hash, so ifindexes of any size fit (they grow with pod churn).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct endpoint_key);
	__type(value, struct ipcache_value);
} endpoints SEC(".maps");

/*
 * A hash lookup costs 20-30 ns per packet under load here (a call into the kernel
 * and the hash); the remote address of a flow repeats packet after packet. This
 * direct-mapped per-CPU memo answers from an inlined array lookup instead. Only
 * ipcache answers are memoized: the auth map, whose entries revocation removes,
 * is looked up for every packet.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MESHAUTH_IPCACHE_MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct ipcache_memo_entry);
} ipcache_memo SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ipcache_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 524288);
	__type(key, struct auth_key);
	__type(value, struct auth_value);
} auth SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct auth_key);
	__type(value, __u64);
} ratelimit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 4096);
	__type(value, struct signal_event);
} signals SEC(".maps");

/*
 * Rung after each signal: the agent's reader (bpftool map event_pipe) wakes and
 * drains the queue, so delivery is event-driven and an idle agent sleeps. The
 * queue stays the source of truth; the event carries nothing else.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} doorbell SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 32);
	__type(key, enum meshauth_counter); /* puts the counter names into BTF */
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config_value);
} config SEC(".maps");

/* IPv6 extension headers walked before the upper-layer protocol. */
#define MAX_IPV6_EXT_HEADERS 8
#define IPPROTO_ICMPV6_ 58
#define ND_FIRST_TYPE 133 /* router solicitation */
#define ND_LAST_TYPE 137  /* redirect */
#define ND_HOP_LIMIT 255
#define AF_INET6_ 10

struct packet {
	struct ipcache_key local;  /* the workload's address */
	struct ipcache_key remote; /* the other end */
	__u32 l4_offset;           /* of the TCP/UDP header; 0 when not known (a later fragment) */
	__u8 protocol;
};

/* The memo slot of an address (and interface, for endpoints answers): Fibonacci hashing onto 256 slots. */
static __always_inline struct ipcache_memo_entry *memo_slot(const struct ipcache_key *key, __u32 ifindex)
{
	const __u64 *addr = (const __u64 *)key->addr;
	__u32 mix = (__u32)addr[0] ^ (__u32)(addr[0] >> 32) ^ (__u32)addr[1] ^ (__u32)(addr[1] >> 32) ^ ifindex;
	__u32 slot = (mix * 2654435761u) >> 24;

	return bpf_map_lookup_elem(&ipcache_memo, &slot);
}

/* The memoized answer for (key, ifindex) under this generation, copied into *out. */
static __always_inline int memo_get(const struct ipcache_memo_entry *memo, const struct ipcache_key *key,
				    __u32 ifindex, __u64 generation, struct ipcache_value *out)
{
	const __u64 *addr = (const __u64 *)key->addr;
	const __u64 *memo_addr;

	if (!memo || memo->generation != generation || memo->family != key->family || memo->ifindex != ifindex)
		return 0;
	memo_addr = (const __u64 *)memo->addr;
	if (memo_addr[0] != addr[0] || memo_addr[1] != addr[1])
		return 0;
	*out = memo->value;
	return 1;
}

static __always_inline void memo_put(struct ipcache_memo_entry *memo, const struct ipcache_key *key,
				     __u32 ifindex, __u64 generation, const struct ipcache_value *value)
{
	if (!memo)
		return;
	memo->generation = generation;
	__builtin_memcpy(memo->addr, key->addr, sizeof(memo->addr));
	memo->family = key->family;
	memo->ifindex = ifindex;
	memo->value = *value;
}

/*
 * Longest-prefix match over the ipcache (a host entry is always the longest),
 * through the memo. Copies the answer into *out: two lookups of one packet may
 * share a memo slot. `generation` must be read before the ipcache is: an answer
 * read before an agent's write is then memoized under the old generation.
 * Returns 0 for an address the ipcache does not know (not memoized) or maps to identity 0.
 */
static __always_inline int identity_of(const struct ipcache_key *key, __u64 generation,
				       struct ipcache_value *out)
{
	struct ipcache_memo_entry *memo = memo_slot(key, 0);

	if (memo_get(memo, key, 0, generation, out))
		return out->identity != 0;

	const struct ipcache_value *value = key->family == MESHAUTH_FAMILY_IPV4
						    ? bpf_map_lookup_elem(&ipcache_hosts4, key->addr)
						    : bpf_map_lookup_elem(&ipcache_hosts6, key->addr);
	if (!value)
		value = bpf_map_lookup_elem(&ipcache, key);
	if (!value)
		return 0;
	*out = *value;
	memo_put(memo, key, 0, generation, value);
	return value->identity != 0; /* identity 0: a pod-CIDR address no endpoint holds yet */
}

/*
 * The workload endpoint that owns this address behind interface `ifindex`, through the same
 * memo (its slots tell the two kinds of answers apart by ifindex: ipcache answers have 0, which
 * names no interface; a packet this host originated has ingress ifindex 0, so it is refused
 * here first). Returns 0 if the address is not bound to that interface (not memoized).
 */
static __always_inline int endpoint_of(__u32 ifindex, const struct ipcache_key *key, __u64 generation,
				       struct ipcache_value *out)
{
	if (ifindex == 0)
		return 0;

	struct ipcache_memo_entry *memo = memo_slot(key, ifindex);

	if (memo_get(memo, key, ifindex, generation, out))
		return 1;

	struct endpoint_key ekey = { .ifindex = ifindex, .family = key->family };
	__builtin_memcpy(ekey.addr, key->addr, sizeof(ekey.addr));
	const struct ipcache_value *value = bpf_map_lookup_elem(&endpoints, &ekey);
	if (!value)
		return 0;
	*out = *value;
	memo_put(memo, key, ifindex, generation, value);
	return 1;
}

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	if (value)
		*value += 1; /* per-CPU slot; tc programs do not migrate mid-run */
}

static __always_inline int pass(__u32 counter)
{
	count(counter);
	return TC_ACT_UNSPEC;
}

static __always_inline int drop(__u32 counter)
{
	count(counter);
	return TC_ACT_SHOT;
}

/*
 * The IP header at the start of the network layer, for direct access; pulls it
 * into the linear part of the skb first if it is not there. NULL if truncated.
 */
static __always_inline void *ip_header(struct __sk_buff *skb, __u32 len)
{
	void *data = (void *)(long)skb->data;

	if (data + ETH_HLEN + len > (void *)(long)skb->data_end) {
		if (bpf_skb_pull_data(skb, ETH_HLEN + len) < 0)
			return NULL;
		data = (void *)(long)skb->data;
		if (data + ETH_HLEN + len > (void *)(long)skb->data_end)
			return NULL;
	}
	return data + ETH_HLEN;
}

static __always_inline void set_key(struct ipcache_key *key, __u8 family, __u32 addr_bits)
{
	key->prefixlen = MESHAUTH_IPCACHE_PREFIX_BASE + addr_bits;
	key->family = family;
}

/* Fills pkt from an IPv4 header; returns 0, or -1 if the header is truncated. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct packet *pkt, int egress)
{
	struct iphdr *ip = ip_header(skb, sizeof(*ip));

	if (!ip)
		return -1;
	set_key(&pkt->local, MESHAUTH_FAMILY_IPV4, 32);
	set_key(&pkt->remote, MESHAUTH_FAMILY_IPV4, 32);
	/* pkt is zeroed: the rest of the 16 address bytes stays 0 for IPv4 */
	*(__be32 *)pkt->local.addr = egress ? ip->saddr : ip->daddr;
	*(__be32 *)pkt->remote.addr = egress ? ip->daddr : ip->saddr;
	pkt->protocol = ip->protocol;
	if (!(ip->frag_off & bpf_htons(0x1fff))) /* the first fragment holds the ports */
		pkt->l4_offset = ETH_HLEN + ip->ihl * 4;
	return 0;
}

/* fe80::/10, or :: (the source of duplicate address detection): never forwarded. */
static __always_inline int link_local_or_unspecified(const __u8 *a)
{
	const __u64 *w = (const __u64 *)a;

	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return 1;
	return w[0] == 0 && w[1] == 0;
}

/* The multicast groups of neighbour discovery: all-nodes, all-routers, solicited-node (link scope). */
static __always_inline int nd_multicast(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	if (w[0] != bpf_htonl(0xff020000) || w[1] != 0)
		return 0;
	if (w[2] == bpf_htonl(1) && a[12] == 0xff)
		return 1; /* ff02::1:ffXX:XXXX */
	return w[2] == 0 && (w[3] == bpf_htonl(1) || w[3] == bpf_htonl(2));
}

/*
 * Neighbour discovery is exempt only where it cannot leave the link: to or from a link-local
 * address (or ::), to one of its own multicast groups, or between the workload and this host
 * itself (the neighbour a workload resolves may be the host's global address: the FIB says the
 * host's end is local, or that the host does not forward). Anything else shaped like ND, such
 * as hop-limit-255 ICMPv6 133-137 to another workload or the world, is gated like any packet.
 */
static __always_inline int nd_stays_on_link(struct __sk_buff *skb, const __u8 *workload, const __u8 *far)
{
	if (link_local_or_unspecified(workload) || link_local_or_unspecified(far) || nd_multicast(far))
		return 1;

	struct bpf_fib_lookup fib = { .family = AF_INET6_, .ifindex = skb->ifindex };
	__builtin_memcpy(fib.ipv6_dst, far, 16);
	__builtin_memcpy(fib.ipv6_src, workload, 16);
	long verdict = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	return verdict == BPF_FIB_LKUP_RET_NOT_FWDED || verdict == BPF_FIB_LKUP_RET_FWD_DISABLED;
}

/*
 * Fills pkt from an IPv6 header, following extension headers to the
 * upper-layer protocol. Returns 1 for neighbour discovery (exempt), 0 to
 * gate, -1 if the fixed header is truncated. A chain that is too long or
 * truncated is gated under the last header type seen: fail closed.
 */
static __always_inline int parse_ipv6(struct __sk_buff *skb, struct packet *pkt, int egress)
{
	struct ipv6hdr *ip = ip_header(skb, sizeof(*ip));
	__u32 offset = ETH_HLEN + sizeof(*ip);
	__u8 nexthdr, hop_limit;
	int first_fragment = 1;

	if (!ip)
		return -1;
	set_key(&pkt->local, MESHAUTH_FAMILY_IPV6, 128);
	set_key(&pkt->remote, MESHAUTH_FAMILY_IPV6, 128);
	__builtin_memcpy(pkt->local.addr, egress ? &ip->saddr : &ip->daddr, 16);
	__builtin_memcpy(pkt->remote.addr, egress ? &ip->daddr : &ip->saddr, 16);
	nexthdr = ip->nexthdr;
	hop_limit = ip->hop_limit;
	/* From here on bpf_skb_load_bytes: the extension headers are rare and of any length. */

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
		__u8 ext[2]; /* next header, length */

		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT &&
		    nexthdr != IPPROTO_AH)
			break;
		if (bpf_skb_load_bytes(skb, offset, ext, sizeof(ext)) < 0)
			break;
		if (nexthdr == IPPROTO_FRAGMENT) {
			__be16 frag_off;

			if (bpf_skb_load_bytes(skb, offset + 2, &frag_off, sizeof(frag_off)) < 0)
				break;
			/* Only the first fragment carries the upper-layer header. */
			if (bpf_ntohs(frag_off) & 0xfff8)
				first_fragment = 0;
			offset += 8;
		} else if (nexthdr == IPPROTO_AH) {
			offset += ((__u32)ext[1] + 2) * 4;
		} else {
			offset += ((__u32)ext[1] + 1) * 8;
		}
		nexthdr = ext[0];
	}
	pkt->protocol = nexthdr;
	if (first_fragment)
		pkt->l4_offset = offset;

	if (nexthdr == IPPROTO_ICMPV6_ && first_fragment && hop_limit == ND_HOP_LIMIT) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, offset, &type, sizeof(type)) == 0 &&
		    type >= ND_FIRST_TYPE && type <= ND_LAST_TYPE)
			return nd_stays_on_link(skb, (const __u8 *)pkt->local.addr, (const __u8 *)pkt->remote.addr);
	}
	return 0;
}

/*
 * now < expiry, exactly. Reading the monotonic clock costs ~25 ns per packet in a
 * VM; the coarse clock (the same clock as of the last tick, so never ahead of it)
 * costs almost nothing. Far from the expiry the coarse clock decides; within
 * COARSE_SLACK_NS of it, the precise clock does.
 */
#define COARSE_SLACK_NS 1000000000ULL

static __always_inline int unexpired(__u64 expiry_ns)
{
	__u64 coarse = bpf_ktime_get_coarse_ns();

	if (coarse + COARSE_SLACK_NS < expiry_ns)
		return 1;
	return bpf_ktime_get_ns() < expiry_ns;
}

/* Queues an "authentication required" signal unless one for the key is recent. */
static __always_inline void signal(struct __sk_buff *skb, const struct auth_key *key,
				   const struct packet *pkt,
				   __u8 direction, __u8 reason, __u64 now,
				   const struct config_value *cfg)
{
	__u64 interval = cfg->signal_interval_ns ? cfg->signal_interval_ns
						 : MESHAUTH_DEFAULT_SIGNAL_INTERVAL_NS;
	__u64 *last = bpf_map_lookup_elem(&ratelimit, key);

	if (last) {
		__u64 seen = *last;

		/* The compare-and-swap makes exactly one CPU win a new interval. */
		if (now - seen < interval ||
		    __sync_val_compare_and_swap(last, seen, now) != seen) {
			count(MESHAUTH_CTR_SIGNALS_SUPPRESSED);
			return;
		}
	} else if (bpf_map_update_elem(&ratelimit, key, &now, BPF_NOEXIST) != 0) {
		count(MESHAUTH_CTR_SIGNALS_SUPPRESSED);
		return;
	}

	struct signal_event event = {
		.local_identity = key->local_identity,
		.remote_identity = key->remote_identity,
		.remote_node = key->remote_node,
		.auth_type = key->auth_type,
		.protocol = pkt->protocol,
		.direction = direction,
		.reason = reason,
		.family = pkt->local.family,
		.ktime_ns = now,
	};

	if (bpf_map_push_elem(&signals, &event, 0) != 0)
		count(MESHAUTH_CTR_SIGNALS_LOST);
	else
		count(MESHAUTH_CTR_SIGNALS_SENT);
	/* Fails harmlessly when no reader listens on this CPU: the agent also polls, slowly. */
	bpf_perf_event_output(skb, &doorbell, BPF_F_CURRENT_CPU, &now, sizeof(now));
}

/*
 * Service translation. kube-proxy rewrites addresses in netfilter, between the gate's two hooks:
 * a packet to a ClusterIP reaches from_workload before its DNAT, a reply from the backend reaches
 * to_workload after the reverse NAT (its source is the VIP), and a masqueraded NodePort request
 * reaches to_workload with a node address as its source. For such an address the gate asks
 * conntrack which flow the packet belongs to and judges the peer at the far end of that flow: the
 * backend, or the client before the masquerade. The lookup costs a hash lookup in conntrack and is
 * made only for addresses the ipcache marks as possibly translated (a Service range, a node
 * address), never for pod-to-pod traffic.
 *
 * Only the fields read below are declared; libbpf relocates them against the kernel's BTF (CO-RE).
 */
union nf_inet_addr___meshauth {
	__u32 all[4];
} __attribute__((preserve_access_index));

struct nf_conntrack_man___meshauth {
	union nf_inet_addr___meshauth u3;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple___meshauth {
	struct nf_conntrack_man___meshauth src;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple_hash___meshauth {
	struct nf_conntrack_tuple___meshauth tuple;
} __attribute__((preserve_access_index));

struct nf_conn___meshauth {
	struct nf_conntrack_tuple_hash___meshauth tuplehash[2]; /* original, reply */
} __attribute__((preserve_access_index));

struct bpf_ct_opts___meshauth {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

extern struct nf_conn___meshauth *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
						    __u32 tuple_size, struct bpf_ct_opts___meshauth *opts,
						    __u32 opts_size) __ksym;
extern void bpf_ct_release(struct nf_conn___meshauth *ct) __ksym;

#define CT_DIR_ORIGINAL 0
#define CT_DIR_REPLY 1
#define CT_NETNS_OF_SKB -1 /* BPF_F_CURRENT_NETNS: the namespace of the host-side interface */

static __always_inline int may_be_translated(__u32 identity)
{
	return identity == MESHAUTH_IDENTITY_SERVICE || identity == MESHAUTH_IDENTITY_HOST ||
	       identity == MESHAUTH_IDENTITY_REMOTE_NODE;
}

static __always_inline int same_address(const union nf_inet_addr___meshauth *a, const __u8 *b)
{
	const __u32 *words = (const __u32 *)b;

	return a->all[0] == words[0] && a->all[1] == words[1] && a->all[2] == words[2] &&
	       a->all[3] == words[3];
}

/*
 * Replaces pkt->remote's address by the peer at the far end of the packet's conntrack flow.
 * The flow is looked up by the tuple as the workload sees it, (local -> remote), which is the
 * flow's original tuple when the workload opened it (then the peer is the source of the reply
 * tuple: the backend) and its reply tuple when the other end did (then the peer is the source
 * of the original tuple: the client before any masquerade). Returns 0 when replaced, -1 when
 * there is no flow (not TCP or UDP, a later fragment, or a packet conntrack has not seen yet).
 */
static __always_inline int conntrack_peer(struct __sk_buff *skb, struct packet *pkt, int egress)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_ct_opts___meshauth opts = {
		.netns_id = CT_NETNS_OF_SKB,
		.l4proto = pkt->protocol,
	};
	__be16 ports[2]; /* source, destination */
	__u32 size;

	if ((pkt->protocol != IPPROTO_TCP && pkt->protocol != IPPROTO_UDP) || !pkt->l4_offset)
		return -1;
	if (bpf_skb_load_bytes(skb, pkt->l4_offset, ports, sizeof(ports)) < 0)
		return -1;
	__be16 local_port = egress ? ports[0] : ports[1];
	__be16 remote_port = egress ? ports[1] : ports[0];

	if (pkt->local.family == MESHAUTH_FAMILY_IPV4) {
		tuple.ipv4.saddr = *(__be32 *)pkt->local.addr;
		tuple.ipv4.daddr = *(__be32 *)pkt->remote.addr;
		tuple.ipv4.sport = local_port;
		tuple.ipv4.dport = remote_port;
		size = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, pkt->local.addr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, pkt->remote.addr, 16);
		tuple.ipv6.sport = local_port;
		tuple.ipv6.dport = remote_port;
		size = sizeof(tuple.ipv6);
	}

	struct nf_conn___meshauth *ct = bpf_skb_ct_lookup(skb, &tuple, size, &opts, sizeof(opts));
	if (!ct)
		return -1;
	const struct nf_conntrack_tuple___meshauth *original = &ct->tuplehash[CT_DIR_ORIGINAL].tuple;
	const struct nf_conntrack_tuple___meshauth *reply = &ct->tuplehash[CT_DIR_REPLY].tuple;
	/* The workload opened the flow when the original tuple starts at its address. */
	const union nf_inet_addr___meshauth *peer = same_address(&original->src.u3, pkt->local.addr)
							 ? &reply->src.u3
							 : &original->src.u3;
	__u32 *remote = (__u32 *)pkt->remote.addr;

	remote[0] = peer->all[0];
	remote[1] = peer->all[1];
	remote[2] = peer->all[2];
	remote[3] = peer->all[3];
	bpf_ct_release(ct);
	return 0;
}

/* Whether an IPsec SA of meshauth's (by its reqid) decrypted the packet. */
static __always_inline int decrypted_by_meshauth_sa(struct __sk_buff *skb)
{
	struct bpf_xfrm_state state = {};

	if (bpf_skb_get_xfrm_state(skb, 0, &state, sizeof(state), 0) < 0)
		return 0;
	return state.reqid >= MESHAUTH_IPSEC_REQID_FIRST && state.reqid <= MESHAUTH_IPSEC_REQID_LAST;
}

/*
 * Packet provenance, on the way to a workload: a remote identity is only as good as the path
 * that proves it. The ipcache names the node that owns the source address; the packet must have
 * come the way that node's packets come:
 *   - this node's own workload: from the gated interface that address is bound to (so not
 *     originated by this host's stack, nor injected on the underlay), and then as that
 *     endpoint's identity;
 *   - another node's, over WireGuard: decrypted on meshauth's WireGuard device, which names it
 *     in skb->ingress_ifindex even after forwarding; the peer's allowed-ips (its pod CIDRs)
 *     bind the inner source to that node's key;
 *   - over IPsec: decrypted by one of meshauth's SAs (its reqid range); the kernel's fwd policy
 *     of the source's pod CIDR has already required that SA to be the source node's;
 *   - with transport none, the CNI carries the packet and its anti-spoofing is all there is:
 *     not checked here;
 *   - node 0 (an address outside the cluster, e.g. a world prefix): no transport to check.
 * A config without a transport (a gate whose agent has not configured it) admits no other
 * node's packets: fail closed.
 */
static __always_inline int arrived_from_its_node(struct __sk_buff *skb, const struct packet *pkt,
						 struct ipcache_value *remote, __u64 generation,
						 const struct config_value *cfg)
{
	if (remote->node == cfg->local_node)
		return endpoint_of(skb->ingress_ifindex, &pkt->remote, generation, remote);
	if (remote->node == 0)
		return 1;
	switch (cfg->transport) {
	case MESHAUTH_TRANSPORT_NONE:
		return 1;
	case MESHAUTH_TRANSPORT_WIREGUARD:
		return cfg->wg_ifindex != 0 && skb->ingress_ifindex == cfg->wg_ifindex;
	case MESHAUTH_TRANSPORT_IPSEC:
		return decrypted_by_meshauth_sa(skb);
	default:
		return 0;
	}
}

static __always_inline int gate(struct __sk_buff *skb, __u8 direction)
{
	int egress = direction == MESHAUTH_DIR_EGRESS;
	struct packet pkt = {};
	__u32 zero = 0;
	int parsed;

	switch (skb->protocol) {
	case bpf_htons(ETH_P_IP):
		parsed = parse_ipv4(skb, &pkt, egress);
		break;
	case bpf_htons(ETH_P_IPV6):
		parsed = parse_ipv6(skb, &pkt, egress);
		break;
	case bpf_htons(ETH_P_ARP):
		return pass(MESHAUTH_CTR_EXEMPT);
	default:
		return drop(MESHAUTH_CTR_DROPPED_NOT_IP);
	}
	if (parsed < 0)
		return drop(MESHAUTH_CTR_DROPPED_MALFORMED);
	if (parsed > 0)
		return pass(MESHAUTH_CTR_EXEMPT);

	const struct config_value *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return drop(MESHAUTH_CTR_DROPPED_MALFORMED); /* cannot happen: array slot 0 */
	int allow_by_default = cfg->default_mode == MESHAUTH_DEFAULT_ALLOW;

	const __u64 *gen = bpf_map_lookup_elem(&ipcache_gen, &zero);
	__u64 generation = gen ? *(volatile const __u64 *)gen : 0;
	struct ipcache_value local, remote;

	/*
	 * The host-side interface on both hooks: the workload's own address must be bound to it.
	 * A workload's IPv6 link-local source (MLD reports, say) reaches nothing past this host, so
	 * it is an unknown identity rather than a spoofed source.
	 */
	if (!endpoint_of(skb->ifindex, &pkt.local, generation, &local)) {
		int link_local = pkt.local.family == MESHAUTH_FAMILY_IPV6 && link_local_or_unspecified(pkt.local.addr);

		if (egress && !link_local)
			return drop(MESHAUTH_CTR_DROPPED_SPOOFED_SOURCE);
		count(MESHAUTH_CTR_UNKNOWN_IDENTITY);
		return allow_by_default ? TC_ACT_UNSPEC : TC_ACT_SHOT;
	}
	if (!identity_of(&pkt.remote, generation, &remote)) {
		count(MESHAUTH_CTR_UNKNOWN_IDENTITY);
		return allow_by_default ? TC_ACT_UNSPEC : TC_ACT_SHOT;
	}
	if (may_be_translated(remote.identity)) {
		if (conntrack_peer(skb, &pkt, egress) == 0) {
			if (!identity_of(&pkt.remote, generation, &remote)) {
				count(MESHAUTH_CTR_UNKNOWN_IDENTITY);
				return allow_by_default ? TC_ACT_UNSPEC : TC_ACT_SHOT;
			}
		} else if (remote.identity == MESHAUTH_IDENTITY_SERVICE) {
			/*
			 * No flow yet: the first packet to a VIP, before kube-proxy picks the backend.
			 * It passes; the backend's gate judges it with the real addresses, and every
			 * later packet of the flow, and every reply, is judged here through conntrack.
			 * A VIP as the source of a packet without a flow is never a real peer.
			 */
			if (egress)
				return pass(MESHAUTH_CTR_SERVICE_DEFERRED);
			return drop(MESHAUTH_CTR_UNKNOWN_IDENTITY);
		}
	}
	/*
	 * Provenance of the (translated) peer. Reserved peers (host, remote node, world, Service,
	 * API server) come outside any transport and are never an authenticated pair's remote end:
	 * policy alone judges them.
	 */
	if (!egress && remote.identity <= MESHAUTH_RESERVED_IDENTITY_BASE &&
	    !arrived_from_its_node(skb, &pkt, &remote, generation, cfg))
		return drop(MESHAUTH_CTR_DROPPED_UNVERIFIED_ARRIVAL);

	/*
	 * The authenticated pair first: traffic that passes never pays for the policy
	 * lookup. That is exact because a policy entry only says required or not, and
	 * a valid entry satisfies "required" (there is one auth type per node).
	 */
	struct auth_key akey = {
		.local_identity = local.identity,
		.remote_identity = remote.identity,
		.remote_node = remote.node,
		.auth_type = cfg->default_auth_type ? cfg->default_auth_type : MESHAUTH_AUTH_MTLS,
	};
	const struct auth_value *entry = bpf_map_lookup_elem(&auth, &akey);
	if (entry && unexpired(entry->expiry_ns))
		return pass(MESHAUTH_CTR_ALLOWED);

	struct policy_key pkey = {
		.local_identity = local.identity,
		.remote_identity = remote.identity,
		.direction = direction,
	};
	const struct policy_value *rule = bpf_map_lookup_elem(&policy, &pkey);
	if (rule ? rule->auth_type == MESHAUTH_AUTH_NONE : allow_by_default)
		return pass(MESHAUTH_CTR_NOT_REQUIRED);

	__u8 reason = entry ? MESHAUTH_REASON_EXPIRED : MESHAUTH_REASON_NO_ENTRY;
	/* A reserved peer can never authenticate: asking the agent would be pointless. */
	if (remote.identity <= MESHAUTH_RESERVED_IDENTITY_BASE)
		signal(skb, &akey, &pkt, direction, reason, bpf_ktime_get_ns(), cfg);
	return drop(entry ? MESHAUTH_CTR_DROPPED_EXPIRED : MESHAUTH_CTR_DROPPED_NO_ENTRY);
}

SEC("tc")
int from_workload(struct __sk_buff *skb)
{
	return gate(skb, MESHAUTH_DIR_EGRESS);
}

SEC("tc")
int to_workload(struct __sk_buff *skb)
{
	return gate(skb, MESHAUTH_DIR_INGRESS);
}

/*
 * GPL-compatible, as the kernel requires for bpf_perf_event_output; the C sources
 * of the gate are dual-licensed for that reason (the rest of meshauth is Apache-2.0).
 */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
