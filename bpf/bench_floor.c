// SPDX-License-Identifier: GPL-2.0
/* The floor of a BPF_PROG_TEST_RUN measurement: a tc program that does
 * nothing. bench/bpf_bench.py runs it next to the flowc programs so the cost of
 * the test-run loop itself (per repetition, on this machine) is known and can
 * be taken out of the comparison. */
#include <linux/types.h>

struct __sk_buff;

int flowc_floor(struct __sk_buff *skb)
{
	return 0;
}
