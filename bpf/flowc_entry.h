/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: what the tc/tcx entry point does. Include last, after
 * the generated flowc_classify() and the maps it uses, and after defining the
 * attach point's verdicts (backends/targets.py, BpfTarget): FLOWC_VERDICT_ALLOW
 * (hand the packet on) and FLOWC_VERDICT_DROP. */
#pragma once

#include "flowc_common.h"

#if !defined(FLOWC_VERDICT_ALLOW) || !defined(FLOWC_VERDICT_DROP)
#error "define the attach point's FLOWC_VERDICT_ALLOW and FLOWC_VERDICT_DROP"
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
	__s32 found;
	int status;

	skb->cb[0] = 0;
	cfg = flowc_config.lookup(&zero);
	k = flowc_scratch.lookup(&zero);
	if (!cfg || !k)
		return FLOWC_VERDICT_DROP;
	bank = cfg->bank & 1;
	status = flowc_parse(skb, k);
	if (status == FLOWC_PARSE_NOT_IP) {
		flowc_count(FLOWC_STATUS_NOT_IP);
		return FLOWC_VERDICT_ALLOW;
	}
	if (status != FLOWC_PARSE_OK) {
		flowc_count(FLOWC_STATUS_MALFORMED);
		return FLOWC_VERDICT_DROP;
	}
	found = flowc_classify(k, cfg);
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
