/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: the structs and constants shared by the slow path and
 * user space.
 *
 * These layouts are an ABI between the generated program and flowc's loader
 * and agent (backends/bpf/abi.py mirrors them with ctypes, and
 * tests/kernel/test_bpf_abi.py compares the two): fields are listed with
 * explicit padding, and nothing may be reordered without changing both.
 */
#pragma once

#include <linux/types.h>

/* Action kinds in the action table (ir/model.py ACTION_KINDS order). */
#define FLOWC_ACTION_ALLOW    0
#define FLOWC_ACTION_DROP     1
#define FLOWC_ACTION_REDIRECT 2
#define FLOWC_ACTION_MIRROR   3
#define FLOWC_ACTION_MARK     4

/* Action flags. */
#define FLOWC_ACTION_F_PEER   1 /* redirect with bpf_redirect_peer (netns-crossing veth/netkit) */

/* What the parser made of a packet. */
#define FLOWC_PARSE_OK        0
#define FLOWC_PARSE_NOT_IP    1 /* not IPv4/IPv6: outside the policy, passed */
/* A frame whose headers are cut short or invalid, by layer (ir/interp.py
 * Unclassified): dropped. */
#define FLOWC_PARSE_MALFORMED_L2 2 /* Ethernet header or VLAN tag cut short */
#define FLOWC_PARSE_MALFORMED_L3 3 /* IP header cut short, ihl < 5, IPv6 ext headers */
#define FLOWC_PARSE_MALFORMED_L4 4 /* transport header shorter than flowc reads */

/* Status counters (index into the status map). */
#define FLOWC_STATUS_NOT_IP       0
#define FLOWC_STATUS_MALFORMED    1 /* every malformed frame, whatever the layer */
#define FLOWC_STATUS_NO_RULE      2 /* classification failed: a table was missing (fail closed) */
#define FLOWC_STATUS_EVENTS_LOST  3 /* ring buffer full */
#define FLOWC_STATUS_EVENTS_SENT  4
#define FLOWC_STATUS_MALFORMED_L2 5 /* also counted in FLOWC_STATUS_MALFORMED */
#define FLOWC_STATUS_MALFORMED_L3 6
#define FLOWC_STATUS_MALFORMED_L4 7
/* Connection tracking (bpf/flowc_ct.h; 0 in a program without it): packets
 * per state, and what happened to the table (ir/conntrack.py COUNTERS). */
#define FLOWC_STATUS_CT_NEW         8
#define FLOWC_STATUS_CT_ESTABLISHED 9
#define FLOWC_STATUS_CT_RELATED     10
#define FLOWC_STATUS_CT_INVALID     11
#define FLOWC_STATUS_CT_COMMITS     12
#define FLOWC_STATUS_CT_UNTRACKED   13 /* a commit the full table refused */
#define FLOWC_STATUS_CT_EXPIRED     14 /* an expired entry a packet found (and removed) */
#define FLOWC_STATUS_CT_CLOSED      15 /* a TIME_WAIT/CLOSE entry a reopening SYN replaced */
#define FLOWC_STATUS_COUNT          16

/* Fragment state (struct flowc_key.frag). */
#define FLOWC_FRAG_NONE  0
#define FLOWC_FRAG_FIRST 1 /* offset 0: the transport header is there */
#define FLOWC_FRAG_LATER 2 /* offset != 0: no transport header */

/* An entry of an IPv4 DIR-16-8-8 level with this bit set names a chunk of the
 * next level instead of a class (backends/bpf/tables.py, dir_levels). */
#define FLOWC_DIR_CHUNK 0x80000000U
/* Entries of a DIR-16-8-8 table's first level (per bank): the top 16 bits. */
#define FLOWC_DIR_L1 65536

/* Connection states (struct flowc_key.state): ir/fields.py STATE_*. */
#define FLOWC_STATE_NEW         0
#define FLOWC_STATE_ESTABLISHED 1
#define FLOWC_STATE_RELATED     2
#define FLOWC_STATE_INVALID     3

/* skb->cb[1] after a tracking program ran: the packet's state + 1 in the low
 * byte (0: not tracked), and what the commit did. */
#define FLOWC_CB_COMMITTED 0x100
#define FLOWC_CB_UNTRACKED 0x200

/* Config flags. */
#define FLOWC_CONFIG_F_EVENTS  1 /* emit miss events for the agent */
#define FLOWC_CONFIG_F_NO_MEMO 2 /* always walk the bit vectors (measuring, debugging) */
/* The checker's mode (verify/bpf.py): the connection state is given in flags
 * bits 8-9 and nothing is observed or committed, so the classifier and the
 * established fast lane can be judged for every state without a table. */
#define FLOWC_CONFIG_F_CT_GIVEN 4
#define FLOWC_CONFIG_CT_GIVEN_SHIFT 8

/* The packet's header fields, as the IR's header space sees them: a field the
 * packet lacks is 0 (ports of ICMP, ICMP type of TCP, L4 of later fragments).
 * Addresses are in network byte order (LPM keys), everything else host order.
 * frag and state took the first bytes of what was padding after tcp_flags, so
 * no other offset moved. 56 bytes. */
