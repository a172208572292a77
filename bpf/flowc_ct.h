/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: connection tracking, the slow path's copy of the
 * reference tracker (ir/conntrack.py, whose module doc is the semantics; each
 * function below names the Python it mirrors). Pasted into the generated
 * program (it uses maps), between the classifier and bpf/flowc_entry.h.
 *
 * The table is one per host: a BPF_MAP_TYPE_HASH pinned at FLOWC_CT_PIN, so
 * every flowc program of the host (ingress and egress) opens the same map.
 * A plain hash, not an LRU hash, on purpose: the reference's capacity rule is
 * exact (a commit into a full table stores nothing and is counted untracked,
 * and on_full decides the packet), and an LRU map would instead evict some
 * live connection, which no reference run could predict. With preallocation
 * (bcc's default) the map holds exactly FLOWC_CT_CAPACITY entries and an
 * insert into a full map fails with -E2BIG.
 *
 * One entry per connection, keyed by the canonical one of its tuple and the
 * reverse (bpf/flowc_common.h), with `swapped` saying which was the original:
 * a packet in either direction finds its connection with one lookup, and its
 * direction is whether its own tuple was swapped to the key, against the
 * entry's swapped. (Keyed by the original tuple, a reply paid a missed lookup
 * of its own tuple first: +50 ns, bench/results/conntrack.md.) ICMP echo keeps
 * the request's tuple as the key, looked up the way the reference does.
 *
 * Expiry is lazy: a packet that finds an expired entry deletes it (counted
 * FLOWC_STATUS_CT_EXPIRED) and sees no connection, as ConnTracker._expired.
 * Entries nobody asks about again stay until runtime/conntrack.py gc() (the
 * agent's collector) removes them; until then they count against capacity,
 * as in the reference.
 *
 * Define before pasting: FLOWC_CT_PIN, FLOWC_CT_CAPACITY, FLOWC_CT_TCP_LOOSE,
 * FLOWC_CT_ON_FULL_DROP and the FLOWC_CT_T_* timeouts in seconds
 * (backends/bpf/conntrack.py writes them from a CtConfig).
 */
#pragma once

#include "flowc_common.h"
#include "flowc_parse.h"

#if !defined(FLOWC_CT_PIN) || !defined(FLOWC_CT_CAPACITY) || !defined(FLOWC_CT_TCP_LOOSE) || \
	!defined(FLOWC_CT_ON_FULL_DROP)
#error "define the FLOWC_CT_* configuration before including flowc_ct.h"
#endif

#define FLOWC_NS_PER_S 1000000000ULL
/* Observation.starts of a packet that commits nothing. */
#define FLOWC_CT_NO_START 0xff
/* TCP flag bits (bit 0 is FIN) and the ones the tracker judges (TCP_JUDGED_FLAGS). */
#define FLOWC_TCP_FIN 0x01
#define FLOWC_TCP_SYN 0x02
#define FLOWC_TCP_RST 0x04
#define FLOWC_TCP_ACK 0x10
#define FLOWC_TCP_URG 0x20
#define FLOWC_TCP_JUDGED (FLOWC_TCP_FIN | FLOWC_TCP_SYN | FLOWC_TCP_RST | FLOWC_TCP_ACK | FLOWC_TCP_URG)
/* _tcp_kind(): Linux's TCP flag index. */
#define FLOWC_KIND_RST    0
#define FLOWC_KIND_SYNACK 1
#define FLOWC_KIND_SYN    2
#define FLOWC_KIND_FIN    3
#define FLOWC_KIND_ACK    4
#ifndef EEXIST
#define EEXIST 17
#endif

/* What the tracker works with for one packet, beside the flowc_key: the tuple
 * being looked up (and what a commit stores), its reverse, and what a commit
 * would start. Per CPU in a map, not on the stack, for the same reason as
 * flowc_scratch (the verifier merges map contents, not stack contents). */
struct flowc_ct_scratch {
	struct flowc_ct_key key;  /* the packet's tuple; after find, canonical (the commit's) */
	struct flowc_ct_key rkey; /* key reversed: the reply direction */
	__u8 starts;              /* FLOWC_TCP_* a commit stores, or FLOWC_CT_NO_START */
	__u8 swapped;             /* key is the packet's own tuple reversed */
	__u8 pad0[6];
};

/* canonical tuple -> connection, one table per host */
BPF_TABLE_PINNED("hash", struct flowc_ct_key, struct flowc_ct_entry, flowc_ct,
		 FLOWC_CT_CAPACITY, FLOWC_CT_PIN);
BPF_PERCPU_ARRAY(flowc_ct_work, struct flowc_ct_scratch, 1);

static __always_inline void flowc_ct_count(__u32 status)
{
	__u64 *count = flowc_status.lookup(&status);

	if (count)
		*count += 1;
}

/* The tracker's clock: the config's test clock when set, else
 * CLOCK_MONOTONIC_COARSE. The coarse clock is the monotonic time of the last
 * tick (it lags CLOCK_MONOTONIC by less than one tick, 4 ms at HZ=250), plenty
 * for idle timeouts of seconds; it is read without touching the clocksource,
 * where bpf_ktime_get_ns() reads the TSC through the timekeeper: measured
 * ~30 ns of the ~100 ns an established packet cost (bench/results/conntrack.md).
 * User space reads the same clock (runtime/conntrack.py table_now_ns). */
static __always_inline __u64 flowc_ct_now(const struct flowc_config *cfg)
{
	return cfg->ct_now_ns ? cfg->ct_now_ns : bpf_ktime_get_coarse_ns();
}

static __always_inline int flowc_ct_is_icmp(__u8 family, __u8 proto)
{
	return (family == 4 && proto == FLOWC_IPPROTO_ICMP) ||
	       (family == 6 && proto == FLOWC_IPPROTO_ICMPV6);
}

static __always_inline int flowc_ct_port_proto(__u8 proto)
{
	return proto == FLOWC_IPPROTO_TCP || proto == FLOWC_IPPROTO_UDP || proto == FLOWC_IPPROTO_SCTP;
}

/* ICMP_ECHO: echo request / reply types per family. */
static __always_inline __u8 flowc_ct_echo_request(__u8 family)
{
	return family == 4 ? 8 : 128;
}

static __always_inline __u8 flowc_ct_echo_reply(__u8 family)
{
	return family == 4 ? 0 : 129;
}

/* ICMP_ERRORS: the error types that embed the offending header. */
static __always_inline int flowc_ct_icmp_error(__u8 family, __u8 type)
{
	if (family == 4)
		return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

/* CtTimeouts.seconds(), in ns. */
static __always_inline __u64 flowc_ct_timeout_ns(const struct flowc_ct_entry *e, __u8 proto)
{
	__u64 s = FLOWC_CT_T_OTHER;

	if (proto == FLOWC_IPPROTO_TCP) {
		switch (e->tcp) {
		case FLOWC_TCP_SYN_SENT:
			s = FLOWC_CT_T_TCP_SYN_SENT;
			break;
		case FLOWC_TCP_SYN_RECV:
			s = FLOWC_CT_T_TCP_SYN_RECV;
			break;
		case FLOWC_TCP_ESTABLISHED:
			s = FLOWC_CT_T_TCP;
			break;
		case FLOWC_TCP_FIN_WAIT:
			s = FLOWC_CT_T_TCP_FIN_WAIT;
			break;
		case FLOWC_TCP_TIME_WAIT:
			s = FLOWC_CT_T_TCP_TIME_WAIT;
			break;
		default:
			s = FLOWC_CT_T_TCP_CLOSE;
			break;
		}
	} else if (proto == FLOWC_IPPROTO_UDP) {
		s = e->replied ? FLOWC_CT_T_UDP_STREAM : FLOWC_CT_T_UDP;
	} else if (proto == FLOWC_IPPROTO_SCTP) {
		s = e->replied ? FLOWC_CT_T_SCTP_STREAM : FLOWC_CT_T_SCTP;
	} else if (proto == FLOWC_IPPROTO_ICMP || proto == FLOWC_IPPROTO_ICMPV6) {
		s = FLOWC_CT_T_ICMP;
	}
	return s * FLOWC_NS_PER_S;
}

/* Addresses of the key from the parsed packet (network order, IPv4 in front). */
static __always_inline void flowc_ct_addresses(const struct flowc_key *k, struct flowc_ct_key *key)
{
	if (k->family == 4) {
		__builtin_memcpy(key->src, &k->ip4_src, 4);
		__builtin_memcpy(key->dst, &k->ip4_dst, 4);
	} else {
		__builtin_memcpy(key->src, k->ip6_src, 16);
		__builtin_memcpy(key->dst, k->ip6_dst, 16);
	}
}

/* _key_of() for a packet that is not ICMP echo/error: its own direction's tuple. */
static __always_inline void flowc_ct_key_of(const struct flowc_key *k, struct flowc_ct_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->family = k->family;
	key->proto = k->ip_proto;
	flowc_ct_addresses(k, key);
	if (flowc_ct_port_proto(k->ip_proto)) {
		key->sport = k->sport;
		key->dport = k->dport;
	}
}

/* ConnKey.reversed(): addresses swapped, and ports for port protocols. */
static __always_inline void flowc_ct_reverse(const struct flowc_ct_key *key, struct flowc_ct_key *out)
{
	out->family = key->family;
	out->proto = key->proto;
	out->pad0 = 0;
	__builtin_memcpy(out->src, key->dst, 16);
	__builtin_memcpy(out->dst, key->src, 16);
	if (flowc_ct_port_proto(key->proto)) {
		out->sport = key->dport;
		out->dport = key->sport;
	} else {
		out->sport = key->sport;
		out->dport = key->dport;
	}
}

/* The word-wise order of two addresses (native-endian 32-bit words, first
 * difference decides; runtime/conntrack.py _address_words is its mirror):
 * -1, 0 or 1. Any total order would do; this one is four compares. */
static __always_inline int flowc_ct_address_order(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	}
	return 0;
}

/* Put s->key, a packet's own tuple, in the table's canonical form (swapped
 * when (src, sport) is above (dst, dport)) and say in s->swapped whether it
 * was turned round. ICMP keys stay as they are (bpf/flowc_common.h). */
static __always_inline void flowc_ct_canonical(struct flowc_ct_scratch *s)
{
	int order;

	s->swapped = 0;
	if (flowc_ct_is_icmp(s->key.family, s->key.proto))
		return;
	order = flowc_ct_address_order(s->key.src, s->key.dst);
	if (order < 0 || (order == 0 && s->key.sport <= s->key.dport))
		return;
	flowc_ct_reverse(&s->key, &s->rkey);
	s->key = s->rkey;
	s->swapped = 1;
}

/* The stored entry of key unless it is expired (then it goes: _expired()). */
static __always_inline struct flowc_ct_entry *flowc_ct_live(struct flowc_ct_key *key, __u64 now)
{
	struct flowc_ct_entry *e = flowc_ct.lookup(key);

	if (!e || now < e->expires_ns)
		return e;
	flowc_ct.delete(key);
	flowc_ct_count(FLOWC_STATUS_CT_EXPIRED);
	return 0;
}

/* _find(): the live connection s->key (a packet's own tuple) belongs to; *dir
 * 0 original, 1 reply. Leaves s->key canonical, as a commit stores it. */
static __always_inline struct flowc_ct_entry *flowc_ct_find(struct flowc_ct_scratch *s, __u64 now,
							    __u32 *dir)
{
	struct flowc_ct_entry *e;

	flowc_ct_canonical(s);
	e = flowc_ct_live(&s->key, now);
	*dir = 0;
	if (e) {
		*dir = s->swapped ^ e->swapped;
		return e;
	}
	if (!flowc_ct_is_icmp(s->key.family, s->key.proto))
		return 0; /* one lookup found both directions */
	/* an echo embedded in an ICMP error: its reply direction is its own key */
	flowc_ct_reverse(&s->key, &s->rkey);
	*dir = 1;
	return flowc_ct_live(&s->rkey, now);
}

/* _touch(): a packet of a stored connection in direction dir updates it; its state. */
static __always_inline __u8 flowc_ct_touch(struct flowc_ct_entry *e, __u32 dir, __u64 now,
					   __u8 tcp, __u8 fin_from, __u8 proto)
{
	if (dir)
		e->replied = 1;
	e->tcp = tcp;
	e->fin_from = fin_from;
	e->last_ns = now;
	if (dir)
		e->packets_reply += 1;
	else
		e->packets_orig += 1;
	e->expires_ns = now + flowc_ct_timeout_ns(e, proto);
	return e->replied ? FLOWC_STATE_ESTABLISHED : FLOWC_STATE_NEW;
}

/* TCP_VALID_FLAGS */
static __always_inline int flowc_ct_tcp_valid(__u8 judged)
{
	switch (judged) {
	case FLOWC_TCP_SYN:
	case FLOWC_TCP_SYN | FLOWC_TCP_URG:
	case FLOWC_TCP_SYN | FLOWC_TCP_ACK:
	case FLOWC_TCP_RST:
	case FLOWC_TCP_RST | FLOWC_TCP_ACK:
	case FLOWC_TCP_FIN | FLOWC_TCP_ACK:
	case FLOWC_TCP_FIN | FLOWC_TCP_ACK | FLOWC_TCP_URG:
	case FLOWC_TCP_ACK:
	case FLOWC_TCP_ACK | FLOWC_TCP_URG:
		return 1;
	}
	return 0;
}

static __always_inline __u8 flowc_ct_tcp_kind(__u8 judged)
{
	if (judged & FLOWC_TCP_RST)
		return FLOWC_KIND_RST;
	if (judged & FLOWC_TCP_SYN)
		return (judged & FLOWC_TCP_ACK) ? FLOWC_KIND_SYNACK : FLOWC_KIND_SYN;
	if (judged & FLOWC_TCP_FIN)
		return FLOWC_KIND_FIN;
	return FLOWC_KIND_ACK;
}

/* _observe_tcp(): e is what flowc_ct_find() found (dir its direction) or 0. */
static __always_inline __u8 flowc_ct_observe_tcp(const struct flowc_key *k,
						 struct flowc_ct_scratch *s,
						 struct flowc_ct_entry *e, __u32 dir, __u64 now)
{
	__u8 judged = k->tcp_flags & FLOWC_TCP_JUDGED;
	__u8 kind, tcp, fin_from, after = FLOWC_CT_NO_START;

	if (!flowc_ct_tcp_valid(judged))
		return FLOWC_STATE_INVALID; /* never valid flags */
	kind = flowc_ct_tcp_kind(judged);
	if (!e) {
		if (kind == FLOWC_KIND_SYN) {
			s->starts = FLOWC_TCP_SYN_SENT;
			return FLOWC_STATE_NEW;
		}
		if (kind == FLOWC_KIND_ACK && FLOWC_CT_TCP_LOOSE) {
			s->starts = FLOWC_TCP_ESTABLISHED; /* loose pick-up of a mid-stream packet */
			return FLOWC_STATE_NEW;
		}
		return FLOWC_STATE_INVALID; /* no connection to belong to */
	}
	tcp = e->tcp;
	fin_from = e->fin_from;
	if (kind == FLOWC_KIND_RST) {
		after = FLOWC_TCP_CLOSE;
	} else if (kind == FLOWC_KIND_SYN) {
		if (dir == 0 && tcp == FLOWC_TCP_SYN_SENT) {
			after = tcp; /* a retransmitted SYN */
		} else if (dir == 0 && (tcp == FLOWC_TCP_TIME_WAIT || tcp == FLOWC_TCP_CLOSE)) {
			/* The port pair is reused: the old connection (found under
			 * s->key, dir 0) is over and this SYN starts a new one. */
			flowc_ct.delete(&s->key);
			flowc_ct_count(FLOWC_STATUS_CT_CLOSED);
			s->starts = FLOWC_TCP_SYN_SENT;
			return FLOWC_STATE_NEW;
		}
	} else if (kind == FLOWC_KIND_SYNACK) {
		if (dir == 1 && (tcp == FLOWC_TCP_SYN_SENT || tcp == FLOWC_TCP_SYN_RECV))
			after = FLOWC_TCP_SYN_RECV;
	} else if (tcp != FLOWC_TCP_SYN_SENT && tcp != FLOWC_TCP_CLOSE) {
		/* ACK or FIN past the handshake (only SYN+ACK or RST answer a SYN) */
		after = tcp;
		if (tcp == FLOWC_TCP_SYN_RECV && dir == 0)
			after = FLOWC_TCP_ESTABLISHED;
		if (kind == FLOWC_KIND_FIN) {
			fin_from |= 1 << dir;
			after = fin_from == 3 ? FLOWC_TCP_TIME_WAIT : FLOWC_TCP_FIN_WAIT;
		}
	}
	if (after == FLOWC_CT_NO_START)
		return FLOWC_STATE_INVALID; /* fits no step of the connection's state machine */
	return flowc_ct_touch(e, dir, now, after, fin_from, FLOWC_IPPROTO_TCP);
}

/* The embedded header of an ICMP error at off (the IP header and the first 8
 * bytes of its transport, RFC 792), as _key_of(inner) keys it, into s->key.
 * 0 when the error cannot be tied to a connection (the reference's
 * "embedded is None", a later fragment, ICMP that is not echo): a header cut
 * short, an unknown IP version, an IPv6 extension header other than one
 * fragment header (packets have none; see the README). */
static __always_inline int flowc_ct_inner_key(struct __sk_buff *skb, __u32 off,
					      struct flowc_ct_key *key)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 *h, *t;
	__u8 family, proto;
	__u32 need;

	__builtin_memset(key, 0, sizeof(*key));
	if (off > FLOWC_MAX_OFF)
		return 0;
	h = data + off;
	if ((void *)(h + 1) > data_end)
		return 0;
	if ((h[0] >> 4) == 4) {
		__u32 ihl = (h[0] & 0x0f) * 4;

		if ((void *)(h + 20) > data_end || ihl < 20)
			return 0;
		if (((((__u16)h[6] << 8) | h[7]) & 0x1fff) != 0)
			return 0; /* a later fragment: no ports */
		family = 4;
		proto = h[9];
		__builtin_memcpy(key->src, h + 12, 4);
		__builtin_memcpy(key->dst, h + 16, 4);
		off += ihl;
	} else if ((h[0] >> 4) == 6) {
		if ((void *)(h + 40) > data_end)
			return 0;
		family = 6;
		proto = h[6];
		__builtin_memcpy(key->src, h + 8, 16);
		__builtin_memcpy(key->dst, h + 24, 16);
		off += 40;
		if (proto == FLOWC_IPPROTO_FRAGMENT) {
			__u8 *ext = data + off;

			if ((void *)(ext + 8) > data_end)
				return 0;
			if (((((__u16)ext[2] << 8) | ext[3]) & 0xfff8) != 0)
				return 0; /* a later fragment */
			proto = ext[0];
			off += 8;
		}
		if (flowc_is_ext_header(proto))
			return 0;
	} else {
		return 0;
	}
	key->family = family;
	key->proto = proto;
	need = flowc_ct_port_proto(proto) ? 4 : flowc_ct_is_icmp(family, proto) ? 8 : 0;
	if (!need)
		return 1;
	if (off > FLOWC_MAX_OFF)
		return 0;
	t = data + off;
	if (need == 4) {
		if ((void *)(t + 4) > data_end)
			return 0;
		key->sport = ((__u16)t[0] << 8) | t[1];
		key->dport = ((__u16)t[2] << 8) | t[3];
		return 1;
	}
	if ((void *)(t + 8) > data_end)
		return 0;
	/* An embedded echo: the error is about the echo conversation, keyed as
	 * its request goes. Other ICMP is about nothing the table holds. */
	if (t[0] == flowc_ct_echo_request(family)) {
		key->sport = ((__u16)t[4] << 8) | t[5];
		return 1;
	}
	if (t[0] == flowc_ct_echo_reply(family)) {
		struct flowc_ct_key fwd = *key;

		fwd.sport = ((__u16)t[4] << 8) | t[5];
		flowc_ct_reverse(&fwd, key);
		return 1;
	}
	return 0;
}

