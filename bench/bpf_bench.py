"""Slow-path classification cost: ns/packet from BPF_PROG_TEST_RUN, bitvec vs chain.

For each policy size the same ClassBench-style policy (``fw`` seed family:
wildcard-heavy, the hardest of the three for bit vectors) is compiled with both
strategies and loaded through the real verifier; then every program runs the
same packets (one per rule drawn uniformly, so matches fall anywhere in the
list) with a large repeat count, and the kernel reports the mean time per run.

This machine is a VM on a shared host and its speed drifts by 2x within
minutes, so all programs are loaded first and measured in interleaved rounds
(the order rotating each round); each figure is the median over rounds, and
ratios compare programs measured minutes apart at most.

Rows:

* ``bitvec``: as loaded by default (the class-tuple memo is compiled in from
  ``MEMO_MIN_WORDS`` words up; repeated packets hit it after the first run).
* ``bitvec-walk``: the same program with the memo switched off: every packet
  pays the lookups and the bit-vector walk, as a packet of a new class tuple does.
* ``chain``: the first-match ``if`` chain.
* ``floor``: a program that returns at once: what a BPF_PROG_TEST_RUN
  repetition costs by itself. The ``net`` columns take it out.

Targets: bitvec at 10,000 rules no more than 2x its 10-rule cost; at 1,000
rules at least 10x faster than the chain.

    python -m bench.bpf_bench            # prints a table, saves bench/results/bpf.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backends.bpf.emit import BPF_DIR, lower
from bench.workloads import generate_rules, policy_text, trace_lines
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from runtime.bpf_loader import BpfLoadError, SlowPath
from runtime.testrun import test_run
from verify.frames import frame

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Subject:
    """One program under measurement and what was measured of it."""

    size: int
    name: str
    status: str
    load_s: float
    frames: list[bytes]
    fd: int | None = None
    before: Callable[[], None] = lambda: None
    rounds: list[float] = field(default_factory=list)

    def measure(self, repeat: int) -> None:
        """One round: the mean kernel-reported ns over this subject's packets."""
        if self.fd is None:
            return
        self.before()
        times = [test_run(self.fd, f, repeat=repeat).duration_ns for f in self.frames]
        self.rounds.append(statistics.mean(times))

    @property
    def ns(self) -> float | None:
        """Median over rounds."""
        return statistics.median(self.rounds) if self.rounds else None


def _frames(size: int, packets: int) -> list[bytes]:
    rules = generate_rules("fw", size, seed=11)
    return [
        frame(parse_packet(line))
        for line in trace_lines(rules, flows=packets, packets=packets, skew=0.0, seed=11)
    ]


def _load(size: int, strategy: str, frames: list[bytes], keep: list[object]) -> list[Subject]:
    result = compile_source(policy_text("fw", size, seed=11), f"fw{size}.fw")
    assert result.program is not None
    policy = result.program.policies[0]
    start = time.perf_counter()
    try:
        slow_path = SlowPath(lower(policy, strategy), ifindex_of=lambda _dev: 1)
    except BpfLoadError as exc:
        # bcc's message names the kernel's errno (E2BIG: over the 1M-instruction limit).
        reason = exc.message.split(":")[-1].strip()
        status = f"rejected by the {exc.stage} ({reason})"
        return [Subject(size, strategy, status, time.perf_counter() - start, frames)]
    load_s = time.perf_counter() - start
    keep.append(slow_path)
    subjects = [Subject(size, strategy, "ok", load_s, frames, slow_path.fd)]
    if strategy == "bitvec":
        memo = slow_path.program.capacities.memo
        subjects[0].name = "bitvec (memo)" if memo else "bitvec"
        subjects[0].before = lambda: slow_path.set_memo(True)
        if memo:
            walk = Subject(size, "bitvec-walk", "ok", load_s, frames, slow_path.fd)
            walk.before = lambda: slow_path.set_memo(False)
            subjects.append(walk)
    return subjects


def _floor(frames: list[bytes], keep: list[object]) -> Subject:
    from bcc import BPF

    bpf = BPF(src_file=str(BPF_DIR / "bench_floor.c").encode())
    keep.append(bpf)
    fn = bpf.load_func(b"flowc_floor", BPF.SCHED_CLS)
    return Subject(0, "floor", "ok", 0.0, frames, fn.fd)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print/save the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.bpf_bench")
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--packets", type=int, default=64, help="distinct packets per policy")
    parser.add_argument("--repeat", type=int, default=5000, help="test-run repetitions each")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measuring rounds")
    parser.add_argument("--strategies", default="bitvec,chain")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    keep: list[object] = []
    subjects: list[Subject] = []
    for size in sizes:
        frames = _frames(size, args.packets)
        for strategy in args.strategies.split(","):
            subjects += _load(size, strategy, frames, keep)
            print(f"  loaded {size:>6} {strategy}: {subjects[-1].status}", file=sys.stderr)
    floor = _floor(_frames(sizes[0], args.packets), keep)
    subjects.append(floor)
    for r in range(args.rounds):
        shift = r % len(subjects)
        for subject in subjects[shift:] + subjects[:shift]:
            subject.measure(args.repeat)
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    table = _table(subjects, floor, sizes[0])
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bpf.md").write_text(
        "# Slow-path classification benchmark\n\n"
        f"`python -m bench.bpf_bench` (fw policies; {args.packets} packets per policy, "
        f"{args.repeat} BPF_PROG_TEST_RUN repetitions per packet, median of "
        f"{args.rounds} interleaved rounds; kernel-reported ns per run). `net` = minus "
        "the floor (an empty program's cost in the same rounds).\n\n" + table + "\n"
    )
    return 0


def _table(subjects: list[Subject], floor: Subject, base_size: int) -> str:
    floor_ns = floor.ns or 0.0
    by_key = {(s.size, s.name.split(" ")[0]): s.ns for s in subjects if s.ns is not None}
    base = by_key.get((base_size, "bitvec"))
    lines = [
        "| rules | program | verifier | ns/packet | net ns | vs bitvec@"
        f"{base_size} (net) | chain / this (net) | compile+load (s) |",
        "|---:|---|---|---:|---:|---|---|---:|",
    ]
    for s in subjects:
        ns = s.ns
        if ns is None:
            lines.append(f"| {s.size} | {s.name} | {s.status} | - | - | - | - | {s.load_s:.1f} |")
            continue
        if s is floor:
            lines.append(f"| - | floor (empty program) | ok | {ns:.0f} | 0 | - | - | - |")
            continue
        net = ns - floor_ns
        rel = "-"
        if base is not None and not s.name.startswith("chain"):
            rel = f"{ns / base:.2f}x ({net / (base - floor_ns):.2f}x)"
        chain = by_key.get((s.size, "chain"))
        speedup = "-"
        if chain is not None and not s.name.startswith("chain"):
            speedup = f"{chain / ns:.1f}x ({(chain - floor_ns) / net:.1f}x)"
        lines.append(
            f"| {s.size} | {s.name} | {s.status} | {ns:.0f} | {net:.0f} | {rel} | {speedup} "
            f"| {s.load_s:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
