/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: packet parsing into a struct flowc_key.
 *
 * Ethernet, up to two 802.1Q/802.1ad tags (or the tag the driver moved into
 * skb->vlan_tci), IPv4 (with options), IPv6 (skipping up to
 * FLOWC_MAX_EXT_HEADERS extension headers), TCP, UDP, SCTP, ICMP, ICMPv6.
 * Every read is bounds-checked against data_end; a packet whose IP or
 * transport header is cut short is FLOWC_PARSE_MALFORMED, never read past.
 */
#pragma once

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include "flowc_common.h"

#define FLOWC_ETH_P_8021Q  0x8100
#define FLOWC_ETH_P_8021AD 0x88A8
#define FLOWC_MAX_EXT_HEADERS 4

#define FLOWC_IPPROTO_HOPOPTS  0
#define FLOWC_IPPROTO_ROUTING  43
#define FLOWC_IPPROTO_FRAGMENT 44
#define FLOWC_IPPROTO_DSTOPTS  60
#define FLOWC_IPPROTO_ICMPV6   58
#define FLOWC_IPPROTO_SCTP     132

/* Bytes of transport header flowc reads, per protocol (0: nothing). */
static __always_inline __u32 flowc_l4_need(__u8 family, __u8 proto)
{
	if (proto == IPPROTO_TCP)
		return 14; /* ports and the flags byte at offset 13 */
	if (proto == IPPROTO_UDP || proto == FLOWC_IPPROTO_SCTP)
		return 4;
	if ((family == 4 && proto == IPPROTO_ICMP) ||
	    (family == 6 && proto == FLOWC_IPPROTO_ICMPV6))
		return 2;
	return 0;
}

static __always_inline int flowc_parse_l4(void *data, void *data_end, __u32 off,
					  struct flowc_key *k)
{
	__u32 need = flowc_l4_need(k->family, k->ip_proto);
	__u8 *l4;

	if (!need)
		return FLOWC_PARSE_OK;
	if (off > 1024) /* keeps the offset bounded for the verifier */
		return FLOWC_PARSE_MALFORMED;
	l4 = data + off;
	if (need == 2) {
		if ((void *)(l4 + 2) > data_end)
			return FLOWC_PARSE_MALFORMED;
		k->icmp_type = l4[0];
		k->icmp_code = l4[1];
		return FLOWC_PARSE_OK;
	}
	if ((void *)(l4 + 4) > data_end)
		return FLOWC_PARSE_MALFORMED;
	k->sport = ((__u16)l4[0] << 8) | l4[1];
	k->dport = ((__u16)l4[2] << 8) | l4[3];
	if (need == 14) {
		if ((void *)(l4 + 14) > data_end)
			return FLOWC_PARSE_MALFORMED;
		k->tcp_flags = l4[13];
	}
	return FLOWC_PARSE_OK;
}

static __always_inline int flowc_parse(struct __sk_buff *skb, struct flowc_key *k)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(struct ethhdr);
	__u16 proto;

	__builtin_memset(k, 0, sizeof(*k));
	if ((void *)(eth + 1) > data_end)
		return FLOWC_PARSE_MALFORMED;
	proto = bpf_ntohs(eth->h_proto);
	if (skb->vlan_present) {
		k->vlan_tagged = 1;
		k->vlan_id = skb->vlan_tci & 0x0fff;
	}
#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u8 *tag;

		if (proto != FLOWC_ETH_P_8021Q && proto != FLOWC_ETH_P_8021AD)
			break;
		tag = data + off;
		if ((void *)(tag + 4) > data_end)
			return FLOWC_PARSE_MALFORMED;
		if (!k->vlan_tagged) {
			k->vlan_tagged = 1;
			k->vlan_id = (((__u16)tag[0] << 8) | tag[1]) & 0x0fff;
		}
		proto = ((__u16)tag[2] << 8) | tag[3];
		off += 4;
	}

	if (proto == ETH_P_IP) {
		struct iphdr *ip = data + off;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end)
			return FLOWC_PARSE_MALFORMED;
		ihl = ip->ihl * 4;
		if (ip->version != 4 || ihl < sizeof(*ip))
			return FLOWC_PARSE_MALFORMED;
		if (data + off + ihl > data_end)
			return FLOWC_PARSE_MALFORMED;
		k->family = 4;
		k->dscp = ip->tos >> 2;
		k->ip_proto = ip->protocol;
		k->ip4_src = ip->saddr;
		k->ip4_dst = ip->daddr;
		/* Non-first fragments carry no transport header: ports etc. stay 0. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return FLOWC_PARSE_OK;
		return flowc_parse_l4(data, data_end, off + ihl, k);
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = data + off;
		__u8 next;

		if ((void *)(ip6 + 1) > data_end)
			return FLOWC_PARSE_MALFORMED;
		if (ip6->version != 6)
			return FLOWC_PARSE_MALFORMED;
		k->family = 6;
		k->dscp = ((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4)) >> 2;
		__builtin_memcpy(k->ip6_src, &ip6->saddr, 16);
		__builtin_memcpy(k->ip6_dst, &ip6->daddr, 16);
		next = ip6->nexthdr;
		off += sizeof(*ip6);
#pragma unroll
		for (int i = 0; i < FLOWC_MAX_EXT_HEADERS; i++) {
			__u8 *ext;

			if (next != FLOWC_IPPROTO_HOPOPTS && next != FLOWC_IPPROTO_ROUTING &&
			    next != FLOWC_IPPROTO_DSTOPTS && next != FLOWC_IPPROTO_FRAGMENT)
				break;
			if (off > 512)
				return FLOWC_PARSE_MALFORMED;
			ext = data + off;
			if ((void *)(ext + 8) > data_end)
				return FLOWC_PARSE_MALFORMED;
			if (next == FLOWC_IPPROTO_FRAGMENT) {
				next = ext[0];
				/* offset field (13 bits) non-zero: not the first fragment */
				if (((((__u16)ext[2] << 8) | ext[3]) & 0xfff8) != 0) {
					k->ip_proto = next;
					return FLOWC_PARSE_OK;
				}
				off += 8;
			} else {
				next = ext[0];
				off += ((__u32)ext[1] + 1) * 8;
			}
		}
		if (next == FLOWC_IPPROTO_HOPOPTS || next == FLOWC_IPPROTO_ROUTING ||
		    next == FLOWC_IPPROTO_DSTOPTS || next == FLOWC_IPPROTO_FRAGMENT)
			return FLOWC_PARSE_MALFORMED; /* more extension headers than we walk */
		k->ip_proto = next;
		return flowc_parse_l4(data, data_end, off, k);
	}
	return FLOWC_PARSE_NOT_IP;
}
