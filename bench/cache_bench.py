"""Rule cache benchmark: megaflow vs exact 5-tuple, and the agent's event pipeline.

Part 1 (any machine, no kernel): ``flowc simulate``'s engine replays Zipf
flow traces through slow path + cache for a ClassBench-style 1,000-rule ACL
(bench seed 1) and for the ClassBench corpus pair jiachang_acl1_1k + its
trace. Both modes see the same packets, clock (``--pps``), insertion rate
limit (1,000 rules/s) and idle timeout (30 s); rules needed = peak
occupancy. Traces differ in how many distinct flows they hold and in how
flows spread over rules: uniformly, or with Zipf(1.0) rule popularity
(ClassBench's own trace generator gives filters Pareto-distributed header
counts). Megaflow mode runs again with the construction before issue 17
(:func:`ir.megaflow.megaflow_by_algebra`), for its rule count and speed.

Part 2 (root, bcc): the agent's real pipeline on this kernel. A 1,000-rule
slow path is fed distinct flows with BPF_PROG_TEST_RUN; the program's ring
buffer events go through the agent's queue, the megaflow computation, the
proof and the install into the NIC model (this kernel has no cls_flower, so
the netlink install itself is not in these numbers), per mode, with the
construction and proof before issue 17 and now, in one process. Reported:
events per second handled from a full ring buffer; the latency from a
flow's first packet (the program's timestamp) to its rule being installed,
one flow at a time, under new flows offered at half the issue's target
rate, and at half the agent's own measured rate; a cProfile of the event
path with each stage's share.

    python -m bench.cache_bench [--packets 200000] [--no-agent] [--no-reference]
    python -m bench.cache_bench --no-agent --save-sim sim.json   # part 1, no lock
    flock /tmp/flowc-kernel.lock python -m bench.cache_bench --load-sim sim.json

Targets: issue 6, at least 10x fewer rules than exact 5-tuple at equal or
better hit ratio; issue 17, >= 10,000 events/s (megaflow) and >= 20,000/s
(exact) on one core, p99 first-packet-to-rule <= 5 ms at half that load,
megaflow rules within 1.25x of the construction before it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# FLOWC_CORPORA as in bench.compile_bench (a worktree is not beside shared/).
CORPUS = (
    Path(
        os.environ.get("FLOWC_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora")
    )
    / "classbench"
)


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
        print(f"no ClassBench corpus at {CORPUS} (set FLOWC_CORPORA)", file=sys.stderr)
        return None
    filters = classbench.parse_filters(rules_file.read_text().splitlines())
    text = classbench.filters_to_policy(filters, source_name=rules_file.name, actions="allow-drop")
    return _policy(text, "jiachang_acl1_1k.fw"), read_trace(str(trace_file))


# Targets of issue 17 (one core, this kernel's ring buffer into the NIC model).
TARGET_EVENTS = {"megaflow": 10_000, "exact": 20_000}
TARGET_P99_MS = 5.0
TARGET_RULES_RATIO = 1.25
ALGORITHM_LABEL = {"algebra": "before (cube algebra, region-walk proof)", "lengths": "now"}


def simulate_rows(packets: int, pps: float, reference: bool) -> list[dict[str, Any]]:
    """Part 1: one row per trace, both modes; with ``reference``, megaflow mode
    again with the construction before issue 17, for its rule count and speed."""
    # backends.flower before backends.nic_profile: they import each other.
    from backends.flower.lowering import expand  # noqa: F401
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
        if reference:
            config = CacheConfig(mode="megaflow", algorithm="algebra")
            row["before"] = simulate(policy, trace, profile, config, pps=pps)
        print(_sim_line(row), file=sys.stderr)
        rows.append(row)
    return rows


def _ms_per_miss(result: Any) -> float:
    return 1e3 * result.miss_seconds / max(1, result.misses)


def _sim_line(row: dict[str, Any]) -> str:
    mega, exact = row["megaflow"], row["exact"]
    ratio = exact.peak_occupancy / max(1, mega.peak_occupancy)
    met = ratio >= 10 and mega.hit_ratio >= exact.hit_ratio
    line = (
        f"| {row['trace']} | {row['packets']} | {row['flows']} | {mega.peak_occupancy} | "
        f"{mega.hit_ratio:.3f} | {mega.distinct_masks} | {exact.peak_occupancy} | "
        f"{exact.hit_ratio:.3f} | {ratio:.1f}x | {'yes' if met else 'no'} | "
        f"{_ms_per_miss(mega):.3f} |"
    )
    before = row.get("before")
    if before is not None:
        growth = mega.peak_occupancy / max(1, before.peak_occupancy)
        line += (
            f" {before.peak_occupancy} | {growth:.2f}x "
            f"({'met' if growth <= TARGET_RULES_RATIO else 'not met'}) | "
            f"{_ms_per_miss(before):.2f} |"
        )
    return line


def _agent(policy: Any, mode: str, algorithm: str, queue: int, model: bool) -> Any:
    from backends.flower.lowering import expand  # noqa: F401
    from backends.nic_profile import load_profile
    from runtime.agent.core import Agent, AgentConfig
    from runtime.flow_cache import CacheConfig
    from runtime.nic_model import NicModel

    profile = load_profile("software")
    config = AgentConfig(
        device="lo",
        direction="ingress",
        profile=profile,
        cache=CacheConfig(mode=mode, max_insert_rate=None, algorithm=algorithm),
        proactive=False,
        queue_size=queue,
        dedup_ns=0,
    )
    slow_path = None
    if model:
        from runtime.agent.slow_path_model import SlowPathModel

        def slow_path(p: Any, generation: int) -> Any:
            return SlowPathModel(p, generation=generation, dedup_ns=0, ring_capacity=queue)

    agent = Agent(
        config, lambda: policy, installer=NicModel(profile), slow_path=slow_path, attach=False
    )
    agent.start()
    return agent


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")


def _paced(agent: Any, frames: list[Any], rate: float, send: Any) -> tuple[list[float], float, int]:
    """Offer ``frames`` (all new flows) at ``rate`` per second through the slow
    path while the agent loop runs on the same core; returns the installs'
    first-packet-to-rule latencies (s), the seconds until the last was handled
    and the drops."""
    agent.cache.remove_all()
    agent.install_latency.clear()
    samples: list[float] = []
    drops = agent.queue.dropped
    start = time.monotonic()
    sent = 0
    while True:
        due = min(len(frames), int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            send(agent, frames[sent])
            sent += 1
        agent.slow_path.poll_events(0)
        agent.handle_events()
        # The agent keeps its last 1,024 samples: take them before they are trimmed.
        samples.extend(agent.install_latency)
        agent.install_latency.clear()
        if sent == len(frames) and not len(agent.queue):
            agent.slow_path.poll_events(0)
            if not len(agent.queue):
                break
    return samples, time.monotonic() - start, agent.queue.dropped - drops


# Stages of the event path: (label, function name, file the function is in).
STAGES = (
    ("ring buffer + queue", "poll_events", "runtime/bpf_loader.py"),
    ("cache look-up", "lookup", "runtime/flow_cache.py"),
    ("megaflow", "megaflow", "ir/megaflow.py"),
    ("megaflow", "megaflow_by_algebra", "ir/megaflow.py"),
    ("proof", "decides_whole", "ir/megaflow.py"),
    ("proof", "decides_whole_by_walk", "ir/megaflow.py"),
    ("flower match (expand, cube; direct)", "expand", "backends/flower/lowering.py"),
    ("flower match (expand, cube; direct)", "cube", "backends/flower/rules.py"),
    ("flower match (expand, cube; direct)", "_tuple_match", "runtime/flow_cache.py"),
    ("off the malformed views", "_off_malformed_views", "runtime/flow_cache.py"),
    ("install into the NIC model", "add", "runtime/nic_model.py"),
)


def _stages(stats: Any) -> dict[str, float]:
    """Share of the profiled time per stage (cumulative time of its functions)."""
    shares: dict[str, float] = {}
    total = stats.total_tt or 1.0
    for (path, _line, name), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for label, function, where in STAGES:
            if name == function and path.endswith(where):
                shares[label] = shares.get(label, 0.0) + cumulative / total
    return shares


def _profile(
    agent: Any, frames: list[Any], top: int, send: Any
) -> tuple[list[str], dict[str, float]]:
    """cProfile of the event path (ring buffer poll + handle) on ``frames``: the
    top entries, and the share of time per stage."""
    import cProfile
    import io
    import pstats

    agent.cache.remove_all()
    for data in frames:
        send(agent, data)
    profiler = cProfile.Profile()
    profiler.enable()
    agent.slow_path.poll_events(0)
    while agent.handle_events():
        pass
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return [ln.replace(root, "") for ln in lines[start : start + top + 1]], _stages(stats)


def _send_frame(agent: Any, data: bytes) -> None:
    from runtime.testrun import test_run

    test_run(agent.slow_path.fd, data)


def _send_event(agent: Any, item: tuple[Any, int]) -> None:
    """The slow path model's ring gets the record the program would write."""
    from backends.bpf.abi import Event

    key, rule = item
    agent.slow_path.ring.append(
        Event(key=key, rule=rule, generation=agent.generation, ts_ns=time.monotonic_ns())
    )


