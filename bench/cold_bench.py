"""Cold classification: the slow path's cost for a packet whose class tuple the memo
has not seen (memo off), at 10 to 10,000 rules, with and without the summary grid.

Policies: the generated ``fw`` family (bench/workloads.py, as bench/bpf_bench.py)
and the three ClassBench 10K sets (acl1, fw1, ipc1), each cut to its first 10,
100, 1,000 and all filters. Packets: 64 per policy, one per rule drawn
uniformly (fw: the workload's trace; ClassBench: a random point of the drawn
filter's box), so matches fall anywhere in the list. Every program runs the
same packets with BPF_PROG_TEST_RUN in interleaved rounds with an empty
program (the floor); figures are medians over rounds and ``net`` subtracts the
floor of the same rounds.

Target (issue 17, item 2): net cost at 10,000 rules <= 2x net cost at 10 rules,
grid on, memo off, on every set.

    python -m bench.cold_bench            # prints the table, writes its section of bpf.md
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backends.bpf.emit import BPF_DIR, BpfProgram, lower
from backends.bpf.tables import DIR4, GRID_MAX_GROUPS, LPM6
from bench.workloads import generate_rules, policy_text, trace_lines
from compiler import classbench
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.model import Policy
from runtime.bpf_loader import BpfLoadError, SlowPath
from runtime.testrun import test_run
from verify.bpf import expected
from verify.frames import frame

RESULTS = Path(__file__).resolve().parent / "results"
# FLOWC_CORPORA as the tests read it (a worktree's parent has no shared/ beside it).
CORPUS = Path(os.environ.get("FLOWC_CORPORA", "/work/shared/corpora")) / "classbench"
CLASSBENCH_SETS = ("neurocuts_acl1_10k", "neurocuts_fw1_10k", "neurocuts_ipc1_10k")
SECTION = "## Cold classification (memo off)"
TARGET = 2.0


@dataclass
class Subject:
    """One loaded program under measurement."""

    family: str
    size: int
    grid: bool
    program: BpfProgram | None
    status: str
    frames: list[bytes]
    load_s: float = 0.0
    fd: int | None = None
    words: float = 0.0  # candidate words the walk tests per packet (mean)
    rounds: list[float] = field(default_factory=list)

    def measure(self, repeat: int) -> None:
        """One round: the mean kernel-reported ns over this subject's packets."""
        if self.fd is None:
            return
        times = [test_run(self.fd, f, repeat=repeat).duration_ns for f in self.frames]
        self.rounds.append(statistics.mean(times))

    @property
    def ns(self) -> float | None:
        """Median over rounds."""
        return statistics.median(self.rounds) if self.rounds else None


def _compile(text: str, name: str) -> Policy:
    result = compile_source(text, name)
    if result.program is None:
        raise SystemExit(f"{name} does not compile")
    return result.program.policies[0]


def fw_workload(size: int, packets: int) -> tuple[Policy, list[str]]:
    """The generated fw policy of ``size`` rules and packet lines inside its rules."""
    rules = generate_rules("fw", size, seed=11)
    lines = trace_lines(rules, flows=packets, packets=packets, skew=0.0, seed=11)
    return _compile(policy_text("fw", size, seed=11), f"fw{size}.fw"), list(lines)


def classbench_workload(name: str, size: int, packets: int) -> tuple[Policy, list[str]]:
    """The first ``size`` filters of a ClassBench set as a policy, and packet lines at
    random points of uniformly drawn filters' boxes."""
    filters = classbench.parse_filters((CORPUS / name).read_text().splitlines())[:size]
    policy = _compile(classbench.filters_to_policy(filters, source_name=name), f"{name}.fw")
    rng = random.Random(11)
    lines = []
    for _ in range(packets):
        f = filters[rng.randrange(len(filters))]
        proto = f.proto if f.proto is not None else rng.choice((6, 17))
        header = classbench.TracePacket(
            int(f.src.network_address) | rng.randrange(f.src.num_addresses),
            int(f.dst.network_address) | rng.randrange(f.dst.num_addresses),
            rng.randint(*f.sport),
            rng.randint(*f.dport),
            proto,
            -1,
        )
        lines.append(classbench.trace_packet_line(header))
    return policy, lines