/* _observe_icmp() */
static __always_inline __u8 flowc_ct_observe_icmp(struct __sk_buff *skb, const struct flowc_key *k,
						  __u32 l4_off, struct flowc_ct_scratch *s,
						  __u64 now)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct flowc_ct_entry *e;
	__u8 *icmp;
	__u32 dir;

	if (flowc_ct_icmp_error(k->family, k->icmp_type)) {
		if (!flowc_ct_inner_key(skb, l4_off + 8, &s->key))
			return FLOWC_STATE_INVALID;
		e = flowc_ct_find(s, now, &dir);
		return e ? FLOWC_STATE_RELATED : FLOWC_STATE_INVALID; /* related updates nothing */
	}
	if (k->icmp_type != flowc_ct_echo_request(k->family) &&
	    k->icmp_type != flowc_ct_echo_reply(k->family))
		return FLOWC_STATE_NEW; /* connectionless ICMP: decided alone, never stored */
	if (l4_off > FLOWC_MAX_OFF)
		return FLOWC_STATE_INVALID; /* unreachable: the parser read this header */
	icmp = data + l4_off;
	if ((void *)(icmp + 8) > data_end)
		return FLOWC_STATE_INVALID; /* unreachable: the parser read this header */
	__builtin_memset(&s->key, 0, sizeof(s->key));
	s->key.family = k->family;
	s->key.proto = k->ip_proto;
	flowc_ct_addresses(k, &s->key);
	s->key.sport = ((__u16)icmp[4] << 8) | icmp[5]; /* the echo identifier */
	s->swapped = 0; /* echo keys are not canonical */
	if (k->icmp_type == flowc_ct_echo_request(k->family)) {
		e = flowc_ct_live(&s->key, now);
		if (!e) {
			s->starts = FLOWC_TCP_NONE;
			return FLOWC_STATE_NEW;
		}
		return flowc_ct_touch(e, 0, now, e->tcp, e->fin_from, k->ip_proto);
	}
	flowc_ct_reverse(&s->key, &s->rkey);
	e = flowc_ct_live(&s->rkey, now);
	if (!e)
		return FLOWC_STATE_INVALID; /* echo reply to no echo request */
	return flowc_ct_touch(e, 1, now, e->tcp, e->fin_from, k->ip_proto);
}

