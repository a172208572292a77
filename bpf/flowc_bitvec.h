/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: rule bit vectors and the first-set-bit search.
 *
 * Include after defining FLOWC_N_WORDS (64-bit words per vector, one bit per
 * rule) and FLOWC_N_SUMMARY (words of the summary, one bit per word that is
 * non-zero). The loader fills the vectors; backends/bpf_tables.py documents
 * the layout and holds the same search in Python.
 */
#pragma once

#include "flowc_common.h"

#ifndef FLOWC_N_WORDS
#error "define FLOWC_N_WORDS before including flowc_bitvec.h"
#endif

struct flowc_bitvec {
	__u64 summary[FLOWC_N_SUMMARY];
	__u64 words[FLOWC_N_WORDS];
};

/* Index of the lowest set bit of a non-zero word. The BPF instruction set has
 * no count-trailing-zeros, so this is a six-step binary search. */
static __always_inline __u32 flowc_ctz64(__u64 x)
{
	__u32 n = 0;

	if (!(x & 0xffffffffULL)) {
		n += 32;
		x >>= 32;
	}
	if (!(x & 0xffffULL)) {
		n += 16;
		x >>= 16;
	}
	if (!(x & 0xffULL)) {
		n += 8;
		x >>= 8;
	}
	if (!(x & 0xfULL)) {
		n += 4;
		x >>= 4;
	}
	if (!(x & 0x3ULL)) {
		n += 2;
		x >>= 2;
	}
	if (!(x & 0x1ULL))
		n += 1;
	return n;
}
