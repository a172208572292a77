"""Rule cache benchmark: megaflow vs exact 5-tuple, and the agent's event pipeline.

Part 1 (any machine): ``flowc simulate``'s engine replays Zipf flow traces
through slow path + cache for a ClassBench-style 1,000-rule ACL (bench
seed 1) and for the ClassBench corpus pair jiachang_acl1_1k + its trace.
Both modes see the same packets, clock (``--pps``), insertion rate limit
(1,000 rules/s) and idle timeout (30 s); rules needed = peak occupancy.
Traces differ in how many distinct flows they hold and in how flows spread
over rules: uniformly, or with Zipf(1.0) rule popularity (ClassBench's own
trace generator gives filters Pareto-distributed header counts).

Part 2 (root, bcc): the agent's real pipeline on this kernel. A 1,000-rule
slow path is fed distinct flows with BPF_PROG_TEST_RUN; the program's ring
buffer events go through the agent's queue, the megaflow computation and
the install into the NIC model (this kernel has no cls_flower, so the
netlink install itself is not in these numbers). Reported: events per
second handled from a full ring buffer, and the latency from a flow's first
packet (the program's timestamp) to its rule being installed, one flow at a
time.

    python -m bench.cache_bench [--packets 200000] [--no-agent]

Target (issue 6): at least 10x fewer rules than exact 5-tuple at equal or
better hit ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora" / "classbench"


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """One generated trace."""

    flows: int
    rule_skew: float | None

    @property
    def label(self) -> str:
        spread = "uniform rules" if self.rule_skew is None else f"Zipf({self.rule_skew:g}) rules"
        return f"acl1000, {self.flows} flows, {spread}"


TRACES = (
    TraceSpec(5000, None),
    TraceSpec(5000, 1.0),
    TraceSpec(20000, 1.0),
    TraceSpec(50000, None),
    TraceSpec(50000, 1.0),
)


def _policy(text: str, name: str) -> Any:
    from compiler.frontend import compile_source

    result = compile_source(text, name)
    assert result.program is not None, result.diagnostics
    return result.program.policies[0]


def _generated(spec: TraceSpec, packets: int) -> tuple[Any, list[Any]]:
    from bench.workloads import generate_rules, policy_text, trace_lines
    from compiler.packet_syntax import parse_packet

    policy = _policy(policy_text("acl", 1000, seed=1), "acl1000.fw")
    rules = generate_rules("acl", 1000, seed=1)
    lines = trace_lines(
        rules, flows=spec.flows, packets=packets, skew=1.1, seed=1, rule_skew=spec.rule_skew
    )
    return policy, [parse_packet(line) for line in lines]


def _corpus() -> tuple[Any, list[Any]] | None:
    from cli.simulate import read_trace
    from compiler import classbench

    rules_file, trace_file = CORPUS / "jiachang_acl1_1k", CORPUS / "jiachang_acl1_1k_trace"
    if not rules_file.exists() or not trace_file.exists():
        return None
    filters = classbench.parse_filters(rules_file.read_text().splitlines())
    text = classbench.filters_to_policy(filters, source_name=rules_file.name, actions="allow-drop")
    return _policy(text, "jiachang_acl1_1k.fw"), read_trace(str(trace_file))


def simulate_rows(packets: int, pps: float) -> list[dict[str, Any]]:
    """Part 1: one row per trace, both modes."""
    from backends.nic_profile import load_profile
    from runtime.flow_cache import CacheConfig
    from runtime.simulate import simulate

    profile = load_profile("software")
    jobs: list[tuple[str, Any, list[Any]]] = []
    for spec in TRACES:
        policy, trace = _generated(spec, packets)
        jobs.append((spec.label, policy, trace))
    corpus = _corpus()
    if corpus is not None:
        jobs.append(("jiachang_acl1_1k + its ClassBench trace", *corpus))
    rows = []
    for label, policy, trace in jobs:
        row: dict[str, Any] = {"trace": label, "packets": len(trace)}
        row["flows"] = len({p.values for p in trace})
        for mode in ("megaflow", "exact"):
            result = simulate(policy, trace, profile, CacheConfig(mode=mode), pps=pps)
            row[mode] = result
        print(_sim_line(row), file=sys.stderr)
        rows.append(row)
    return rows


def _sim_line(row: dict[str, Any]) -> str:
    mega, exact = row["megaflow"], row["exact"]
    ratio = exact.peak_occupancy / max(1, mega.peak_occupancy)
    met = ratio >= 10 and mega.hit_ratio >= exact.hit_ratio
    return (
        f"| {row['trace']} | {row['packets']} | {row['flows']} | {mega.peak_occupancy} | "
        f"{mega.hit_ratio:.3f} | {mega.distinct_masks} | {exact.peak_occupancy} | "
        f"{exact.hit_ratio:.3f} | {ratio:.1f}x | {'yes' if met else 'no'} | "
        f"{1e3 * mega.miss_seconds / max(1, mega.misses):.2f} |"
    )


def agent_rows(flows: int) -> list[dict[str, Any]]:
    """Part 2: the real slow path's events through the agent into the NIC model."""
    from backends.nic_profile import load_profile
    from bench.workloads import generate_rules, policy_text, trace_lines
    from compiler.packet_syntax import parse_packet
    from runtime.agent.core import Agent, AgentConfig
    from runtime.flow_cache import CacheConfig
    from runtime.nic_model import NicModel
    from runtime.testrun import test_run
    from verify.frames import frame

    policy = _policy(policy_text("acl", 1000, seed=1), "acl1000.fw")
    rules = generate_rules("acl", 1000, seed=1)
    packets = [
        parse_packet(line)
        for line in trace_lines(rules, flows=flows, packets=flows, skew=0.0, seed=5)
    ]
    distinct = list({p.values: p for p in packets}.values())
    frames = [frame(p) for p in distinct]
    rows = []
    for mode in ("megaflow", "exact"):
        profile = load_profile("software")
        model = NicModel(profile)
        config = AgentConfig(
            device="lo",
            direction="ingress",
            profile=profile,
            cache=CacheConfig(mode=mode, max_insert_rate=None),
            proactive=False,
            queue_size=len(frames) + 1,
            dedup_ns=0,
        )
        agent = Agent(config, lambda: policy, installer=model, attach=False)
        agent.start()
        assert agent.slow_path is not None and agent.cache is not None
        try:
            for data in frames:
                test_run(agent.slow_path.fd, data)
            start = time.perf_counter()
            agent.slow_path.poll_events(0)
            handled = 0
            while n := agent.handle_events():
                handled += n
            seconds = time.perf_counter() - start
            installs = agent.cache.stats["installs"]
            # Latency, one new flow at a time (rules removed so every flow misses).
            latencies = []
            for data in frames[:500]:
                agent.cache.remove_all()
                began = time.perf_counter()
                test_run(agent.slow_path.fd, data)
                agent.slow_path.poll_events(0)
                agent.handle_events()
                latencies.append(time.perf_counter() - began)
        finally:
            agent.stop()
        latencies.sort()
        rows.append(
            {
                "mode": mode,
                "events": handled,
                "installs": installs,
                "events_per_s": handled / seconds,
                "p50_ms": 1e3 * statistics.median(latencies),
                "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))],
            }
        )
        print(rows[-1], file=sys.stderr)
    return rows