def agent_rows(
    flows: int, paced_flows: int, profile_events: int, model: bool = False
) -> list[dict[str, Any]]:
    """Part 2: the real slow path's events through the agent into the NIC model,
    per mode, with the construction before issue 17 and now. With ``model``,
    the in-memory slow path model's records instead (no kernel, no ring buffer:
    the agent's own share of the path)."""
    from backends.bpf.abi import FlowKey
    from bench.workloads import generate_rules, policy_text, trace_lines
    from compiler.packet_syntax import parse_packet
    from ir.interp import evaluate
    from verify.frames import frame

    policy = _policy(policy_text("acl", 1000, seed=1), "acl1000.fw")
    rules = generate_rules("acl", 1000, seed=1)
    packets = [
        parse_packet(line)
        for line in trace_lines(rules, flows=flows, packets=flows, skew=0.0, seed=5)
    ]
    distinct = list({p.values: p for p in packets}.values())
    frames: list[Any]
    if model:
        frames = [
            (FlowKey.from_packet(p), policy.rules.index(evaluate(policy, p).rule)) for p in distinct
        ]
        send: Any = _send_event
    else:
        frames = [frame(p) for p in distinct]
        send = _send_frame
    rows = []
    for mode in ("megaflow", "exact"):
        for algorithm in ("algebra", "lengths"):
            agent = _agent(policy, mode, algorithm, len(frames) + 1, model)
            assert agent.slow_path is not None and agent.cache is not None
            try:
                for data in frames:
                    send(agent, data)
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
                    send(agent, data)
                    agent.slow_path.poll_events(0)
                    agent.handle_events()
                    latencies.append(time.perf_counter() - began)
                rate = TARGET_EVENTS[mode] / 2
                loaded, taken, drops = _paced(agent, frames[:paced_flows], rate, send)
                # And at half the rate this agent measured: the latency it gives at
                # a load it can take.
                own_rate = handled / seconds / 2
                own, _, _ = _paced(agent, frames[:paced_flows], own_rate, send)
                top, stages = _profile(agent, frames[:profile_events], 14, send)
            finally:
                agent.stop()
            rows.append(
                {
                    "mode": mode,
                    "algorithm": algorithm,
                    "events": handled,
                    "installs": installs,
                    "events_per_s": handled / seconds,
                    "p50_ms": 1e3 * statistics.median(latencies),
                    "p99_ms": 1e3 * _percentile(latencies, 0.99),
                    "load": rate,
                    "load_flows": min(paced_flows, len(frames)),
                    "load_installs": len(loaded),
                    "load_p50_ms": 1e3 * _percentile(loaded, 0.5),
                    "load_p99_ms": 1e3 * _percentile(loaded, 0.99),
                    "load_drops": drops,
                    "own_load": own_rate,
                    "own_p50_ms": 1e3 * _percentile(own, 0.5),
                    "own_p99_ms": 1e3 * _percentile(own, 0.99),
                    "load_seconds": (min(paced_flows, len(frames)) / rate, taken),
                    "profile": top,
                    "stages": stages,
                }
            )
            print({k: v for k, v in rows[-1].items() if k != "profile"}, file=sys.stderr)
    return rows


