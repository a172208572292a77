/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: packet parsing into a struct flowc_key.
 *
 * The slow path reads a frame where and as far as the kernel's flow dissector
 * does for cls_flower (README, "Frames the IR does not describe"; the table
 * is FRAMES.md), so both datapaths see the same fields; verify/frames.py
 * parse_frame() is the reference of this file, line by line.
 *
 * Ethernet, up to two 802.1Q/802.1ad tags (the outermost VID; or the tag the
 * driver moved into skb->vlan_tci), IPv4 (options skipped; the version nibble
 * is not checked, as the dissector does not), IPv6 (walking up to
 * FLOWC_MAX_EXT_HEADERS extension headers), fragments (flowc_key.frag; a later
 * fragment has no transport header), TCP, UDP, SCTP, ICMP, ICMPv6. Every read
 * is bounds-checked against data_end; a frame cut short where flowc must read
 * is FLOWC_PARSE_MALFORMED_L2/L3/L4 by the layer, never read past.
 */
#pragma once

/* The uapi headers, not <linux/ip.h> and friends: with bcc's include path those
 * name the kernel's internal headers, which pull in skbuff.h and most of
 * include/linux (about 2,000 header opens), and clang's parse of them was three
 * quarters of every compile (3.4 s of a small slow path's 4.5 s here; minutes
 * under the guest tier's emulated CPU). Only struct ethhdr, iphdr and ipv6hdr
 * come from them; the protocol numbers are IANA's, written out below rather
 * than taken from <linux/in.h>, which pulls in linux/socket.h. */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include "flowc_common.h"

#define FLOWC_ETH_P_8021Q  0x8100
#define FLOWC_ETH_P_8021AD 0x88A8
/* One more than the dissector's MAX_IPV6_EXT_HDRS_COUNT (15): whatever chain
 * the dissector walks, the slow path walks too. */
#define FLOWC_MAX_EXT_HEADERS 16
/* Bound on header offsets, for the verifier (packet offsets must stay below
 * 64 KiB): unreachable by a frame, whose offsets stay below 14 + 8 + 40 + 16 *
 * 2048 bytes of extension headers. */
#define FLOWC_MAX_OFF 0xC000

#define FLOWC_IPPROTO_HOPOPTS  0
#define FLOWC_IPPROTO_ICMP     1
#define FLOWC_IPPROTO_TCP      6
#define FLOWC_IPPROTO_UDP      17
#define FLOWC_IPPROTO_ROUTING  43
#define FLOWC_IPPROTO_FRAGMENT 44
#define FLOWC_IPPROTO_DSTOPTS  60
#define FLOWC_IPPROTO_ICMPV6   58
#define FLOWC_IPPROTO_SCTP     132

/* Bytes of transport header flowc reads, per protocol (0: nothing): the whole
 * fixed TCP header (ports, flags at 13, data offset at 12), the ports of UDP
 * and SCTP, struct icmphdr (the dissector reads all 8 bytes of it). */
static __always_inline __u32 flowc_l4_need(__u8 family, __u8 proto)
{
	if (proto == FLOWC_IPPROTO_TCP)
		return 20;
	if (proto == FLOWC_IPPROTO_UDP || proto == FLOWC_IPPROTO_SCTP)
		return 4;
	if ((family == 4 && proto == FLOWC_IPPROTO_ICMP) ||
	    (family == 6 && proto == FLOWC_IPPROTO_ICMPV6))
		return 8;
	return 0;
}

static __always_inline int flowc_parse_l4(void *data, void *data_end, __u32 off,
					  struct flowc_key *k)
{
	__u32 need = flowc_l4_need(k->family, k->ip_proto);
	__u8 *l4;

	if (!need)
		return FLOWC_PARSE_OK;
	if (off > FLOWC_MAX_OFF)
		return FLOWC_PARSE_MALFORMED_L4;
	l4 = data + off;
	if (need == 8) {
		if ((void *)(l4 + 8) > data_end)
			return FLOWC_PARSE_MALFORMED_L4;
		k->icmp_type = l4[0];
		k->icmp_code = l4[1];
		return FLOWC_PARSE_OK;
	}
	if ((void *)(l4 + 4) > data_end)
		return FLOWC_PARSE_MALFORMED_L4;
	if (need == 20) {
		if ((void *)(l4 + 20) > data_end)
			return FLOWC_PARSE_MALFORMED_L4;
		if ((l4[12] >> 4) < 5) /* data offset shorter than the fixed header */
			return FLOWC_PARSE_MALFORMED_L4;
		k->tcp_flags = l4[13];
	}
	k->sport = ((__u16)l4[0] << 8) | l4[1];
	k->dport = ((__u16)l4[2] << 8) | l4[3];
	return FLOWC_PARSE_OK;
}

