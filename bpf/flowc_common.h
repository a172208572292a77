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
#define FLOWC_PARSE_MALFORMED 2 /* an IP packet whose headers are cut short or invalid: dropped */

/* Status counters (index into the status map). */
#define FLOWC_STATUS_NOT_IP      0
#define FLOWC_STATUS_MALFORMED   1
#define FLOWC_STATUS_NO_RULE     2 /* classification failed: a table was missing (fail closed) */
#define FLOWC_STATUS_EVENTS_LOST 3 /* ring buffer full */
#define FLOWC_STATUS_EVENTS_SENT 4
#define FLOWC_STATUS_COUNT       5

/* An entry of an IPv4 DIR-16-8-8 level with this bit set names a chunk of the
 * next level instead of a class (backends/bpf/tables.py, dir_levels). */
#define FLOWC_DIR_CHUNK 0x80000000U
/* Entries of a DIR-16-8-8 table's first level (per bank): the top 16 bits. */
#define FLOWC_DIR_L1 65536

/* Config flags. */
#define FLOWC_CONFIG_F_EVENTS  1 /* emit miss events for the agent */
#define FLOWC_CONFIG_F_NO_MEMO 2 /* always walk the bit vectors (measuring, debugging) */

/* The packet's header fields, as the IR's header space sees them: a field the
 * packet lacks is 0 (ports of ICMP, ICMP type of TCP, L4 of non-first fragments).
 * Addresses are in network byte order (LPM keys), everything else host order.
 * 56 bytes. */
struct flowc_key {
	__u8  family;      /* 4 or 6 */
	__u8  vlan_tagged; /* 1 when an 802.1Q/802.1ad tag is present */
	__u16 vlan_id;     /* outermost tag's VID */
	__u8  dscp;
	__u8  ip_proto;    /* IPv6: the transport after extension headers */
	__u8  icmp_type;
	__u8  icmp_code;
	__u8  tcp_flags;   /* FIN..CWR, bit 0 is FIN */
	__u8  pad0[3];
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

/* Load-time configuration, written by the loader (one entry). 24 bytes. */
struct flowc_config {
	__u32 generation; /* policy generation, stamped on events */
	__u32 flags;      /* FLOWC_CONFIG_F_* */
	__u64 dedup_ns;   /* report one flow at most once per this interval */
	__u32 bank;       /* bit 0: which half of every policy map is live; the whole
			   * word: the fill epoch, advanced on every refill */
	__u32 pad0;
};

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