def map_bytes(program: BpfProgram) -> tuple[int, int]:
    """(all classifier maps, the grid's share) in bytes, both banks, from the
    capacities the C is compiled with."""
    caps = program.capacities
    vector = 8 * (caps.n_words + caps.n_summary)
    total = sum(2 * n * vector for _name, n in caps.classes)
    assert program.tables is not None
    for t in program.tables.fields:
        if t.kind == DIR4:
            l2, l3 = {n: (a, b) for n, a, b in caps.dir_entries}[t.field]
            total += 2 * 4 * (65536 + l2 + l3)
        elif t.kind == LPM6:
            total += 2 * 24 * dict(caps.lpm_entries)[t.field]
        else:
            total += 2 * 4 * (1 << t.width)
    grid = 2 * GRID_MAX_GROUPS * GRID_MAX_GROUPS * 8 * caps.n_summary if caps.grid else 0
    return total + grid, grid


def _load(
    family: str, size: int, policy: Policy, lines: list[str], grid: bool | None, keep: list[object]
) -> Subject:
    packets = [parse_packet(line.split("  #")[0]) for line in lines]
    frames = [frame(p) for p in packets]
    start = time.perf_counter()
    program = lower(policy, grid=grid)
    has_grid = program.capacities.grid is not None
    assert program.tables is not None
    words = statistics.mean(program.tables.walk(p)[1] for p in packets)
    try:
        slow_path = SlowPath(program, ifindex_of=lambda _dev: 1, memo=False)
    except BpfLoadError as exc:
        reason = exc.message.split(":")[-1].strip()
        status = f"rejected by the {exc.stage} ({reason})"
        return Subject(family, size, has_grid, program, status, frames, time.perf_counter() - start)
    keep.append(slow_path)
    # Same verdicts as the IR on every measured packet, or the timing means nothing.
    for packet, data in zip(packets, frames, strict=True):
        got = test_run(slow_path.fd, data)
        if (got.retval, got.rule, got.mark) != expected(policy, packet):
            raise SystemExit(f"{family}@{size}: verdict differs from the IR on {packet}")
    load_s = time.perf_counter() - start
    return Subject(family, size, has_grid, program, "ok", frames, load_s, slow_path.fd, words)


def _floor(frames: list[bytes], keep: list[object]) -> Subject:
    from bcc import BPF

    bpf = BPF(src_file=str(BPF_DIR / "bench_floor.c").encode())
    keep.append(bpf)
    fn = bpf.load_func(b"flowc_floor", BPF.SCHED_CLS)
    return Subject("floor", 0, False, None, "ok", frames, fd=fn.fd)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write its section of bench/results/bpf.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.cold_bench")
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--families", default="fw," + ",".join(CLASSBENCH_SETS))
    parser.add_argument("--packets", type=int, default=64, help="distinct packets per policy")
    parser.add_argument("--repeat", type=int, default=3000, help="test-run repetitions each")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measuring rounds")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    families = args.families.split(",")
    keep: list[object] = []
    subjects: list[Subject] = []
    for family in families:
        if family != "fw" and not (CORPUS / family).exists():
            print(f"  skipped {family}: no corpus at {CORPUS}", file=sys.stderr)
            continue
        for size in sizes:
            if family == "fw":
                policy, lines = fw_workload(size, args.packets)
            else:
                policy, lines = classbench_workload(family, size, args.packets)
            # As shipped (the grid from GRID_MIN_WORDS words up), and where that has
            # a grid, the same policy without it: the before and after.
            for grid in (None, False):
                if grid is False and not subjects[-1].grid:
                    break
                subject = _load(family, size, policy, lines, grid, keep)
                subjects.append(subject)
                print(
                    f"  loaded {family} {size} grid={subject.grid}: {subject.status}",
                    file=sys.stderr,
                )
    floor = _floor(subjects[0].frames, keep)
    subjects.append(floor)
    for r in range(args.rounds):
        shift = r % len(subjects)
        for subject in subjects[shift:] + subjects[:shift]:
            subject.measure(args.repeat)
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    text = _section(subjects, floor, args)
    print(text)
    if not args.no_save:
        _save(text)
    return 0