static __always_inline int flowc_is_ext_header(__u8 next)
{
	return next == FLOWC_IPPROTO_HOPOPTS || next == FLOWC_IPPROTO_ROUTING ||
	       next == FLOWC_IPPROTO_DSTOPTS || next == FLOWC_IPPROTO_FRAGMENT;
}

/* Parse the frame into *k; *l4_off is where the transport header starts (0 when
 * the parser did not get that far: later fragments, non-IP), for the
 * connection tracker's ICMP reads (bpf/flowc_ct.h). */
static __always_inline int flowc_parse(struct __sk_buff *skb, struct flowc_key *k,
				       __u32 *l4_off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(struct ethhdr);
	__u32 tags = 0;
	__u16 proto;

	__builtin_memset(k, 0, sizeof(*k));
	*l4_off = 0;
	if ((void *)(eth + 1) > data_end)
		return FLOWC_PARSE_MALFORMED_L2;
	proto = bpf_ntohs(eth->h_proto);
	if (skb->vlan_present) {
		k->vlan_tagged = 1;
		k->vlan_id = skb->vlan_tci & 0x0fff;
		tags = 1; /* the receive path took the outer tag out of the frame */
	}
	/* Two tags at most, wherever the outer one is: a frame is parsed the same
	 * whether or not the driver or skb_vlan_untag() moved its tag out. */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u8 *tag;

		if (tags >= 2 || (proto != FLOWC_ETH_P_8021Q && proto != FLOWC_ETH_P_8021AD))
			break;
		tag = data + off;
		if ((void *)(tag + 4) > data_end)
			return FLOWC_PARSE_MALFORMED_L2;
		if (!k->vlan_tagged) {
			k->vlan_tagged = 1;
			k->vlan_id = (((__u16)tag[0] << 8) | tag[1]) & 0x0fff;
		}
		proto = ((__u16)tag[2] << 8) | tag[3];
		off += 4;
		tags++;
	}

	if (proto == ETH_P_IP) {
		struct iphdr *ip = data + off;
		__u32 ihl;
		__u16 frag_off;

		if ((void *)(ip + 1) > data_end)
			return FLOWC_PARSE_MALFORMED_L3;
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return FLOWC_PARSE_MALFORMED_L3;
		k->family = 4;
		k->dscp = ip->tos >> 2;
		k->ip_proto = ip->protocol;
		k->ip4_src = ip->saddr;
		k->ip4_dst = ip->daddr;
		frag_off = bpf_ntohs(ip->frag_off);
		if (frag_off & 0x1fff) {
			k->frag = FLOWC_FRAG_LATER; /* no transport header */
			return FLOWC_PARSE_OK;
		}
		if (frag_off & 0x2000) /* MF */
			k->frag = FLOWC_FRAG_FIRST;
		/* Options need not fit: only the transport read can fail on them. */
		*l4_off = off + ihl;
		return flowc_parse_l4(data, data_end, off + ihl, k);
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = data + off;
		__u8 next;

		if ((void *)(ip6 + 1) > data_end)
			return FLOWC_PARSE_MALFORMED_L3;
		k->family = 6;
		k->dscp = ((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4)) >> 2;
		__builtin_memcpy(k->ip6_src, &ip6->saddr, 16);
		__builtin_memcpy(k->ip6_dst, &ip6->daddr, 16);
		next = ip6->nexthdr;
		off += sizeof(*ip6);
#pragma unroll
		for (int i = 0; i < FLOWC_MAX_EXT_HEADERS; i++) {
			__u8 *ext;
			__u32 len;

			if (!flowc_is_ext_header(next))
				break;
			if (off > FLOWC_MAX_OFF)
				return FLOWC_PARSE_MALFORMED_L3;
			ext = data + off;
			if ((void *)(ext + 8) > data_end)
				return FLOWC_PARSE_MALFORMED_L3;
			if (next == FLOWC_IPPROTO_FRAGMENT) {
				/* offset field (13 bits) non-zero: a later fragment */
				if (((((__u16)ext[2] << 8) | ext[3]) & 0xfff8) != 0) {
					k->frag = FLOWC_FRAG_LATER;
					k->ip_proto = ext[0];
					return FLOWC_PARSE_OK;
				}
				k->frag = FLOWC_FRAG_FIRST; /* atomic fragments too */
				len = 8;
			} else {
				len = ((__u32)ext[1] + 1) * 8;
			}
			next = ext[0];
			off += len;
			/* The whole extension header must be there. */
			if (off > FLOWC_MAX_OFF || data + off > data_end)
				return FLOWC_PARSE_MALFORMED_L3;
		}
		if (flowc_is_ext_header(next))
			return FLOWC_PARSE_MALFORMED_L3; /* more extension headers than we walk */
		k->ip_proto = next;
		*l4_off = off;
		return flowc_parse_l4(data, data_end, off, k);
	}
	return FLOWC_PARSE_NOT_IP;
}
