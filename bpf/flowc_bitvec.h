/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: rule bit vectors, the class tuple, and the walk that finds
 * the first rule set in every used field's vector.
 *
 * Include after defining FLOWC_N_WORDS (64-bit words per vector, one bit per
 * rule), FLOWC_N_SUMMARY (words of the summary, one bit per word that is
 * non-zero) and FLOWC_N_FIELDS (fields the classifier looks up). The loader
 * fills the vectors; backends/bpf/tables.py documents the layout and holds the
 * same search in Python. Nothing here touches a map, so this header is
 * included, not pasted (bcc rewrites map calls only in the main file).
 */
#pragma once

#include "flowc_common.h"

#if !defined(FLOWC_N_WORDS) || !defined(FLOWC_N_SUMMARY) || !defined(FLOWC_N_FIELDS) || \
	!defined(FLOWC_GRID)
#error "define FLOWC_N_WORDS, FLOWC_N_SUMMARY, FLOWC_N_FIELDS and FLOWC_GRID before including flowc_bitvec.h"
#endif

/* A class lookup returns the class in the low FLOWC_GRID_SHIFT bits and, on
 * the two grid fields, the field's grid group above them. */
#define FLOWC_GRID_SHIFT 20
#define FLOWC_CLASS_MASK ((1U << FLOWC_GRID_SHIFT) - 1)

/* One class's rules: bit r of words[] is rule r; bit i of summary[s] says
 * words[s * 64 + i] is non-zero. 8 * (FLOWC_N_SUMMARY + FLOWC_N_WORDS) bytes. */
struct flowc_bitvec {
	__u64 summary[FLOWC_N_SUMMARY];
	__u64 words[FLOWC_N_WORDS];
};

/* One cell of the summary grid (FLOWC_GRID 1): bit i of summary[s] says some
 * rule of the cell's row group and some rule of its column group share word
 * s * 64 + i, so no other word can hold a rule matching both fields
 * (backends/bpf/tables.py, build_grid). 8 * FLOWC_N_SUMMARY bytes. */
struct flowc_grid_cell {
	__u64 summary[FLOWC_N_SUMMARY];
};

/* The packet's lookup value (class, and grid group) in every used field (in the generated program's field
 * order), and the fill it was computed against; the memo's key.
 * 4 + 4 * FLOWC_N_FIELDS bytes, no padding. */
struct flowc_class_tuple {
	__u32 epoch;                /* flowc_config.bank when classified */
	__u32 cls[FLOWC_N_FIELDS];
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

/* The first rule whose bit is set in all FLOWC_N_FIELDS vectors of v, or -1;
 * with FLOWC_GRID, only words the packet's grid cell allows are tried.
 *
 * The summaries say which words can hold a common rule. Most such words do
 * not (each field has some rule in the word, but not the same one), so the
 * word test stops at the first zero; the caller orders v by selectivity (the
 * field with the most classes first) to make that zero come early. */
static __always_inline __s32 flowc_bitvec_first(const struct flowc_bitvec *const *v,
						 const struct flowc_grid_cell *cell)
{
	for (__u32 s = 0; s < FLOWC_N_SUMMARY; s++) {
		__u64 summary = v[0]->summary[s];

		if (FLOWC_GRID)
			summary &= cell->summary[s];

#pragma unroll
		for (int f = 1; f < FLOWC_N_FIELDS; f++)
			summary &= v[f]->summary[s];
		for (__u32 i = 0; i < 64 && summary; i++) {
			__u64 w = s * 64 + flowc_ctz64(summary);
			__u64 word;

			/* Keep w in one register for the check and the index below, so the
			 * verifier sees the bound the check establishes. */
			asm volatile("" : "+r"(w));
			if (w >= FLOWC_N_WORDS)
				break;
			word = v[0]->words[w];
#pragma unroll
			for (int f = 1; f < FLOWC_N_FIELDS; f++)
				if (word)
					word &= v[f]->words[w];
			if (word)
				return w * 64 + flowc_ctz64(word);
			summary &= summary - 1;
		}
	}
	return -1;
}

/* Index into bank `bank` of a DIR-16-8-8 level of `size` entries: the chunk
 * that an entry of the level above names, and the address byte that picks the
 * entry within it (backends/bpf/tables.py, dir_levels). */
static __always_inline __u32 flowc_dir_next(__u32 bank, __u32 size, __u32 entry, __u32 byte)
{
	return bank * size + (((entry & ~FLOWC_DIR_CHUNK) << 8) | (byte & 0xff));
}
