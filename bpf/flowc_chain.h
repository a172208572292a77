/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: helpers of the chain classifier (one test per rule).
 *
 * Every test reads the key afresh (volatile): if values stayed in registers
 * across rules, the verifier would carry what each failed test taught it
 * about them and explore exponentially many states.
 */
#pragma once

#include "flowc_common.h"

#define FLOWC_FIELD(f) (*(volatile typeof(k->f) *)&k->f)

/* An IPv4 address in host order, for prefix tests. */
static __always_inline __u32 flowc_ip4(const volatile __u32 *p)
{
	return bpf_ntohl(*p);
}

/* A big-endian 64-bit half of an IPv6 address, for prefix tests. */
static __always_inline __u64 flowc_ip6_half(const volatile __u8 *p)
{
	__u64 v = 0;

#pragma unroll
	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}
