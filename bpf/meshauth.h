/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * meshauth datapath: the one place where the layouts shared by the BPF gate
 * (bpf/gate.bpf.c) and the agent (src/datapath/gate/layout.ts) are defined.
 *
 * Every struct below is mirrored byte for byte in TypeScript;
 * test/datapath-layout.test.ts compares the TypeScript sizes and offsets with
 * the BTF of the compiled object, so change both sides together.
 *
 * All multi-byte integers are host byte order, except IP addresses, which are
 * network byte order (as they appear in the packet).
 *
 * Maps (pinned as <pin dir>/maps/<name>; default pin dir /sys/fs/bpf/meshauth):
 *   ipcache    LPM trie   ipcache_key     -> ipcache_value   (prefixes shorter than a host)
 *   ipcache_hosts4 hash   __be32 address  -> ipcache_value   (/32 entries)
 *   ipcache_hosts6 hash   ipv6_host_key   -> ipcache_value   (/128 entries)
 *   endpoints  hash       endpoint_key    -> ipcache_value   (the addresses of the workload
 *                                                             behind each gated interface)
 *   ipcache_memo   per-CPU array  __u32 slot -> ipcache_memo_entry (recent ipcache answers)
 *   ipcache_gen    array  __u32 (always 0) -> __u64 (changed by every ipcache write)
 *   policy     hash       policy_key      -> policy_value
 *   auth       hash       auth_key        -> auth_value
 *   ratelimit  LRU hash   auth_key        -> __u64 (monotonic ns of the last signal)
 *   signals    queue                      -> signal_event
 *   doorbell   perf event array (one slot per CPU): rung after each signal
 *   counters   per-CPU array  __u32 (enum meshauth_counter) -> __u64
 *   config     array      __u32 (always 0) -> config_value
 */
#ifndef MESHAUTH_H
#define MESHAUTH_H

#include <linux/types.h>

/* Family tags inside ipcache_key. */
#define MESHAUTH_FAMILY_IPV4 4
#define MESHAUTH_FAMILY_IPV6 6

/* The LPM prefix length counts the 32 bits of family + pad before the address. */
#define MESHAUTH_IPCACHE_PREFIX_BASE 32

/* Direction, seen from the workload whose host-side interface the gate sits on. */
#define MESHAUTH_DIR_EGRESS 0  /* workload -> elsewhere: tc ingress of the host-side veth */
#define MESHAUTH_DIR_INGRESS 1 /* elsewhere -> workload: tc egress of the host-side veth */

/* auth_type 0 in a policy value means "no authentication required". */
#define MESHAUTH_AUTH_NONE 0
/* The meshauth TLS 1.3 mutual handshake: the node's auth type while default_auth_type is 0. */
#define MESHAUTH_AUTH_MTLS 1

/* config_value.default_mode; zero is the fail-closed choice. */
#define MESHAUTH_DEFAULT_REQUIRE 0
#define MESHAUTH_DEFAULT_ALLOW 1

/*
 * config_value.transport: how packets of another node's workloads must arrive (see
 * arrived_from_its_node in gate.bpf.c). Zero, the fail-closed choice, drops them all.
 */
#define MESHAUTH_TRANSPORT_UNSET 0
#define MESHAUTH_TRANSPORT_NONE 1      /* the CNI carries them: not checked */
#define MESHAUTH_TRANSPORT_WIREGUARD 2 /* decrypted on the WireGuard device (wg_ifindex) */
#define MESHAUTH_TRANSPORT_IPSEC 3     /* decrypted by an SA whose reqid is meshauth's */

/* meshauth's IPsec reqids, 0x6d610000-0x6d61ffff (src/datapath/transport/xfrm.ts: REQID_BASE..REQID_LAST). */
#define MESHAUTH_IPSEC_REQID_FIRST 1835073536
#define MESHAUTH_IPSEC_REQID_LAST 1835139071

/* Signal interval used while config_value.signal_interval_ns is 0. */
#define MESHAUTH_DEFAULT_SIGNAL_INTERVAL_NS 250000000ULL

/*
 * Reserved identities: peers that are not workloads, in the ipcache like any identity. Numbered
 * from the top of the identity space (written in decimal: 0xffffff00 + n), so they never meet
 * the agent's workload numbering, which counts up from 1. Identity 0 in an ipcache entry means
 * "no identity": an address inside the cluster's pod CIDRs that no endpoint holds yet is unknown,
 * not "world".
 */
#define MESHAUTH_RESERVED_IDENTITY_BASE 4294967040 /* 0xffffff00: identity > base: reserved */
#define MESHAUTH_IDENTITY_HOST 4294967041          /* this node's own addresses (kubelet probes) */
#define MESHAUTH_IDENTITY_WORLD 4294967042         /* outside the cluster's CIDRs */
/* A Service VIP: kube-proxy translates it after the gate (from_workload) and back before it
 * (to_workload); the gate judges the real peer it finds in conntrack. */
#define MESHAUTH_IDENTITY_SERVICE 4294967043
#define MESHAUTH_IDENTITY_REMOTE_NODE 4294967046   /* another node's addresses */
#define MESHAUTH_IDENTITY_KUBE_APISERVER 4294967047

/* signal_event.reason */
#define MESHAUTH_REASON_NO_ENTRY 1
#define MESHAUTH_REASON_EXPIRED 2

/*
 * Per-CPU counters. Every packet seen by the gate increments exactly one
 * verdict counter (0-7 and 11-13); the signal counters (8-10) are counted on
 * top. Indices never change: the pinned counters outlive an upgrade.
 */
