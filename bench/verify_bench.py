"""Verification benchmark: time and peak memory to prove IR == flower, and to diff.

Each measurement runs in a fresh process, so peak RSS is that measurement's
own (the compiled policy and lowering included). Policies are the generated
ClassBench-style ones the other benchmarks use (seed 11). The diff compares
a 10,000-rule policy with a copy where a few rules changed action; the
audit judges the old version's lowering (generation 1) installed filter by
filter against that changed copy (generation 2). One row
times the plain region walk (no refinement shortcut) at 1,000 rules, the
measurement behind the engine choice in ir/equivalence.py.

    python -m bench.verify_bench [--sizes 1000,10000] [--no-reference]

Targets: 10,000 rules verified in under 10 s, memory under 1 GiB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _measure(job: str, family: str, size: int, profile: str, out: Any) -> None:
    """Runs in a child process: one measurement, result through the queue."""
    from backends.flower import lowering as flower
    from backends.nic_profile import load_profile
    from bench.flower_bench import bench_policy
    from bench.workloads import policy_text
    from compiler.frontend import compile_source
    from ir.diff import diff_policies
    from ir.equivalence import ANY, compare
    from ir.fields import HEADER_SPACE
    from verify.flower import STALE, UNSOUND, audit, check, first_match_lists

    row: dict[str, Any] = {}
    if job == "audit":
        text = policy_text(family, size, seed=11, device="eth0")
        old = compile_source(text, "old.fw").program.policies[0]  # type: ignore[union-attr]
        new = compile_source(_flip_actions(text, 3), "new.fw").program.policies[0]  # type: ignore[union-attr]
        installed = flower.lower(old, load_profile(profile), generation=1).filters
        row["filters"] = len(installed)
        start = time.perf_counter()
        found = audit(new, installed, generation=2)
        row["seconds"] = time.perf_counter() - start
        row["result"] = (
            f"{len(found.with_status(UNSOUND))} unsound, {len(found.with_status(STALE))} stale"
            + ("" if found.settled else " (gave up)")
        )
    elif job == "diff":
        text = policy_text(family, size, seed=11, device="eth0")
        changed = _flip_actions(text, count=3)
        old = compile_source(text, "old.fw").program.policies[0]  # type: ignore[union-attr]
        new = compile_source(changed, "new.fw").program.policies[0]  # type: ignore[union-attr]
        start = time.perf_counter()
        d = diff_policies(old, new)
        row["seconds"] = time.perf_counter() - start
        row["result"] = f"{len(d.changes)} changed cubes" + ("" if d.settled else " (gave up)")
    else:
        policy = bench_policy(family, size)
        program = flower.lower(policy, load_profile(profile))
        row["filters"] = len(program.filters)
        start = time.perf_counter()
        if job == "check":
            result = check(policy, program.filters)
            row["result"] = "equivalent" if result.equivalent else "NOT equivalent"
        else:
            left, right, _kept = first_match_lists(policy, program.filters)
            outcome = compare(HEADER_SPACE, left, right, right_default=ANY)
            row["result"] = (
                f"{'equivalent' if outcome.equivalent else 'NOT'} ({outcome.steps} regions)"
            )
        row["seconds"] = time.perf_counter() - start
    row["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put(row)


def _flip_actions(text: str, count: int) -> str:
    """The policy with the actions of ``count`` rules spread through it flipped."""
    lines = text.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if re.match(r"\s*(allow|drop)\b", line)]
    step = max(len(rule_lines) // (count + 1), 1)
    for i in rule_lines[step::step][:count]:
        line = lines[i]
        lines[i] = (
            line.replace("allow", "drop", 1)
            if line.lstrip().startswith("allow")
            else line.replace("drop", "allow", 1)
        )
    return "\n".join(lines) + "\n"


def run(job: str, family: str, size: int, profile: str = "software") -> dict[str, Any]:
    """One measurement in a fresh process."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(job, family, size, profile, queue))
    proc.start()
    row: dict[str, Any] = queue.get()
    proc.join()
    return row


def main(argv: list[str] | None = None) -> int:
    """Print and save the table (bench/results/verify.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-walk row")
    args = parser.parse_args(argv)
    lines = [
        "# Verification: IR vs flower, and policy diff",
        "",
        "| what | policy | profile | filters | result | seconds | peak RSS (MiB) |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    print("\n".join(lines), flush=True)

    def emit(what: str, policy: str, profile: str, row: dict[str, Any]) -> None:
        line = (
            f"| {what} | {policy} | {profile} | {row.get('filters', '')} | {row['result']} | "
            f"{row['seconds']:.2f} | {row['rss_mib']:.0f} |"
        )
        lines.append(line)
        print(line, flush=True)

    for size in (int(s) for s in args.sizes.split(",")):
        for family in ("acl", "fw", "ipc"):
            for profile in ("software", "mlx5-connectx6dx"):
                emit("verify", f"{family}{size}", profile, run("check", family, size, profile))
    if not args.no_reference:
        emit("plain walk", "acl1000", "software", run("walk", "acl", 1000))
    for family in ("acl", "fw", "ipc"):
        emit("diff (3 rules changed)", f"{family}10000", "", run("diff", family, 10000))
    for family in ("acl", "fw", "ipc"):
        emit(
            "audit (old lowering, 3 rules changed)",
            f"{family}10000",
            "mlx5-connectx6dx",
            run("audit", family, 10000, "mlx5-connectx6dx"),
        )
    lines += ["", "Target: 10,000 rules verified in under 10 s, peak memory under 1 GiB."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
