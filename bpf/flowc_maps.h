/* SPDX-License-Identifier: GPL-2.0 */
/* flowc BPF runtime: the maps every flowc program has, whatever its policy.
 * Include after defining FLOWC_N_RULES (the rule capacity). */
#pragma once

#include "flowc_common.h"

/* bank * FLOWC_N_RULES + rule id -> what to do */
BPF_ARRAY(flowc_actions, struct flowc_action, FLOWC_BANKS * FLOWC_N_RULES);
/* rule id -> packets, bytes, last hit (per CPU, summed by the agent) */
BPF_PERCPU_ARRAY(flowc_rule_stats, struct flowc_rule_stats, FLOWC_N_RULES);
/* FLOWC_STATUS_* -> count */
BPF_PERCPU_ARRAY(flowc_status, __u64, FLOWC_STATUS_COUNT);
/* one entry: generation, flags, dedup interval */
BPF_ARRAY(flowc_config, struct flowc_config, 1);
/* miss events for the agent */
BPF_RINGBUF_OUTPUT(flowc_events, 64);
/* Where the parser writes the key. Kept in a map, not on the stack, on
 * purpose: the verifier tracks stack contents exactly, so each parse path
 * (VLAN tags, IPv4/IPv6, extension headers, transports) would reach the
 * classifier with a different known key and be verified separately; values
 * in a map are opaque to it, so all paths merge into one state there. */
BPF_PERCPU_ARRAY(flowc_scratch, struct flowc_key, 1);
/* flows reported recently, so one flow does not flood the ring buffer */
BPF_TABLE("lru_hash", struct flowc_key, __u64, flowc_reported, 65536);
