"""Verification benchmark: time and peak memory to prove IR == flower, and to diff.

Each measurement runs in a fresh process, so peak RSS is that measurement's
own (the compiled policy and lowering included). Policies are the generated
ClassBench-style ones the other benchmarks use (seed 11). The diff compares
a 10,000-rule policy with a copy where a few rules changed action; the
audit judges the old version's lowering (generation 1) installed filter by
filter against that changed copy (generation 2). One row
times the plain region walk (no refinement shortcut) at 1,000 rules, the
measurement behind the engine choice in ir/equivalence.py.

The BPF half (``check_bpf``, root and bcc, run under the kernel lock) runs
on the real ClassBench 10K sets (acl1, fw1, ipc1, imported as ``flowc import
classbench`` does) and reports each phase's time and the process's peak RSS
after it (bcc's in-process clang is part of compile+load), and how the rules
were covered: a deciding witness, proven shadowed, or given up.

    python -m bench.verify_bench [--sizes 1000,10000] [--no-reference] [--only flower|bpf]
    python -m bench.verify_bench --against TREE [--rounds 3] [--timeout 420] [--sizes 10000]

``--against TREE`` times the flower check (``verify`` rows) of this tree and
of another checkout (an older commit in a worktree) on the same generated
policies, in interleaved rounds (old, new, new, old, ...), each run a fresh
process with that tree first on ``sys.path``, and prints medians and the
ratio new/old; it writes no file. On a shared machine absolute seconds drift
with the load, a ratio within one run does not (much). A run past
``--timeout`` is stopped and counts as at least the timeout.

``--only bpf`` rewrites only the BPF section of bench/results/verify.md
(the flower table stays as it was), and ``--only flower`` the other way round.

Targets: 10,000 rules verified in under 10 s, memory under 1 GiB; the BPF
check of a 10,000-rule set in under 60 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CORPORA = Path(os.environ.get("FLOWC_CORPORA", ROOT.parent / "shared" / "corpora"))
CLASSBENCH_10K = ("neurocuts_acl1_10k", "neurocuts_fw1_10k", "neurocuts_ipc1_10k")
TITLE = "# Verification: IR vs flower, policy diff, and the BPF slow path"
BPF_HEADING = "## BPF slow path vs IR (`check_bpf`, in the kernel)"


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
            if result.equivalent:
                row["result"] = "equivalent"
            elif result.counterexample is not None:
                row["result"] = "NOT equivalent"
            else:  # the walk ran out of steps: no answer, which is not a refutation
                row["result"] = f"undecided (gave up after {result.steps:,} steps)"
        else:
            left, right, _kept = first_match_lists(policy, program.filters)
            outcome = compare(HEADER_SPACE, left, right, right_default=ANY)
            row["result"] = (
                f"{'equivalent' if outcome.equivalent else 'NOT'} ({outcome.steps} regions)"
            )
        row["seconds"] = time.perf_counter() - start
    row["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put(row)


def _measure_bpf(name: str, out: Any) -> None:
    """Runs in a child process: ``check_bpf`` on a ClassBench set, phases and coverage."""
    from compiler import classbench
    from compiler.frontend import compile_source
    from verify.bpf import check_bpf

    filters = classbench.parse_filters((CORPORA / "classbench" / name).read_text().splitlines())
    text = classbench.filters_to_policy(filters, source_name=name)
    start = time.perf_counter()
    policy = compile_source(text, name).program.policies[0]  # type: ignore[union-attr]
    compiled = time.perf_counter() - start
    result = check_bpf(policy)
    out.put(
        {
            "rules": len(policy.rules),
            "compile_s": compiled,
            "phases": [(p.name, p.seconds, p.peak_rss_mib) for p in result.phases],
            "witnessed": result.witnessed,
            "shadowed": result.shadowed,
            "unsendable": result.unsendable,
            "gave_up": len(result.gave_up),
            "boundary": result.boundary,
            "random": result.random,
            "packets": result.packets,
            "result": "agrees" if result.equivalent else "COUNTEREXAMPLE",
        }
    )


def run_bpf(name: str) -> dict[str, Any]:
    """One BPF check in a fresh process (so its peak RSS is its own)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure_bpf, args=(name, queue))
    proc.start()
    row: dict[str, Any] = queue.get()
    proc.join()
    return row