def render(sim: list[dict[str, Any]], agent: list[dict[str, Any]] | None, pps: float) -> str:
    """The markdown tables."""
    out = [
        "# Rule cache benchmark (python -m bench.cache_bench)",
        "",
        f"Simulated at {pps:g} packets/s, insertion limit 1000 rules/s, max idle 30 s, "
        "software profile. Rules needed = peak occupancy.",
        "",
        "| trace | packets | distinct flows | megaflow rules | megaflow hit | megaflow masks "
        "| exact rules | exact hit | fewer rules | 10x at >= hit | ms per miss (megaflow) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        *(_sim_line(row) for row in sim),
    ]
    if agent:
        out += [
            "",
            "## Agent pipeline on this kernel (acl1000 slow path -> ring buffer -> queue -> "
            "megaflow -> NIC model)",
            "",
            "| mode | events | rules installed | events/s | first packet -> rule p50 (ms) "
            "| p99 (ms) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['mode']} | {r['events']} | {r['installs']} | {r['events_per_s']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
            for r in agent
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run both parts, print the tables and save them to bench/results/cache.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.cache_bench")
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--pps", type=float, default=5000.0)
    parser.add_argument("--agent-flows", type=int, default=5000)
    parser.add_argument("--no-agent", action="store_true", help="skip part 2 (root, bcc)")
    args = parser.parse_args(argv)
    sim = simulate_rows(args.packets, args.pps)
    agent = None if args.no_agent else agent_rows(args.agent_flows)
    text = render(sim, agent, args.pps)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
