"""Compile time and peak memory of the front end at 1,000 / 10,000 / 100,000 rules.

Each measurement runs in a fresh subprocess so peak RSS belongs to one
compilation. Times are the median of ``--repeat`` runs inside that process
(parse + resolve + type-check + lower to IR; lint not included), so the first
run's grammar construction is excluded. Target: 10,000 rules under 2 s.

    python -m bench.compile_bench            # prints a table, saves bench/results/compile.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.workloads import SEED_FAMILIES, policy_text

ROOT = Path(__file__).resolve().parent.parent
CORPORA = Path(os.environ.get("FLOWC_CORPORA", ROOT.parent / "shared" / "corpora"))
RESULTS = ROOT / "bench" / "results"


def measure_one(path: str, repeat: int) -> dict[str, float]:
    """Compile ``path`` ``repeat`` times in this process; median seconds and peak RSS."""
    from compiler.frontend import compile_file
    from compiler.parser import _parser

    _parser()  # grammar construction is start-up, not compilation
    times = []
    rules = 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = compile_file(path)
        times.append(time.perf_counter() - start)
        if not result.ok or result.program is None:
            raise SystemExit(f"{path} did not compile")
        rules = sum(len(p.rules) for p in result.program.policies)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    check_seconds = float("nan")
    if rules <= 20000:  # the shadowing/redundancy analysis of `flowc check`, once
        from compiler.frontend import lint_policy

        assert result.program is not None
        start = time.perf_counter()
        for policy in result.program.policies:
            lint_policy(policy)
        check_seconds = time.perf_counter() - start
    return {
        "seconds": statistics.median(times),
        "peak_mib": peak_kib / 1024,
        "ir_rules": rules,
        "check_seconds": check_seconds,
    }


def _subprocess(path: str, repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.compile_bench", "--one", path, "--repeat", str(repeat)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --one, one measurement for the parent)."""
    parser = argparse.ArgumentParser(prog="python -m bench.compile_bench")
    parser.add_argument("--one", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.repeat)))
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for family in SEED_FAMILIES:
                path = Path(tmp) / f"{family}_{size}.fw"
                path.write_text(policy_text(family, size, seed=1))
                repeat = 1 if size >= 100000 else args.repeat
                rows.append((f"generated {family}", size, _subprocess(str(path), repeat)))
        from compiler import classbench

        for name in ("neurocuts_acl1_10k", "neurocuts_fw1_10k", "neurocuts_ipc1_10k"):
            src = CORPORA / "classbench" / name
            if not src.exists():
                continue
            filters = classbench.parse_filters(src.read_text().splitlines())
            path = Path(tmp) / f"{name}.fw"
            path.write_text(classbench.filters_to_policy(filters, source_name=name))
            rows.append((f"ClassBench {name}", len(filters), _subprocess(str(path), args.repeat)))

    lines = [
        "| workload | DSL rules | IR rules | compile (s) | peak RSS (MiB) | check analysis (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, size, r in rows:
        cells = [label, str(size), str(int(r["ir_rules"])), f"{r['seconds']:.2f}"]
        cells.append(f"{r['peak_mib']:.0f}")
        check = r["check_seconds"]
        cells.append("-" if check != check else f"{check:.2f}")  # NaN: not measured
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = (
        "# Front-end compile benchmark\n\n"
        "`python -m bench.compile_bench` (median of runs in one process; peak RSS of that "
        "process; compile excludes `flowc check`'s shadowing/redundancy analysis, which is "
        "timed separately, once). Target: 10,000 rules in under 2 s.\n\n"
    )
    (RESULTS / "compile.md").write_text(header + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