def bpf_section() -> list[str]:
    """The BPF half's tables: time and peak RSS per phase, and rule coverage."""
    lines = [
        BPF_HEADING,
        "",
        "Each set in a fresh process: `flowc import classbench` (mark actions), compile, "
        "then `check_bpf`. Seconds per phase, the process's peak RSS after it in "
        "parentheses (MiB; compile+load includes bcc's in-process clang). The DSL compile "
        "is not part of the check and is shown apart.",
        "",
        "| policy | IR rules | DSL compile (s) | compile+load (s) | witness search (s) | "
        "boundary and random packets (s) | IR verdicts (s) | kernel runs (s) | "
        "BPF check total (s) | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    coverage = [
        "",
        "How the rules were covered: every rule gets a packet it decides (it is that "
        "packet's first match), run in the kernel, or a proof that it decides none. "
        "Boundary and random packets are counted apart from the witnesses and from each "
        "other (duplicates run once; every packet runs twice when the classifier's memo "
        "is compiled in: once filling it, once answered from it).",
        "",
        "| policy | rules with a deciding witness | shadowed (proven) | only unsendable "
        "packets | gave up | boundary packets | random packets | packets run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name in CLASSBENCH_10K:
        if not (CORPORA / "classbench" / name).exists():
            print(f"(no {name} under {CORPORA})", flush=True)
            continue
        row = run_bpf(name)
        cells = [f"{s:.2f} ({rss:.0f})" for _n, s, rss in row["phases"]]
        total = sum(s for _n, s, _rss in row["phases"])
        line = (
            f"| {name} | {row['rules']} | {row['compile_s']:.2f} | {' | '.join(cells)} | "
            f"{total:.2f} | {row['result']} |"
        )
        lines.append(line)
        print(line, flush=True)
        coverage.append(
            f"| {name} | {row['witnessed']} | {row['shadowed']} | {row['unsendable']} | "
            f"{row['gave_up']} | {row['boundary']} | {row['random']} | {row['packets']} |"
        )
    print("\n".join(coverage), flush=True)
    return [*lines, *coverage, "", "Target: the BPF check of a 10,000-rule set in under 60 s."]


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


VERIFY_ROWS = (
    ("acl", "software"),
    ("acl", "mlx5-connectx6dx"),
    ("fw", "software"),
    ("fw", "mlx5-connectx6dx"),
    ("ipc", "software"),
    ("ipc", "mlx5-connectx6dx"),
)
# Run by a fresh interpreter inside the tree being timed: one ``check`` row as JSON.
_ONE_ROW = (
    "import json, sys\n"
    "from bench.verify_bench import run\n"
    "print('ROW ' + json.dumps(run('check', sys.argv[1], int(sys.argv[2]), sys.argv[3])))\n"
)


def run_in_tree(tree: Path, family: str, size: int, profile: str, timeout: float) -> dict[str, Any]:
    """One ``check`` measurement by ``tree``'s own code, in a fresh process.

    The row as :func:`run` gives it, or ``{"timeout": timeout}`` when stopped.
    Raises RuntimeError when the tree's code fails (its stderr tail attached).
    """
    env = dict(os.environ, PYTHONPATH=str(tree))
    args = [sys.executable, "-c", _ONE_ROW, family, str(size), profile]
    # Its own session: the measurement forks, and a stopped run must take its child along.
    proc = subprocess.Popen(
        args,
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"timeout": timeout}
    rows = [line[4:] for line in out.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0 or not rows:
        raise RuntimeError(f"{tree}: {family}{size} {profile} failed:\n{err[-2000:]}")
    row: dict[str, Any] = json.loads(rows[0])
    return row


def _median_cell(rows: list[dict[str, Any]]) -> tuple[float, str]:
    """The median seconds of ``rows`` (a stopped run counts as its timeout), and
    its text (``> t`` when stopped runs are at least half)."""
    values = sorted(r.get("seconds", r.get("timeout", 0.0)) for r in rows)
    median = statistics.median(values)
    stopped = sum(1 for r in rows if "timeout" in r)
    return median, (f"> {median:.0f}" if 2 * stopped >= len(rows) else f"{median:.2f}")


def against(old_tree: Path, sizes: list[int], rounds: int, timeout: float) -> list[str]:
    """Interleaved old/new timing of the ``verify`` rows: the ratio table's lines."""
    lines = [
        "| policy | profile | filters old / new | old median (s) | new median (s) | "
        "ratio new/old | verdict old / new | runs old / new (s) |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    print("\n".join(lines), flush=True)
    trees = {"old": old_tree.resolve(), "new": ROOT}
    for size in sizes:
        for family, profile in VERIFY_ROWS:
            got: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
            for round_no in range(rounds):
                # Alternate which tree goes first, so neither always meets a warm page cache.
                for name in ("old", "new") if round_no % 2 == 0 else ("new", "old"):
                    got[name].append(run_in_tree(trees[name], family, size, profile, timeout))
            (old_s, old_text), (new_s, new_text) = (
                _median_cell(got["old"]),
                _median_cell(got["new"]),
            )
            cells = {
                name: (
                    "/".join(sorted({str(r["filters"]) for r in rs if "filters" in r})) or "?",
                    "/".join(sorted({r["result"] for r in rs if "result" in r})) or "stopped",
                    ", ".join(
                        f"{r['seconds']:.2f}" if "seconds" in r else f">{r['timeout']:.0f}"
                        for r in rs
                    ),
                )
                for name, rs in got.items()
            }
            ratio = new_s / old_s if old_s > 0 else float("inf")
            line = (
                f"| {family}{size} | {profile} | {cells['old'][0]} / {cells['new'][0]} | "
                f"{old_text} | {new_text} | {'> ' if new_text.startswith('>') else ''}"
                f"{ratio:.2f}x | {cells['old'][1]} / {cells['new'][1]} | "
                f"{cells['old'][2]} / {cells['new'][2]} |"
            )
            lines.append(line)
            print(line, flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print and save the tables (bench/results/verify.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-walk row")
    parser.add_argument(
        "--only", choices=["flower", "bpf"], help="run one half, keep the other's saved table"
    )
    parser.add_argument(
        "--against", type=Path, metavar="TREE", help="print new/old ratios against TREE"
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --against")
    parser.add_argument("--timeout", type=float, default=420.0, help="with --against (s)")
    args = parser.parse_args(argv)
    if args.against is not None:
        if not (args.against / "bench" / "verify_bench.py").exists():
            parser.error(f"{args.against} is not a flowc checkout (no bench/verify_bench.py)")
        against(args.against, [int(s) for s in args.sizes.split(",")], args.rounds, args.timeout)
        return 0
    saved = (RESULTS / "verify.md").read_text() if (RESULTS / "verify.md").exists() else ""
    flower_part, _, bpf_part = saved.partition(BPF_HEADING)
    flower_lines = [TITLE, *flower_part.rstrip("\n").splitlines()[1:]]
    bpf_lines = (BPF_HEADING + bpf_part).rstrip("\n").splitlines() if bpf_part else []
    if args.only != "bpf":
        flower_lines = flower_section(args)
    if args.only != "flower":
        bpf_lines = bpf_section()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify.md").write_text("\n".join([*flower_lines, "", *bpf_lines]) + "\n")
    return 0


def flower_section(args: argparse.Namespace) -> list[str]:
    """The flower half, the diff and the audit: one row per measurement."""
    lines = [
        TITLE,
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
    return lines


if __name__ == "__main__":
    sys.exit(main())
