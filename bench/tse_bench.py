"""Tuple-space explosion against the rule cache (runtime/tse_replay.py).

A ClassBench-style 1,000-rule ACL (bench seed 1, as bench/cache_bench.py) and
a Zipf trace of well-behaved flows, replayed once alone and once with crafted
flows interleaved (each a well-behaved packet with one bit flipped in two of
source/destination address and port: the megaflow of such a packet is as
wide as the flipped bit allows, so the attack asks for a new mask tuple with
most packets). Per NIC profile: how many masks the attack asks for (the
``software`` profile has no mask budget, so every mask it asks for is
installed), the most masks the device held, the well-behaved flows' cache hit
ratio with and without the attack, the agent's event queue at its deepest and
the events it dropped, and packets decided otherwise than the IR decides them.

Targets (issue 17, item 3): masks within the profile's budget; well-behaved
hit ratio within 5 points of the no-attack run; the event queue bounded; no
wrong verdict.

    python -m bench.tse_bench [--good-packets 40000] [--attack-share 0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.workloads import generate_rules, policy_text, trace_lines
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.model import Policy
from ir.packet import Packet
from runtime.flow_cache import CacheConfig
from runtime.tse_replay import ReplayConfig, ReplayResult, attack_packets, mixed, replay

RESULTS = Path(__file__).resolve().parent / "results"
SECTION = "## Tuple-space explosion"
PROFILES = ("ice-e810", "mlx5-connectx6dx", "software")
MAX_DROP = 0.05


def workload(good_packets: int, flows: int) -> tuple[Policy, list[Packet]]:
    """The acl1000 policy and its well-behaved Zipf trace."""
    result = compile_source(policy_text("acl", 1000, seed=1), "acl1000.fw")
    assert result.program is not None
    rules = generate_rules("acl", 1000, seed=1)
    lines = trace_lines(rules, flows=flows, packets=good_packets, skew=1.1, seed=1)
    return result.program.policies[0], [parse_packet(line) for line in lines]


def main(argv: list[str] | None = None) -> int:
    """Run the replays, print the table and write its section of bench/results/cache.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.tse_bench")
    parser.add_argument("--good-packets", type=int, default=40_000)
    parser.add_argument("--flows", type=int, default=2_000, help="well-behaved flows")
    parser.add_argument("--attack-share", type=float, default=0.1)
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    from backends.nic_profile import load_profile  # after runtime.flow_cache: an import cycle

    policy, good = workload(args.good_packets, args.flows)
    share = args.attack_share
    attack = attack_packets(good, int(len(good) * share / (1 - share)) + 1, seed=2)
    trace = mixed(good, attack, share, seed=3)
    clean = [(p, False) for p in good]
    config = ReplayConfig()
    rows = []
    for name in args.profiles.split(","):
        profile = load_profile(name)
        start = time.perf_counter()
        base = replay(policy, clean, profile, CacheConfig(), config)
        under = replay(policy, trace, profile, CacheConfig(), config)
        rows.append((name, base, under))
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    text = _section(rows, args, len(attack), config)
    print(text)
    if not args.no_save:
        _save(text)
    return 0


def _met(name: str, base: ReplayResult, under: ReplayResult) -> list[str]:
    problems = []
    if under.peak_masks > under.mask_budget:
        problems.append("masks over budget")
    if base.good_hit_ratio - under.good_hit_ratio > MAX_DROP:
        problems.append("hit ratio")
    if under.peak_queue > under.queue_capacity:
        problems.append("queue")
    if under.wrong_verdicts or base.wrong_verdicts:
        problems.append("verdicts")
    return problems


def _section(
    rows: list[tuple[str, ReplayResult, ReplayResult]],
    args: argparse.Namespace,
    n_attack: int,
    config: ReplayConfig,
) -> str:
    lines = [
        SECTION,
        "",
        f"`python -m bench.tse_bench`: acl1000 (bench seed 1), {args.good_packets} "
        f"well-behaved packets over {args.flows} Zipf(1.1) flows, and {n_attack} crafted "
        f"packets interleaved ({args.attack_share:.0%} of all packets; each a distinct "
        "flow, a well-behaved packet with one bit flipped in two of source/destination "
        f"address and port). Simulated clock at {config.pps:g} packets/s; the agent "
        f"handles {config.agent_rate:g} events/s from a {config.queue_size}-event queue; "
        "cache defaults (megaflow mode, 1,000 installs/s, 30 s idle). `masks asked` = "
        "distinct mask tuples among the megaflows the cache built; `held` = most "
        "masks on the NIC at once.",
        "",
        "| profile | mask budget | masks asked (attack) | held (attack) | hit ratio, no attack"
        " | hit ratio, attack | drop (points) | queue peak / size | events dropped |"
        " installs / refused | wrong verdicts | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|",
    ]
    for name, base, under in rows:
        problems = _met(name, base, under)
        drop = 100 * (base.good_hit_ratio - under.good_hit_ratio)
        budget = f"{under.mask_budget:,}"
        lines.append(
            f"| {name} | {budget} | {under.masks_requested} | {under.peak_masks} | "
            f"{base.good_hit_ratio:.3f} | {under.good_hit_ratio:.3f} | {drop:.1f} | "
            f"{under.peak_queue} / {under.queue_capacity} | {under.events_dropped} | "
            f"{under.installs} / {under.refusals} | {under.wrong_verdicts + base.wrong_verdicts} "
            f"| {'met' if not problems else 'not met: ' + ', '.join(problems)} |"
        )
    return "\n".join(lines)


def _save(section: str) -> None:
    """Replace this benchmark's section of cache.md (everything else stays)."""
    path = RESULTS / "cache.md"
    text = path.read_text() if path.exists() else "# Rule cache benchmark\n"
    head, sep, rest = text.partition(SECTION)
    tail = ""
    if sep:
        following = rest.find("\n## ")
        tail = rest[following:] if following >= 0 else ""
    path.write_text(head.rstrip() + "\n\n" + section + "\n" + tail)


if __name__ == "__main__":
    sys.exit(main())
