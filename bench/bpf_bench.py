"""Slow-path classification cost: ns/packet from BPF_PROG_TEST_RUN, bitvec vs chain.

For each policy size the same ClassBench-style policy (``fw`` seed family) is
compiled with both strategies, loaded through the real verifier, and run on
the same packets (a Zipf trace over the policy's rules) with a large repeat
count; the kernel reports the mean time per run. Times include the whole
program (parse, classify, counters), as a packet would pay it. Ratios are
within this run, so machine noise mostly cancels. Needs root.

Targets: bitvec at 10,000 rules no more than 2x its 10-rule cost; at 1,000
rules at least 10x faster than the chain.

    python -m bench.bpf_bench            # prints a table, saves bench/results/bpf.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from backends.bpf_c import lower
from bench.workloads import generate_rules, policy_text, trace_lines
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from runtime.bpf_loader import BpfLoadError, SlowPath
from runtime.frames import frame
from runtime.testrun import test_run

RESULTS = Path(__file__).resolve().parent / "results"


def measure(size: int, strategy: str, packets: int, repeat: int) -> tuple[str, float | None, float]:
    """(status, mean ns/packet or None, load seconds) for one size and strategy."""
    result = compile_source(policy_text("fw", size, seed=11), f"fw{size}.fw")
    assert result.program is not None
    policy = result.program.policies[0]
    rules = generate_rules("fw", size, seed=11)
    frames = [
        frame(parse_packet(line))
        for line in trace_lines(rules, flows=packets, packets=packets, skew=0.0, seed=11)
    ]
    start = time.perf_counter()
    try:
        slow_path = SlowPath(lower(policy, strategy), ifindex_of=lambda _dev: 1)
    except BpfLoadError as exc:
        # bcc's message names the kernel's errno (E2BIG: over the 1M-instruction limit).
        reason = exc.message.split(":")[-1].strip()
        return f"rejected by the {exc.stage} ({reason})", None, time.perf_counter() - start
    load_s = time.perf_counter() - start
    try:
        times = [test_run(slow_path.fd, f, repeat=repeat).duration_ns for f in frames]
    finally:
        slow_path.close()
    return "ok", statistics.mean(times), load_s


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print/save the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.bpf_bench")
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--packets", type=int, default=64, help="distinct packets per policy")
    parser.add_argument("--repeat", type=int, default=20000, help="test-run repetitions each")
    parser.add_argument("--strategies", default="bitvec,chain")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    cost: dict[tuple[int, str], float] = {}
    for size in sizes:
        for strategy in args.strategies.split(","):
            status, ns, load_s = measure(size, strategy, args.packets, args.repeat)
            if ns is not None:
                cost[(size, strategy)] = ns
            rows.append((size, strategy, status, ns, load_s))
            print(f"  {size:>6} {strategy:6} {status} {ns if ns else ''}", file=sys.stderr)
    base = cost.get((sizes[0], "bitvec"))
    lines = [
        "| rules | strategy | verifier | ns/packet | vs bitvec@"
        + str(sizes[0])
        + " | chain/bitvec "
        "| compile+load (s) |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for size, strategy, status, ns, load_s in rows:
        rel = f"{ns / base:.2f}x" if ns is not None and base else "-"
        speedup = "-"
        if strategy == "chain" and ns is not None and (size, "bitvec") in cost:
            speedup = f"{ns / cost[(size, 'bitvec')]:.1f}x"
        shown = f"{ns:.0f}" if ns is not None else "-"
        lines.append(
            f"| {size} | {strategy} | {status} | {shown} | {rel} | {speedup} | {load_s:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bpf.md").write_text(
        "# Slow-path classification benchmark\n\n"
        f"`python -m bench.bpf_bench` ({args.packets} packets per policy, "
        f"{args.repeat} BPF_PROG_TEST_RUN repetitions each; kernel-reported mean).\n\n"
        + table
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