def _save_sim(path: Path, rows: list[dict[str, Any]]) -> None:
    import dataclasses
    import json

    from runtime.simulate import SimResult

    plain = [
        {k: dataclasses.asdict(v) if isinstance(v, SimResult) else v for k, v in row.items()}
        for row in rows
    ]
    path.write_text(json.dumps(plain, indent=1))


def _load_sim(path: Path) -> list[dict[str, Any]]:
    import json

    from runtime.flow_cache import FlowCache  # noqa: F401  (backends import order)
    from runtime.simulate import SimResult

    return [
        {k: SimResult(**v) if isinstance(v, dict) else v for k, v in row.items()}
        for row in json.loads(path.read_text())
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def render(
    sim: list[dict[str, Any]],
    agent: list[dict[str, Any]] | None,
    pps: float,
    *,
    model: bool = False,
) -> str:
    """The markdown tables."""
    reference = bool(sim) and "before" in sim[0]
    head = (
        "| trace | packets | distinct flows | megaflow rules | megaflow hit | megaflow masks "
        "| exact rules | exact hit | fewer rules | 10x at >= hit | ms per miss (megaflow) |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    if reference:
        head += " megaflow rules before | now / before (<= 1.25x) | ms per miss before |"
        rule += "---:|---|---:|"
    out = [
        "# Rule cache benchmark (python -m bench.cache_bench)",
        "",
        f"Simulated at {pps:g} packets/s, insertion limit 1000 rules/s, max idle 30 s, "
        'software profile. Rules needed = peak occupancy. "Before" is the megaflow '
        "construction before issue 17 (cube algebra at every greedy step), run in the "
        "same process on the same traces.",
        "",
        head,
        rule,
        *(_sim_line(row) for row in sim),
    ]
    if agent:
        out += [
            "",
            (
                "## Agent pipeline on the slow path model (no kernel: acl1000 records -> "
                "queue -> megaflow -> proof -> NIC model)"
                if model
                else "## Agent pipeline on this kernel (acl1000 slow path -> ring buffer -> "
                "queue -> megaflow -> proof -> NIC model)"
            ),
            "",
            *(
                [
                    "The kernel lock was not to be had in time, so this run replaces "
                    "BPF_PROG_TEST_RUN and the ring buffer with the in-memory slow path "
                    "model's records (the same Event structs, the agent's same queue and "
                    "decoding); everything from the queue on is the same code.",
                    "",
                ]
                if model
                else []
            ),
            "One process, one core: BPF_PROG_TEST_RUN feeds the slow path, whose ring-buffer "
            "events the agent polls, queues, turns into proven cache rules and installs into "
            "the NIC model. Events/s: a full ring buffer drained. One at a time: a single new "
            "flow's first packet to its rule installed. Under load: new flows offered at half "
            "the events/s target, the generator (test_run) sharing the core with the agent; "
            "latency from the program's timestamp of the first packet to the install. "
            "Load average when the run finished (2 cores, shared): "
            + " / ".join(f"{v:.1f}" for v in os.getloadavg())
            + " (1/5/15 min): absolute rates are this machine's share of a core; the "
            "before/now ratios are within one process.",
            "",
            "| mode | construction | events | rules installed | events/s | target | "
            "one at a time p50 (ms) | p99 (ms) | load (flows/s) | flows | installs | "
            "seconds offered / taken | p50 (ms) | p99 (ms) | p99 <= 5 ms | drops | "
            "half its own rate (flows/s) | p50 (ms) | p99 (ms) |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
            "---:|---:|---:|",
        ]
        for r in agent:
            target = TARGET_EVENTS[r["mode"]]
            out.append(
                f"| {r['mode']} | {ALGORITHM_LABEL[r['algorithm']]} | {r['events']} | "
                f"{r['installs']} | {r['events_per_s']:.0f} | >= {target}: "
                f"{_met(r['events_per_s'] >= target)} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['load']:.0f} | {r['load_flows']} | {r['load_installs']} | "
                f"{r['load_seconds'][0]:.2f} / {r['load_seconds'][1]:.2f} | "
                f"{r['load_p50_ms']:.2f} | {r['load_p99_ms']:.2f} | "
                f"{_met(r['load_p99_ms'] <= TARGET_P99_MS)} | {r['load_drops']} | "
                f"{r['own_load']:.0f} | {r['own_p50_ms']:.2f} | {r['own_p99_ms']:.2f} |"
            )
        out += ["", "### Targets (now)", ""]
        for r in agent:
            if r["algorithm"] != "lengths":
                continue
            target = TARGET_EVENTS[r["mode"]]
            biggest = sorted(r["stages"].items(), key=lambda kv: -kv[1])[:3]
            why = ", ".join(f"{label} {100 * share:.0f}%" for label, share in biggest)
            before = next(
                (b for b in agent if b["mode"] == r["mode"] and b["algorithm"] == "algebra"), None
            )
            speedup = (
                f" ({r['events_per_s'] / before['events_per_s']:.1f}x before)" if before else ""
            )
            line = (
                f"* {r['mode']}: {r['events_per_s']:.0f} events/s{speedup} against >= {target}: "
                f"{_met(r['events_per_s'] >= target)}"
            )
            if r["events_per_s"] < target:
                line += (
                    f"; {1e6 / r['events_per_s']:.0f} µs per event in Python on one core "
                    f"against a budget of {1e6 / target:.0f} µs, the largest stages {why}"
                )
            line += (
                f". p99 under {r['load']:.0f} new flows/s: {r['load_p99_ms']:.2f} ms: "
                f"{_met(r['load_p99_ms'] <= TARGET_P99_MS)}"
            )
            if r["load_p99_ms"] > TARGET_P99_MS:
                taken = r["load_seconds"]
                line += (
                    f" (the agent took {taken[1]:.2f} s for {taken[0]:.2f} s of offered flows, "
                    "so the queue grew and the latency with it)"
                )
            out.append(line + ".")
        out += [
            "",
            "### Where an event's time goes (share of the profiled event path)",
            "",
            "| mode | construction | µs per event (throughput run) | "
            + " | ".join(dict.fromkeys(label for label, _, _ in STAGES))
            + " |",
            "|---|---|---:|" + "---:|" * len(dict.fromkeys(label for label, _, _ in STAGES)),
        ]
        for r in agent:
            shares = [
                f"{100 * r['stages'].get(label, 0.0):.0f}%"
                for label in dict.fromkeys(label for label, _, _ in STAGES)
            ]
            out.append(
                f"| {r['mode']} | {ALGORITHM_LABEL[r['algorithm']]} | "
                f"{1e6 / r['events_per_s']:.0f} | " + " | ".join(shares) + " |"
            )
        for r in agent:
            out += [
                "",
                f"### Profile: {r['mode']} mode, {ALGORITHM_LABEL[r['algorithm']]} "
                "(cProfile, cumulative, event path only)",
                "",
                "```",
                *r["profile"],
                "```",
            ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run both parts, print the tables and save them to bench/results/cache.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.cache_bench")
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--pps", type=float, default=5000.0)
    parser.add_argument("--agent-flows", type=int, default=5000)
    parser.add_argument("--paced-flows", type=int, default=3000, help="flows offered under load")
    parser.add_argument("--profile-events", type=int, default=1000)
    parser.add_argument("--no-agent", action="store_true", help="skip part 2 (root, bcc)")
    parser.add_argument(
        "--model-slow-path",
        action="store_true",
        help="part 2 on the in-memory slow path model (no kernel, no ring buffer)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the construction before issue 17"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "cache.md")
    parser.add_argument(
        "--save-sim", type=Path, help="also write part 1's rows here (JSON), to reuse"
    )
    parser.add_argument(
        "--load-sim",
        type=Path,
        help="take part 1's rows from a --save-sim file (part 1 needs no kernel lock)",
    )
    args = parser.parse_args(argv)
    if args.load_sim is not None:
        sim = _load_sim(args.load_sim)
    else:
        sim = simulate_rows(args.packets, args.pps, not args.no_reference)
    if args.save_sim is not None:
        _save_sim(args.save_sim, sim)
    agent = (
        None
        if args.no_agent
        else agent_rows(
            args.agent_flows, args.paced_flows, args.profile_events, args.model_slow_path
        )
    )
    text = render(sim, agent, args.pps, model=args.model_slow_path)
    print(text)
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