def _label(family: str) -> str:
    return "fw (generated)" if family == "fw" else family.removeprefix("neurocuts_")


def _section(subjects: list[Subject], floor: Subject, args: argparse.Namespace) -> str:
    floor_ns = floor.ns or 0.0
    # The base is the program as shipped at the set's smallest size (no grid there).
    base = {
        s.family: s.ns - floor_ns
        for s in subjects
        if s.ns is not None and s.size == min(x.size for x in subjects if x.family == s.family)
    }
    lines = [
        SECTION,
        "",
        f"`python -m bench.cold_bench` ({args.packets} packets per policy, {args.repeat} "
        f"BPF_PROG_TEST_RUN repetitions per packet, median of {args.rounds} interleaved "
        "rounds, the class-tuple memo switched off so every packet pays the field lookups "
        "and the walk). `net` = minus the floor (an empty program, "
        f"{floor_ns:.0f} ns, same rounds); `ratio` = net / net of the same set at its "
        "smallest size as shipped (the grid is built from 512 rules up; the `off` rows "
        "are the same program without it, i.e. before this change). Target: ratio <= "
        f"{TARGET:.0f}x at 10,000 rules with the grid. `maps` = every classifier map, "
        "both banks (the grid's share in brackets). ClassBench sets: their first N filters "
        "(the 10K files hold 9,380-9,775). `words` = candidate words the walk tests per "
        "packet (mean; words every field's summary, and the grid cell, allow: each costs "
        "a word AND per field), from the Python mirror of the walk on the same packets.",
        "",
        "| set | rules | grid | verifier | words | ns/packet | net ns | ratio | target |"
        " maps (MiB) | grid note |",
        "|---|---:|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for s in subjects:
        if s is floor:
            continue
        assert s.program is not None
        rules = len(s.program.policy.rules) - 1
        total, grid_b = map_bytes(s.program)
        mib = f"{total / 2**20:.1f}" + (f" ({grid_b / 2**20:.1f})" if grid_b else "")
        note = s.program.tables.grid_note if s.program.tables is not None else ""
        if s.ns is None:
            lines.append(
                f"| {_label(s.family)} | {rules} | {'on' if s.grid else 'off'} | {s.status} "
                f"| - | - | - | - | - | {mib} | {note} |"
            )
            continue
        net = s.ns - floor_ns
        ratio = net / base[s.family]
        target = "-"
        if s.size >= 10000 and s.grid:
            target = "met" if ratio <= TARGET else "**not met**"
        lines.append(
            f"| {_label(s.family)} | {rules} | {'on' if s.grid else 'off'} | ok | {s.words:.1f} "
            f"| {s.ns:.0f} "
            f"| {net:.0f} | {ratio:.2f}x | {target} | {mib} | {note} |"
        )
    return "\n".join(lines)


def _save(section: str) -> None:
    """Replace this benchmark's section of bpf.md (everything else stays)."""
    path = RESULTS / "bpf.md"
    text = path.read_text() if path.exists() else "# Slow-path classification benchmark\n"
    head, _sep, rest = text.partition(SECTION)
    tail = ""
    if _sep:
        following = rest.find("\n## ")
        tail = rest[following:] if following >= 0 else ""
    path.write_text(head.rstrip() + "\n\n" + section + "\n" + tail)


if __name__ == "__main__":
    sys.exit(main())
