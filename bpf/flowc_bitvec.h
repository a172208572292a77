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

/* Index of the lowest set bit of a non-zero word: the population count of
 * the bits below it, computed without branches. The BPF instruction set has
 * no count-trailing-zeros, and a branchy bit search would hand the verifier
 * 64 separate known results to explore on every call. */
static __always_inline __u64 flowc_ctz64(__u64 x)
{
	__u64 v = (x & -x) - 1;

	v = v - ((v >> 1) & 0x5555555555555555ULL);
	v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (v * 0x0101010101010101ULL) >> 56;
}
