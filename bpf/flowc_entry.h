/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: what the tc/tcx entry point does. Include last, after
 * the generated flowc_classify() and the maps it uses, and after defining the
 * attach point's verdicts (backends/targets.py, BpfTarget): FLOWC_VERDICT_ALLOW
 * (hand the packet on) and FLOWC_VERDICT_DROP, and FLOWC_CT (1: connection
 * tracking compiled in, bpf/flowc_ct.h pasted before this file; 0: every
 * packet is new and nothing is tracked). */
#pragma once

#include "flowc_common.h"

#if !defined(FLOWC_VERDICT_ALLOW) || !defined(FLOWC_VERDICT_DROP) || !defined(FLOWC_CT)
#error "define the attach point's FLOWC_VERDICT_ALLOW and FLOWC_VERDICT_DROP, and FLOWC_CT"
#endif

static __always_inline void flowc_count(__u32 status)
{
	__u64 *count = flowc_status.lookup(&status);

	if (count)
		*count += 1;
}

/* Report a flow to the agent, at most once per dedup interval per flow. */
static __always_inline void flowc_report(const struct flowc_key *k, __u32 rule,
					 const struct flowc_config *cfg)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	struct flowc_event *ev;
	__u64 *seen = flowc_reported.lookup((struct flowc_key *)k);

	if (seen && now - *seen < cfg->dedup_ns)
		return;
	ev = flowc_events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		flowc_count(FLOWC_STATUS_EVENTS_LOST);
		return;
	}
	__builtin_memcpy(&ev->key, k, sizeof(*k));
	ev->rule = rule;
	ev->generation = cfg->generation;
	ev->ts_ns = now;
	flowc_events.ringbuf_submit(ev, 0);
	flowc_reported.update((struct flowc_key *)k, &now);
	flowc_count(FLOWC_STATUS_EVENTS_SENT);
}

/* The body of the entry point (ingress or egress); the generated file defines
 * flowc_tc() around it, because bcc only turns functions of the main file into
 * programs. A redirect returns what bpf_redirect() says, the attach point's
 * FLOWC_VERDICT_REDIRECT. */
static __always_inline int flowc_run(struct __sk_buff *skb)
{
	struct flowc_key *k;
	struct flowc_action *action;
	struct flowc_rule_stats *stats;
	struct flowc_config *cfg;
	__u32 zero = 0;
	__u32 bank, slot;
	__u32 rule;
	__u32 l4_off;
	__s32 found;
	int status;
#if FLOWC_CT
	struct flowc_ct_scratch *ct = flowc_ct_work.lookup(&zero);
	__u64 now;
#endif

	skb->cb[0] = 0;
	skb->cb[1] = 0;
	cfg = flowc_config.lookup(&zero);
	k = flowc_scratch.lookup(&zero);
	if (!cfg || !k)
		return FLOWC_VERDICT_DROP;
	bank = cfg->bank & 1;
	status = flowc_parse(skb, k, &l4_off);
	if (status == FLOWC_PARSE_NOT_IP) {
		flowc_count(FLOWC_STATUS_NOT_IP);
		return FLOWC_VERDICT_ALLOW;
	}
	if (status != FLOWC_PARSE_OK) {
		flowc_count(FLOWC_STATUS_MALFORMED);
		if (status == FLOWC_PARSE_MALFORMED_L2)
			flowc_count(FLOWC_STATUS_MALFORMED_L2);
		else if (status == FLOWC_PARSE_MALFORMED_L3)
			flowc_count(FLOWC_STATUS_MALFORMED_L3);
		else
			flowc_count(FLOWC_STATUS_MALFORMED_L4);
		return FLOWC_VERDICT_DROP;
	}
#if FLOWC_CT
	/* Observe before deciding (ir/conntrack.py step 1), whatever the verdict. */
	if (!ct)
		return FLOWC_VERDICT_DROP;
	now = flowc_ct_now(cfg);
	if (cfg->flags & FLOWC_CONFIG_F_CT_GIVEN) {
		k->state = (cfg->flags >> FLOWC_CONFIG_CT_GIVEN_SHIFT) & 3;
		/* Commit nothing: the scratch still holds the last observed
		 * packet's tuple, which a commit would otherwise store. */
		ct->starts = FLOWC_CT_NO_START;
	} else {
		k->state = flowc_ct_observe(skb, k, l4_off, ct, now);
	}
	flowc_count(FLOWC_STATUS_CT_NEW + k->state);
	skb->cb[1] = k->state + 1; /* the state, for BPF_PROG_TEST_RUN and programs after us */
	/* The established fast lane: when one rule decides every established
	 * packet (backends/bpf/conntrack.py established_rule), the loader puts it
	 * in cfg->ct_fast and established packets skip the classifier. */
	if (k->state == FLOWC_STATE_ESTABLISHED && cfg->ct_fast)
		found = cfg->ct_fast - 1;
	else
		found = flowc_classify(k, cfg);
#else
	found = flowc_classify(k, cfg);
#endif
	if (found < 0 || found >= FLOWC_N_RULES) {
		flowc_count(FLOWC_STATUS_NO_RULE);
		return FLOWC_VERDICT_DROP; /* fail closed */
	}
	rule = found;
	slot = bank * FLOWC_N_RULES + rule;
	action = flowc_actions.lookup(&slot);
	if (!action) {
		flowc_count(FLOWC_STATUS_NO_RULE);
		return FLOWC_VERDICT_DROP;
	}
	/* The deciding rule, for BPF_PROG_TEST_RUN and for programs after us. */
	skb->cb[0] = rule + 1;
	stats = flowc_rule_stats.lookup(&rule);
	if (stats) {
		stats->packets += 1;
		stats->bytes += skb->len;
		/* Tick resolution is plenty for "last hit", and the verifier inlines
		 * jiffies into a load where any ktime helper is a call (~20 ns). */
		stats->last_jiffies = bpf_jiffies64();
	}
	if (cfg->flags & FLOWC_CONFIG_F_EVENTS)
		flowc_report(k, rule, cfg);
#if FLOWC_CT
	/* Step 2: a verdict other than drop commits what a new packet starts; a
	 * full table leaves it untracked, and on_full drop drops it. */
	if (action->kind != FLOWC_ACTION_DROP && !(cfg->flags & FLOWC_CONFIG_F_CT_GIVEN)) {
		int committed = flowc_ct_commit(ct, k, now, cfg->ct_hook);

		if (committed)
			skb->cb[1] |= committed > 0 ? FLOWC_CB_COMMITTED : FLOWC_CB_UNTRACKED;
		if (committed < 0 && FLOWC_CT_ON_FULL_DROP)
			return FLOWC_VERDICT_DROP;
	}
#endif

	switch (action->kind) {
	case FLOWC_ACTION_ALLOW:
		return FLOWC_VERDICT_ALLOW;
	case FLOWC_ACTION_REDIRECT:
		if (action->flags & FLOWC_ACTION_F_PEER)
			return bpf_redirect_peer(action->ifindex, 0);
		return bpf_redirect(action->ifindex, 0);
	case FLOWC_ACTION_MIRROR:
		bpf_clone_redirect(skb, action->ifindex, 0);
		return FLOWC_VERDICT_ALLOW;
	case FLOWC_ACTION_MARK:
		skb->mark = action->mark;
		return FLOWC_VERDICT_ALLOW;
	default:
		return FLOWC_VERDICT_DROP;
	}
}