enum meshauth_counter {
	MESHAUTH_CTR_ALLOWED = 0,          /* authenticated, unexpired entry: pass */
	MESHAUTH_CTR_NOT_REQUIRED = 1,     /* no valid entry, but none is required: pass */
	MESHAUTH_CTR_EXEMPT = 2,           /* ARP or IPv6 neighbour discovery: pass */
	MESHAUTH_CTR_DROPPED_NO_ENTRY = 3, /* authentication required, no entry: drop */
	MESHAUTH_CTR_DROPPED_EXPIRED = 4,  /* authentication required, entry expired: drop */
	MESHAUTH_CTR_UNKNOWN_IDENTITY = 5, /* an address not in ipcache: drop (pass if default allows) */
	MESHAUTH_CTR_DROPPED_MALFORMED = 6,/* truncated IP header: drop */
	MESHAUTH_CTR_DROPPED_NOT_IP = 7,   /* neither IPv4, IPv6 nor ARP: drop */
	MESHAUTH_CTR_SIGNALS_SENT = 8,     /* "authentication required" events queued */
	MESHAUTH_CTR_SIGNALS_SUPPRESSED = 9, /* rate-limited: a signal for the key is recent */
	MESHAUTH_CTR_SIGNALS_LOST = 10,    /* the signal queue was full */
	MESHAUTH_CTR_DROPPED_SPOOFED_SOURCE = 11,  /* from a workload, with a source not bound to its interface: drop */
	MESHAUTH_CTR_DROPPED_UNVERIFIED_ARRIVAL = 12, /* to a workload, not through the sender's node's transport or interface: drop */
	/*
	 * Passed: the first packet of a flow to a Service VIP, whose backend the DNAT after the
	 * gate chooses; the backend's gate judges it with the real addresses.
	 */
	MESHAUTH_CTR_SERVICE_DEFERRED = 13,
	MESHAUTH_CTR_MAX = 14,
};

struct ipcache_key {
	__u32 prefixlen; /* MESHAUTH_IPCACHE_PREFIX_BASE + IP prefix length */
	__u8 family;     /* MESHAUTH_FAMILY_IPV4 or _IPV6 */
	__u8 pad[3];
	__u8 addr[16];   /* IPv4 uses the first 4 bytes, the rest is zero */
};

/* An IPv6 host address: the ipcache_hosts6 key (IPv4 hosts are keyed by the bare __be32). */
struct ipv6_host_key {
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity; /* node-local numeric identity, never 0 */
	__u16 node;     /* node id of the host that owns the address */
	__u16 pad;
};

/* An address of the workload behind a gated interface: the endpoints key. */
struct endpoint_key {
	__u32 ifindex;  /* the host-side interface */
	__u8 family;    /* MESHAUTH_FAMILY_IPV4 or _IPV6 */
	__u8 pad[3];
	__u8 addr[16];  /* IPv4 uses the first 4 bytes, the rest is zero */
};

/*
 * One slot of the gate's per-CPU memo of ipcache and endpoints answers. Valid
 * while its generation equals ipcache_gen, which the agent changes (to a fresh
 * random value) after every ipcache or endpoints write, so a memoized answer
 * never outlives a change.
 */
#define MESHAUTH_IPCACHE_MEMO_SLOTS 256
struct ipcache_memo_entry {
	__u64 generation;
	__u8 addr[16];  /* as in ipcache_key */
	__u8 family;    /* MESHAUTH_FAMILY_*; 0 in an empty slot */
	__u8 pad[3];
	struct ipcache_value value;
	__u32 ifindex;  /* an endpoints answer for this interface; 0: an ipcache answer */
};

struct policy_key {
	__u32 local_identity;
	__u32 remote_identity;
	__u8 direction; /* MESHAUTH_DIR_* */
	__u8 pad[3];
};

/* Absent: config_value.default_mode decides. */
struct policy_value {
	__u8 auth_type; /* MESHAUTH_AUTH_NONE: not required; otherwise required (the node's auth type) */
	__u8 pad[3];
};

/* Same layout as Cilium's auth map key. */
struct auth_key {
	__u32 local_identity;
	__u32 remote_identity;
	__u16 remote_node;
	__u8 auth_type;
	__u8 pad;
};

struct auth_value {
	__u64 expiry_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) after which the entry is void */
};

struct signal_event {
	__u32 local_identity;
	__u32 remote_identity;
	__u16 remote_node;
	__u8 auth_type;
	__u8 protocol;  /* IP protocol / IPv6 upper-layer header */
	__u8 direction; /* MESHAUTH_DIR_* */
	__u8 reason;    /* MESHAUTH_REASON_* */
	__u8 family;    /* MESHAUTH_FAMILY_* */
	__u8 pad;
	__u64 ktime_ns; /* when the gate queued it: lets the agent measure delivery delay */
};

struct config_value {
	__u64 signal_interval_ns; /* per-key signal rate limit; 0 = the default */
	__u8 default_mode;        /* MESHAUTH_DEFAULT_*: pairs without a policy entry, unknown addresses */
	__u8 default_auth_type;   /* the node's auth type (auth_key.auth_type); 0 = MESHAUTH_AUTH_MTLS */
	__u8 transport;           /* MESHAUTH_TRANSPORT_* */
	__u8 pad;
	__u16 local_node;         /* this node's id (ipcache_value.node of its own workloads) */
	__u16 pad2;
	__u32 wg_ifindex;         /* MESHAUTH_TRANSPORT_WIREGUARD: the WireGuard device */
	__u32 pad3;
};

#endif /* MESHAUTH_H */