struct flowc_key {
	__u8  family;      /* 4 or 6 */
	__u8  vlan_tagged; /* 1 when an 802.1Q/802.1ad tag is present */
	__u16 vlan_id;     /* outermost tag's VID */
	__u8  dscp;
	__u8  ip_proto;    /* IPv6: the transport after extension headers */
	__u8  icmp_type;
	__u8  icmp_code;
	__u8  tcp_flags;   /* FIN..CWR, bit 0 is FIN */
	__u8  frag;        /* FLOWC_FRAG_*: ir/fields.py FRAG_NONE/FIRST/LATER */
	__u8  state;       /* FLOWC_STATE_*: the connection tracker's verdict (0 without one) */
	__u8  pad0;
	__u16 sport;
	__u16 dport;
	__u32 ip4_src;
	__u32 ip4_dst;
	__u8  ip6_src[16];
	__u8  ip6_dst[16];
};

/* One action table entry, indexed by rule id. 16 bytes. */
struct flowc_action {
	__u32 kind;    /* FLOWC_ACTION_* */
	__u32 ifindex; /* redirect/mirror target */
	__u32 mark;    /* mark action */
	__u32 flags;   /* FLOWC_ACTION_F_* */
};

/* Per-rule counters (per CPU). 24 bytes. */
struct flowc_rule_stats {
	__u64 packets;
	__u64 bytes;
	__u64 last_jiffies; /* bpf_jiffies64() at the last hit (runtime/kernel_clock.py) */
};

/* Load-time configuration, written by the loader (one entry). 32 bytes. */
struct flowc_config {
	__u32 generation; /* policy generation, stamped on events */
	__u32 flags;      /* FLOWC_CONFIG_F_* */
	__u64 dedup_ns;   /* report one flow at most once per this interval */
	__u32 bank;       /* bit 0: which half of every policy map is live; the whole
			   * word: the fill epoch, advanced on every refill */
	__u32 ct_fast;    /* established fast lane: the rule that decides every
			   * established packet, plus one; 0: classify them. In the
			   * config, not the C, so a refill changes it with the bank. */
	__u64 ct_now_ns;  /* test clock: when non-zero, the connection tracker's "now"
			   * (BPF_PROG_TEST_RUN cannot fake time); 0 in production,
			   * where now is bpf_ktime_get_coarse_ns() */
	__u32 ct_hook;    /* ir/conntrack.py hook_id() of the policy: what a commit
			   * records (in the config, since a refill may rename it) */
	__u32 pad0;
};

/* The connection table (bpf/flowc_ct.h), one per host, pinned and shared by
 * every flowc program. The key is a connection's tuple (ir/conntrack.py
 * ConnKey): addresses in network order (IPv4 in the first 4 bytes, the rest
 * 0), ports in host order; ICMP echo: sport is the echo identifier, dport 0;
 * other protocols: both 0. 40 bytes, no padding holes that are not zeroed.
 * Canonical for every protocol but ICMP: of the original-direction tuple and
 * its reverse, the one whose (src, sport) is not above (dst, dport)
 * (flowc_ct_canonical), so both directions find the entry with one lookup;
 * the entry's `swapped` says which of the two the original was. ICMP echo is
 * keyed by its request's tuple as it goes: the reverse of an echo key is
 * another conversation (the other side's ping), not the same one. */
struct flowc_ct_key {
	__u8  family;
	__u8  proto;
	__u16 pad0;
	__u16 sport;
	__u16 dport;
	__u8  src[16];
	__u8  dst[16];
};

/* One connection (ir/conntrack.py Connection). 56 bytes. */
struct flowc_ct_entry {
	__u64 expires_ns;      /* gone at this time unless a packet comes first */
	__u64 created_ns;
	__u64 last_ns;
	__u64 packets_orig;    /* the committing packet included */
	__u64 packets_reply;
	__u8  replied;         /* a reply was seen: both directions established */
	__u8  tcp;             /* FLOWC_TCP_* (ir/conntrack.py TcpState) */
	__u8  fin_from;        /* bit per direction (0 original, 1 reply) that sent a FIN */
	__u8  start_flags;     /* the committing packet's TCP flags (0 for other protocols) */
	__u32 hook;            /* hook_id() of the committing policy: with the tuple and
				* start_flags, what --revoke-established goes by */
	__u8  swapped;         /* 1: the original direction is the key reversed */
	__u8  pad1[7];
};

/* TCP states (ir/conntrack.py TcpState). */
#define FLOWC_TCP_NONE        0
#define FLOWC_TCP_SYN_SENT    1
#define FLOWC_TCP_SYN_RECV    2
#define FLOWC_TCP_ESTABLISHED 3
#define FLOWC_TCP_FIN_WAIT    4
#define FLOWC_TCP_TIME_WAIT   5
#define FLOWC_TCP_CLOSE       6

/* Every map that holds policy (classes, bit vectors, actions) has two banks;
 * the loader fills the idle one and then flips flowc_config.bank, so a policy
 * update of the same shape is map writes plus one atomic switch. */
#define FLOWC_BANKS 2

/* A miss event: the slow path decided a flow the agent may cache. 72 bytes. */
struct flowc_event {
	struct flowc_key key;
	__u32 rule;
	__u32 generation;
	__u64 ts_ns;
};

/* An IPv6 LPM trie key (prefix length first, as the kernel requires). The bank
 * byte comes first, so prefix length 8 + n matches bank + /n. 24 bytes: 3 of
 * tail padding, never compared (no prefix is longer than FLOWC_LPM6_FULL). */
struct flowc_lpm6_key {
	__u32 prefixlen;
	__u8  bank;
	__u8  addr[16];
};

/* The prefix length of a lookup of a whole address: the bank byte, 128 bits. */
#define FLOWC_LPM6_FULL (8 + 128)
