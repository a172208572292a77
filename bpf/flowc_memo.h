/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: the class-tuple memo in front of the bit-vector walk.
 *
 * The rule is a function of the packet's class in every field, so a walk's
 * result is kept per class tuple (an on-demand cross-product, as in RFC, built
 * only for the tuples traffic reaches). Direct-mapped and per CPU: one inlined
 * array read and a compare, where a hash map's lookup measured ~45 ns, and no
 * other CPU writes the entry a packet reads. The epoch is the config's bank
 * word, which the loader advances on every refill, so a tuple decided by an
 * older fill never answers for a newer one.
 *
 * Include after flowc_bitvec.h and after defining FLOWC_MEMO (1: compiled in,
 * 0: out; the generator decides by rule capacity) and FLOWC_MEMO_BITS (log2 of
 * the slots). At run time FLOWC_CONFIG_F_NO_MEMO switches a compiled-in memo
 * off. Pasted into the generated program, since it uses a map.
 */
#pragma once

#include "flowc_bitvec.h"

#if !defined(FLOWC_MEMO) || !defined(FLOWC_MEMO_BITS)
#error "define FLOWC_MEMO and FLOWC_MEMO_BITS before including flowc_memo.h"
#endif

/* One memo slot. 8 + 4 * FLOWC_N_FIELDS bytes, no padding. */
struct flowc_memo_entry {
	struct flowc_class_tuple tuple;
	__u32 rule_plus_one; /* 0: empty slot */
};

/* slot -> the last class tuple that hashed there and its rule (one slot when
 * the memo is compiled out) */
BPF_PERCPU_ARRAY(flowc_memo, struct flowc_memo_entry, FLOWC_MEMO ? 1 << FLOWC_MEMO_BITS : 1);

/* The tuple's slot, or 0 when the memo is compiled out or switched off. */
static __always_inline struct flowc_memo_entry *
flowc_memo_slot(const struct flowc_class_tuple *t, const struct flowc_config *cfg)
{
	__u64 hash = t->epoch;
	__u32 slot;

	if (!FLOWC_MEMO || (cfg->flags & FLOWC_CONFIG_F_NO_MEMO))
		return 0;
	/* Fibonacci hashing of the tuple: its top bits pick the slot. */
#pragma unroll
	for (int f = 0; f < FLOWC_N_FIELDS; f++)
		hash = (hash ^ t->cls[f]) * 0x9e3779b97f4a7c15ULL;
	slot = hash >> (64 - FLOWC_MEMO_BITS);
	return flowc_memo.lookup(&slot);
}

/* True when the slot holds this very tuple (so its rule decides). */
static __always_inline int flowc_memo_holds(const struct flowc_memo_entry *m,
					    const struct flowc_class_tuple *t)
{
	if (!m->rule_plus_one || m->tuple.epoch != t->epoch)
		return 0;
#pragma unroll
	for (int f = 0; f < FLOWC_N_FIELDS; f++)
		if (m->tuple.cls[f] != t->cls[f])
			return 0;
	return 1;
}

/* Remember the walk's answer for the tuple (nothing when there is no slot or
 * no answer). */
static __always_inline void flowc_memo_store(struct flowc_memo_entry *m,
					     const struct flowc_class_tuple *t, __s32 rule)
{
	if (!m || rule < 0)
		return;
	m->tuple = *t;
	m->rule_plus_one = rule + 1;
}
