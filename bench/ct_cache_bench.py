"""Connection-rule benchmark: how many connections per second the agent's cache
turns into NIC rules on a host that tracks connections (issue 15 item 6: the
agent sustains >= 10,000 commits/s into the NIC model), and what the reference
tracker costs per packet (>= 100,000 packets/s).

No kernel: the connections are opened through :class:`ir.conntrack.ConnTracker`
(SYN in, SYN+ACK out, ACK in; the table is the slow path's), then each ACK's miss
goes through :meth:`runtime.flow_cache.FlowCache.on_miss` in connection mode
(table look-up, the connection cube, the proof, the flower match, the install
into :class:`runtime.nic_model.NicModel`). Timed: the cache's work per
connection only, and separately the tracker's per packet, each as the median
of interleaved rounds in one process (the machine is shared; ratios within a
run are what counts).

    python -m bench.ct_cache_bench [--connections 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from backends.nic_profile import load_profile
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.conntrack import NS_PER_S, ConnTracker, CtConfig
from ir.model import Program
from ir.packet import Packet
from runtime.flow_cache import CacheConfig, FlowCache, MissOutcome
from runtime.nic_model import NicModel

RESULTS = Path(__file__).resolve().parent / "results" / "ct_cache.md"

HOST = """
endpoint web {{ ip 10.0.0.0/16 }}
policy up_in ingress on eth0 {{
    default drop
    allow state established,related
{rules}
    allow state new tcp to web dport 443
}}
policy up_out egress on eth0 {{
    default drop
    allow state established,related
}}
"""


def host(rules: int) -> Program:
    """The stateful host with ``rules`` filler rules the connections do not hit."""
    filler = "\n".join(
        f"    drop tcp from 192.0.{i // 250}.{i % 250} dport {1000 + i}" for i in range(rules)
    )
    result = compile_source(HOST.format(rules=filler), "bench.fw")
    assert result.ok and result.program is not None
    return result.program


def connection_packets(n: int) -> list[tuple[Packet, Packet, Packet]]:
    """SYN, SYN+ACK, ACK of ``n`` distinct connections."""
    out = []
    for i in range(n):
        client = f"198.51.{(i >> 8) & 0xFF}.{i & 0xFF}"
        server = f"10.0.{(i >> 8) & 0xFF}.{(i & 0xFF) or 1}"
        port = 20000 + (i % 40000)
        out.append(
            (
                parse_packet(f"tcp {client}:{port} -> {server}:443 flags syn"),
                parse_packet(f"tcp {server}:443 -> {client}:{port} flags syn,ack"),
                parse_packet(f"tcp {client}:{port} -> {server}:443 flags ack"),
            )
        )
    return out


def one_round(program: Program, flows: list[tuple[Packet, Packet, Packet]]) -> dict[str, float]:
    """Open every connection, cache every one; seconds per stage."""
    ingress, egress = program.policy("up_in"), program.policy("up_out")
    tracker = ConnTracker(CtConfig(capacity=len(flows) + 1))
    now = [1000.0]
    profile = dataclasses.replace(load_profile("software"), max_rules=len(flows) + 16)
    nic = NicModel(profile, clock=lambda: now[0])
    cache = FlowCache(
        ingress,
        profile,
        nic,
        CacheConfig(max_insert_rate=None),
        clock=lambda: now[0],
        connections=tracker,
    )
    now_ns = int(now[0] * NS_PER_S)
    # The tracker alone (observe, then commit what starts a connection: every
    # packet here is allowed), on a table of its own.
    alone = ConnTracker(CtConfig(capacity=len(flows) + 1))
    started = time.perf_counter()
    for syn, synack, ack in flows:
        for packet in (syn, synack, ack):
            observation = alone.observe(packet, now_ns)
            if observation.starts is not None and not observation.stored:
                alone.commit(observation, now_ns, hook="up_in", packet=packet)
    tracker_alone = time.perf_counter() - started
    started = time.perf_counter()
    rules = []  # the rule each ACK was decided by: what its miss event carries
    for syn, synack, ack in flows:
        tracker.step(ingress, syn, now_ns)
        tracker.step(egress, synack, now_ns)
        rules.append(ingress.rules.index(tracker.step(ingress, ack, now_ns).verdict.rule))
    tracked = time.perf_counter() - started
    started = time.perf_counter()
    installed = 0
    for (_syn, _synack, ack), rule in zip(flows, rules, strict=True):
        installed += cache.on_miss(ack.values, rule=rule) == MissOutcome.INSTALLED
    cached = time.perf_counter() - started
    assert installed == len(flows), (installed, dict(cache.stats))
    return {
        "alone_s": tracker_alone,
        "tracker_s": tracked,
        "cache_s": cached,
        "packets": 3 * len(flows),
    }


def main() -> None:
    """Run the rounds and print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    flows = connection_packets(args.connections)
    rows = []
    programs = {n: host(n) for n in (10, 1000)}
    samples: dict[int, list[dict[str, float]]] = {n: [] for n in programs}
    for _ in range(args.rounds):
        for n, program in programs.items():  # interleaved
            samples[n].append(one_round(program, flows))
    for n, runs in samples.items():
        cache_s = statistics.median(r["cache_s"] for r in runs)
        tracker_s = statistics.median(r["tracker_s"] for r in runs)
        alone_s = statistics.median(r["alone_s"] for r in runs)
        packets = runs[0]["packets"]
        rows.append((n + 3, args.connections / cache_s, packets / alone_s, packets / tracker_s))
    lines = [
        "# Connection rules: agent cache and reference tracker (python -m bench.ct_cache_bench)",
        "",
        f"{args.connections} TCP connections opened through the reference tracker "
        "(3 packets each),",
        "then one miss each through the cache in connection mode into the NIC model;",
        f"medians of {args.rounds} interleaved rounds, one process, {time.strftime('%Y-%m-%d')}.",
        "",
        "| policy rules | connections cached/s | tracker packets/s "
        "| tracker + interpreter packets/s |",
        "|---:|---:|---:|---:|",
        *(f"| {n} | {c:,.0f} | {t:,.0f} | {w:,.0f} |" for n, c, t, w in rows),
        "",
        "Targets (issue 15): the agent >= 10,000 commits/s into the NIC model: "
        + ("met" if all(r[1] >= 10_000 for r in rows) else "NOT met")
        + f" (lowest {min(r[1] for r in rows):,.0f}/s); the reference tracker >= 100,000 "
        "packets/s: "
        + ("met" if all(r[2] >= 100_000 for r in rows) else "NOT met")
        + f" (lowest {min(r[2] for r in rows):,.0f}/s). With the policy decided by the "
        "reference interpreter (a linear first-match scan, the semantics, not a classifier) "
        "per packet, the last column.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