/* ConnTracker.observe(): the packet's state before the policy decides,
 * updating the connection it belongs to; s->starts says what a commit stores. */
static __always_inline __u8 flowc_ct_observe(struct __sk_buff *skb, const struct flowc_key *k,
					     __u32 l4_off, struct flowc_ct_scratch *s, __u64 now)
{
	struct flowc_ct_entry *e;
	__u32 dir;

	s->starts = FLOWC_CT_NO_START;
	if (k->frag == FLOWC_FRAG_LATER)
		return FLOWC_STATE_NEW; /* no ports: no connection to find */
	if (flowc_ct_is_icmp(k->family, k->ip_proto))
		return flowc_ct_observe_icmp(skb, k, l4_off, s, now);
	flowc_ct_key_of(k, &s->key);
	e = flowc_ct_find(s, now, &dir);
	if (k->ip_proto == FLOWC_IPPROTO_TCP)
		return flowc_ct_observe_tcp(k, s, e, dir, now);
	if (!e) {
		s->starts = FLOWC_TCP_NONE;
		return FLOWC_STATE_NEW;
	}
	return flowc_ct_touch(e, dir, now, e->tcp, e->fin_from, k->ip_proto);
}

/* ConnTracker.commit() after a verdict other than drop for packet k at the
 * hook whose hook_id() is hook: 1 when the packet stored its connection, 0 when
 * it starts none, -1 when the table was full (counted untracked; the caller
 * applies on_full). */
static __always_inline int flowc_ct_commit(struct flowc_ct_scratch *s, const struct flowc_key *k,
					   __u64 now, __u32 hook)
{
	struct flowc_ct_entry e = {};
	int err;

	if (s->starts == FLOWC_CT_NO_START)
		return 0;
	e.tcp = s->starts;
	e.start_flags = k->ip_proto == FLOWC_IPPROTO_TCP ? k->tcp_flags : 0;
	e.hook = hook;
	e.created_ns = now;
	e.last_ns = now;
	e.packets_orig = 1;
	e.swapped = s->swapped;
	e.expires_ns = now + flowc_ct_timeout_ns(&e, s->key.proto);
	err = flowc_ct.insert(&s->key, &e);
	if (err == 0) {
		flowc_ct_count(FLOWC_STATUS_CT_COMMITS);
		return 1;
	}
	if (err == -EEXIST)
		return 0; /* another CPU committed the same connection first */
	flowc_ct_count(FLOWC_STATUS_CT_UNTRACKED);
	return -1;
}
