"""Flower lowering sizes and insertion rate: pyroute2 batched vs `tc -batch`.

Part 1 (host): for the ClassBench-style bench policies (acl/fw/ipc at 1,000
and 10,000 rules), the filters and distinct masks after lowering, per NIC
profile, how many rules each profile keeps in hardware, and lowering time.

Part 2 (guest kernel, booted once with virtme-ng; the host kernel has no
cls_flower): the same filters inserted into software flower on a veth, once
with flowc's batched pyroute2 installer and once with `tc -batch`, in the same
guest run, alternating, as a ratio. The guest's CPU is emulated, so absolute
rates mean little; the ratio within one run is the result.

Target: pyroute2 batched at least as fast as `tc -batch`.

    python -m bench.flower_bench [--sizes 1000,10000] [--insert 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backends.flower import lowering as flower
from backends.nic_profile import load_profile
from bench.workloads import policy_text
from compiler.frontend import compile_source
from ir.model import Policy

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("acl", "fw", "ipc")
PROFILES = ("software", "mlx5-connectx6dx", "nfp-agilio", "ice-e810")


def bench_policy(family: str, size: int, device: str = "eth0") -> Policy:
    """The generated bench policy (same seeds as the other benchmarks)."""
    result = compile_source(policy_text(family, size, seed=11, device=device), f"{family}{size}.fw")
    assert result.program is not None
    return result.program.policies[0]


def lowering_table(sizes: list[int]) -> list[str]:
    """Markdown rows: filters, masks, placement and lowering time per policy and profile."""
    rows = [
        "| policy | IR rules | profile | filters | distinct masks | priorities "
        "| in hw / trapped / slow | lower (s) |",
        "|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for size in sizes:
        for family in FAMILIES:
            policy = bench_policy(family, size)
            for name in PROFILES:
                start = time.perf_counter()
                program = flower.lower(policy, load_profile(name))
                elapsed = time.perf_counter() - start
                c = program.counts()
                prios = len({f.prio for f in program.filters})
                rows.append(
                    f"| {family}{size} | {len(policy.rules)} | {name} | {len(program.filters)} | "
                    f"{program.distinct_masks()} | {prios} | "
                    f"{c['hardware']} / {c['trapped']} / {c['slow']} | {elapsed:.2f} |"
                )
    return rows


# ------------------------------------------------------------ inside the guest
def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


METHODS = ("wire", "pyroute2", "tc-batch")


def guest_insertion(count: int, repeat: int, out: Path, methods: list[str]) -> None:
    """Runs inside the guest: time flowc's installer (wire encoder, and pyroute2's
    message classes) against tc -batch of the same filters, on fresh veths."""
    from backends.flower.text import to_tc_batch
    from runtime.flower_installer import FlowerInstaller

    policy = bench_policy("acl", count)
    filters = list(flower.lower(policy).filters)
    results: dict[str, list[float]] = {method: [] for method in methods}
    for round_no in range(repeat):
        # Rotate the order so no method always runs first (caches, page faults).
        shift = round_no % len(methods)
        order = methods[shift:] + methods[:shift]
        for method in order:
            dev = f"fb{round_no}{method[0]}"
            _sh("ip", "link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
            _sh("tc", "qdisc", "add", "dev", dev, "clsact")
            if method == "tc-batch":
                batch = out / f"{dev}.tc"
                batch.write_text(to_tc_batch(filters, dev, "ingress").split("\n", 1)[1])
                start = time.perf_counter()
                _sh("tc", "-batch", str(batch))
                elapsed = time.perf_counter() - start
            else:
                with FlowerInstaller(dev, "ingress", codec=method) as inst:
                    start = time.perf_counter()
                    inst.add(filters)
                    elapsed = time.perf_counter() - start
            with FlowerInstaller(dev, "ingress") as inst:
                assert len(inst.dump()) == len(filters), f"{method}: not every filter landed"
            _sh("ip", "link", "del", dev)
            results[method].append(elapsed)
    (out / "insertion.json").write_text(
        json.dumps({"filters": len(filters), "rules": len(policy.rules), "seconds": results})
    )


def run_guest(count: int, repeat: int, methods: list[str]) -> dict[str, object] | None:
    """Boot the guest once and run :func:`guest_insertion` there."""
    from tests.guest_runner import VENV_BIN, debian_kernel, vng_command

    kernel = debian_kernel()
    if kernel is None:
        print("flower_bench: no Debian kernel for the guest; run scripts/setup.sh", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="flowc-bench-") as rwdir:
        inner = (
            f"cd {shlex.quote(str(REPO))} && PYTHONDONTWRITEBYTECODE=1 "
            f"{VENV_BIN}/python -m bench.flower_bench --guest-inner {rwdir} "
            f"--insert {count} --repeat {repeat} --methods {','.join(methods)} "
            f"> {rwdir}/log 2>&1"
        )
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        subprocess.run(
            vng_command(kernel, rwdir, inner, kvm=False), env=env, capture_output=True, timeout=3000
        )
        result = Path(rwdir) / "insertion.json"
        if not result.exists():
            log = Path(rwdir) / "log"
            print(log.read_text() if log.exists() else "guest run failed", file=sys.stderr)
            return None
        data: dict[str, object] = json.loads(result.read_text())
        return data


def main(argv: list[str] | None = None) -> int:
    """Print and save the tables (bench/results/flower.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--insert", type=int, default=2000, help="IR rules of the insertion policy")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-guest", action="store_true", help="only the lowering table")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="insertion methods to time (tc-batch is always included)",
    )
    parser.add_argument("--no-lowering", action="store_true", help="skip the lowering table")
    parser.add_argument("--guest-inner", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m in METHODS and m != "tc-batch"]
    methods.append("tc-batch")
    if args.guest_inner:
        guest_insertion(args.insert, args.repeat, Path(args.guest_inner), methods)
        return 0
    lines = ["# Flower lowering and insertion", ""]
    if not args.no_lowering:
        lines += ["## Filters and masks after lowering (host)", ""]
        lines += lowering_table([int(s) for s in args.sizes.split(",")])
        print("\n".join(lines))
    if not args.no_guest:
        data = run_guest(args.insert, args.repeat, methods)
        lines += ["", "## Insertion into software flower (guest kernel, emulated CPU)", ""]
        if data is None:
            lines.append("guest run failed (see stderr)")
        else:
            seconds = data["seconds"]
            assert isinstance(seconds, dict)
            n = data["filters"]
            assert isinstance(n, int)
            best = {method: min(runs) for method, runs in seconds.items()}
            labels = {
                "wire": "flowc batched, wire encoder (default)",
                "pyroute2": "flowc batched, pyroute2 message classes",
                "tc-batch": "tc -batch",
            }
            lines += [
                f"acl{args.insert}: {data['rules']} IR rules -> {n} filters; best of "
                f"{args.repeat}, order rotated each round.",
                "",
                "| method | seconds (all runs) | filters/s (best) | rate / tc -batch |",
                "|---|---|---:|---:|",
            ]
            for method, label in labels.items():
                if method not in seconds:
                    continue
                runs = ", ".join(f"{s:.2f}" for s in seconds[method])
                ratio = best["tc-batch"] / best[method]
                lines.append(f"| {label} | {runs} | {n / best[method]:,.0f} | {ratio:.2f}x |")
            lines += [
                "",
                "Target: flowc's batched insertion at least as fast as tc -batch (>= 1.0x).",
            ]
        print("\n".join(lines[-12:]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flower.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
