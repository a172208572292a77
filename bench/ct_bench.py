"""Connection tracking cost in the slow path, and the reference tracker's speed.

For each size the same ``fw`` policy (bench.workloads, as bench/bpf_bench.py)
gets ``allow state established,related`` as its first rule and is compiled
with connection tracking (a table pinned for the bench alone); the policy
without that line is compiled as today's stateless program. Then, in
interleaved rounds (order rotating), the kernel-reported ns per
BPF_PROG_TEST_RUN repetition of:

* ``established (fast lane)``: TCP ACKs / UDP datagrams of connections put in
  the table as established beforehand; one rule decides every established
  packet, so the classifier is skipped. Each repetition updates the entry, as
  a real packet does.
* ``established (classified)``: the same packets with the fast lane switched
  off (flowc_config.ct_fast = 0): state is one more field of the classifier.
* ``stateless memo hit``: today's program on the same packets, repeated, so
  the class-tuple memo answers (the target's yardstick).
* ``new (first packet)``: distinct TCP SYN / UDP flows nobody has seen, each
  run once (repeat 1; the table is flushed before each round): two table
  misses, the classifier, and the commit when the policy allows. Compared
  with today's program on the same frames run once, and with the floor run
  once (repeat 1 costs more per run than a repeated run).
* ``floor``: an empty program, repeated and run once.

Also: the table's memory per entry (the kernel's memlock charge for the map
over its capacity) and the Python reference tracker's packets per second.

Targets: an established packet's net cost flat from 10 to 10,000 rules
(ratio <= 1.2x) and no higher than today's memo hit; the reference >= 100K
packets/s.

    python -m bench.ct_bench        # prints the tables, saves bench/results/conntrack.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from backends.bpf.conntrack import CtSpec
from backends.bpf.emit import BPF_DIR, lower
from bench.workloads import generate_rules, policy_text, trace_lines
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.conntrack import NS_PER_S, Connection, ConnKey, ConnTracker, CtConfig, TcpState
from ir.fields import PROTO_TCP, PROTO_UDP, TCP_FLAG_BITS
from ir.model import Policy
from ir.packet import Packet
from runtime.bpf_loader import SlowPath
from runtime.conntrack import CtTable, table_now_ns
from runtime.testrun import test_run
from verify.frames import frame

RESULTS = Path(__file__).resolve().parent / "results"
PIN = f"/sys/fs/bpf/flowc-bench-{os.getpid()}/ct"
ACK, SYN = TCP_FLAG_BITS["ack"], TCP_FLAG_BITS["syn"]


@dataclass
class Row:
    """One measured thing: a closure that returns mean ns per run, and its rounds."""

    size: int
    name: str
    run: Callable[[], float]
    floor: str  # which floor its net figure subtracts: "repeat" or "once"
    rounds: list[float] = field(default_factory=list)

    @property
    def ns(self) -> float:
        """Median over rounds."""
        return statistics.median(self.rounds)


def _packets(size: int, count: int) -> list[Packet]:
    """TCP and UDP packets of the size's trace (connection-tracked protocols)."""
    rules = generate_rules("fw", size, seed=11)
    out: list[Packet] = []
    for line in trace_lines(rules, flows=count * 4, packets=count * 4, skew=0.0, seed=11):
        p = parse_packet(line)
        if p.get("ip_proto") in (PROTO_TCP, PROTO_UDP) and p.get("frag") == 0:
            out.append(p)
        if len(out) == count:
            break
    return out


def _stateful_text(size: int) -> str:
    lines = policy_text("fw", size, seed=11).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("policy "))
    lines.insert(at + 1, "    allow state established,related")
    return "\n".join(lines) + "\n"


def _policy(text: str, name: str) -> Policy:
    result = compile_source(text, name)
    assert result.program is not None, result.diagnostics
    return result.program.policies[0]


def _mean_ns(fd: int, frames: list[bytes], repeat: int) -> float:
    return statistics.mean(test_run(fd, f, repeat=repeat).duration_ns for f in frames)


def _floor_fd(keep: list[object]) -> int:
    from bcc import BPF

    bpf = BPF(src_file=str(BPF_DIR / "bench_floor.c").encode())
    keep.append(bpf)
    fd: int = bpf.load_func(b"flowc_floor", BPF.SCHED_CLS).fd
    return fd


def _establish(table: CtTable, packets: list[Packet]) -> None:
    now = table_now_ns()
    for p in packets:
        tcp = TcpState.ESTABLISHED if p.get("ip_proto") == PROTO_TCP else TcpState.NONE
        family = "ip4" if p.get("family") == 4 else "ip6"
        key = ConnKey(
            p.get("family"),
            p.get("ip_proto"),
            p.get(f"{family}_src"),
            p.get(f"{family}_dst"),
            p.get("sport"),
            p.get("dport"),
        )
        table.put(Connection(key, True, tcp, 0, now + 10**6 * NS_PER_S, now, now, (1, 1)))


def _reply(p: Packet) -> Packet:
    """The packet the other side of p's connection sends back."""
    family = "ip4" if p.get("family") == 4 else "ip6"
    src, dst = p.get(f"{family}_src"), p.get(f"{family}_dst")
    sport, dport = p.get("sport"), p.get("dport")
    swapped = p.with_field(f"{family}_src", dst).with_field(f"{family}_dst", src)
    return swapped.with_field("sport", dport).with_field("dport", sport)


PRECISE_ROW = "established (fast lane), bpf_ktime_get_ns clock"
PRECISE_CLOCK = (
    "cfg->ct_now_ns ? cfg->ct_now_ns : bpf_ktime_get_coarse_ns()",
    "cfg->ct_now_ns ? cfg->ct_now_ns : bpf_ktime_get_ns()",
)
"""The tracker's clock as it was before CLOCK_MONOTONIC_COARSE (bpf/flowc_ct.h
flowc_ct_now), for the row that measures what the coarse clock saves."""


def _rows_for(
    size: int, args: argparse.Namespace, keep: list[object], smallest: bool = False
) -> list[Row]:
    spec = CtSpec(CtConfig(capacity=args.capacity), pin=PIN)
    stateful = SlowPath(
        lower(_policy(_stateful_text(size), f"ct{size}.fw"), conntrack=spec),
        ifindex_of=lambda _d: 1,
    )
    stateless = SlowPath(
        lower(_policy(policy_text("fw", size, seed=11), f"fw{size}.fw")), ifindex_of=lambda _d: 1
    )
    keep += [stateful, stateless]
    assert stateful.program.fast_rule == 0
    packets = _packets(size, args.packets)
    established = [
        frame(p.with_field("tcp_flags", ACK) if p.get("ip_proto") == PROTO_TCP else p)
        for p in packets
    ]
    # The same connections' packets coming back: the same canonical key, one
    # lookup (keyed by the original tuple, they paid a missed lookup first).
    replies = [
        frame(r.with_field("tcp_flags", ACK) if r.get("ip_proto") == PROTO_TCP else r)
        for r in map(_reply, packets)
    ]
    # Distinct flows (a port of their own each): every one is a first packet.
    fresh = [
        p.with_field("sport", 1024 + i).with_field(
            "tcp_flags", SYN if p.get("ip_proto") == PROTO_TCP else 0
        )
        for i, p in enumerate(_packets(size, args.new_flows))
    ]
    fresh_frames = [frame(p) for p in fresh]
    with_fast = stateful.program
    without_fast = replace(with_fast, fast_rule=None)

    def lane(program: object) -> None:
        stateful.program = program  # type: ignore[assignment]
        stateful.set_config(generation=1, events=False, dedup_ns=stateful.dedup_ns)

    def est(fast: bool, frames: list[bytes] = established, fd: int | None = None) -> float:
        lane(with_fast if fast else without_fast)
        with CtTable(PIN) as table:
            table.flush()
            _establish(table, packets)
        try:
            return _mean_ns(stateful.fd if fd is None else fd, frames, args.repeat)
        finally:
            lane(with_fast)

    def new() -> float:
        with CtTable(PIN) as table:
            table.flush()
        return _mean_ns(stateful.fd, fresh_frames, 1)

    extra: list[Row] = []
    if smallest:
        assert PRECISE_CLOCK[0] in with_fast.source
        precise = SlowPath(
            replace(with_fast, source=with_fast.source.replace(*PRECISE_CLOCK)),
            ifindex_of=lambda _d: 1,
        )
        precise.set_config(generation=1, events=False, dedup_ns=precise.dedup_ns)
        keep.append(precise)
        extra.append(
            Row(
                size,
                PRECISE_ROW,
                lambda: est(True, fd=precise.fd),
                "repeat",
            )
        )
    return [
        Row(size, "established (fast lane)", lambda: est(True), "repeat"),
        *extra,
        Row(size, "established reply (fast lane)", lambda: est(True, replies), "repeat"),
        Row(size, "established (classified)", lambda: est(False), "repeat"),
        Row(
            size,
            "stateless memo hit",
            lambda: _mean_ns(stateless.fd, established, args.repeat),
            "repeat",
        ),
        Row(size, "new (first packet)", new, "once"),
        Row(size, "stateless, run once", lambda: _mean_ns(stateless.fd, fresh_frames, 1), "once"),
    ]


def reference_rate(count: int) -> tuple[float, float]:
    """(packets/s of observe+commit, packets/s of step with a policy) of the
    Python tracker on a mix of TCP connections (handshake, data, close) and UDP
    request/replies."""
    lines: list[str] = []
    for i in range(count // 10):
        a, port = f"10.0.{i // 250 % 250}.{i % 250 + 1}", 20000 + i % 40000
        fwd, back = f"{a}:{port} -> 10.9.0.1:80", f"10.9.0.1:80 -> {a}:{port}"
        lines += [
            f"tcp {fwd} flags syn",
            f"tcp {back} flags syn,ack",
            f"tcp {fwd} flags ack",
            f"tcp {fwd} flags psh,ack",
            f"tcp {back} flags ack",
            f"tcp {fwd} flags fin,ack",
            f"tcp {back} flags fin,ack",
            f"tcp {fwd} flags ack",
            f"udp {a}:{port} -> 10.9.0.53:53",
            f"udp 10.9.0.53:53 -> {a}:{port}",
        ]
    packets = [parse_packet(line) for line in lines]
    policy = _policy(
        "policy p ingress on eth0 {\n default drop\n allow state established,related\n"
        " drop state invalid\n allow tcp dport 80\n allow udp dport 53\n}\n",
        "ref.fw",
    )
    tracker = ConnTracker(CtConfig(capacity=len(packets)))
    start = time.perf_counter()
    for i, p in enumerate(packets):
        seen = tracker.observe(p, i)
        tracker.commit(seen, i)
    bare = len(packets) / (time.perf_counter() - start)
    tracker = ConnTracker(CtConfig(capacity=len(packets)))
    start = time.perf_counter()
    for i, p in enumerate(packets):
        tracker.step(policy, p, i)
    stepped = len(packets) / (time.perf_counter() - start)
    return bare, stepped


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print/save the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.ct_bench")
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--packets", type=int, default=64, help="established packets per size")
    parser.add_argument("--new-flows", type=int, default=512, help="distinct new flows per round")
    parser.add_argument("--repeat", type=int, default=5000, help="repetitions per established run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--capacity", type=int, default=65536)
    parser.add_argument("--reference-packets", type=int, default=200_000)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    keep: list[object] = []
    try:
        rows: list[Row] = []
        for size in sizes:
            rows += _rows_for(size, args, keep, smallest=size == sizes[0])
            print(f"  loaded {size}", file=sys.stderr)
        floor_fd = _floor_fd(keep)
        floor_frames = [frame(p) for p in _packets(sizes[0], args.packets)]
        floors = [
            Row(0, "floor (repeated)", lambda: _mean_ns(floor_fd, floor_frames, args.repeat), ""),
            Row(0, "floor (run once)", lambda: _mean_ns(floor_fd, floor_frames * 8, 1), ""),
        ]
        rows += floors
        for r in range(args.rounds):
            shift = r % len(rows)
            for row in rows[shift:] + rows[:shift]:
                row.rounds.append(row.run())
            print(f"  round {r + 1}/{args.rounds}", file=sys.stderr)
        with CtTable(PIN) as table:
            per_entry = table.memlock_bytes() / args.capacity
    finally:
        for thing in keep:
            if isinstance(thing, SlowPath):
                thing.close()
        shutil.rmtree(os.path.dirname(PIN), ignore_errors=True)
    bare, stepped = reference_rate(args.reference_packets)
    text = _report(rows, floors, sizes, args, per_entry, bare, stepped)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "conntrack.md").write_text(text + "\n")
    return 0


def _report(
    rows: list[Row],
    floors: list[Row],
    sizes: list[int],
    args: argparse.Namespace,
    per_entry: float,
    bare: float,
    stepped: float,
) -> str:
    floor = {"repeat": floors[0].ns, "once": floors[1].ns}
    net = {(r.size, r.name): r.ns - floor[r.floor] for r in rows if r.floor}
    lines = [
        "# Connection tracking benchmark",
        "",
        f"`python -m bench.ct_bench` (fw policies with `allow state established,related` "
        f"first; {args.packets} established TCP/UDP packets per size, {args.repeat} "
        f"BPF_PROG_TEST_RUN repetitions each; {args.new_flows} distinct new flows per round "
        f"run once each; median of {args.rounds} interleaved rounds; kernel-reported ns per "
        f"run). `net` = minus the floor measured the same way in the same rounds "
        f"(repeated: {floor['repeat']:.0f} ns, run once: {floor['once']:.0f} ns).",
        "",
        "| rules | packet | ns/packet | net ns |",
        "|---:|---|---:|---:|",
    ]
    for r in rows:
        if r.floor:
            lines.append(f"| {r.size} | {r.name} | {r.ns:.0f} | {net[(r.size, r.name)]:.0f} |")
    for r in floors:
        lines.append(f"| - | {r.name} | {r.ns:.0f} | 0 |")
    lo, hi = sizes[0], sizes[-1]
    fast_lo, fast_hi = net[(lo, "established (fast lane)")], net[(hi, "established (fast lane)")]
    ratio = fast_hi / fast_lo if fast_lo > 0 else float("inf")
    memo = {s: net[(s, "stateless memo hit")] for s in sizes}
    worst = max(net[(s, "established (fast lane)")] - memo[s] for s in sizes)
    flat = ratio <= 1.2
    cheap = worst <= 0
    precise_saved = net[(lo, PRECISE_ROW)] - fast_lo
    reply_at = max(sizes, key=lambda s: net[(s, "established reply (fast lane)")])
    reply_worst = net[(reply_at, "established reply (fast lane)")]

    lines += [
        "",
        "## Targets",
        "",
        f"* Established net cost flat from {lo} to {hi} rules (<= 1.2x): "
        f"{fast_hi:.0f} / {fast_lo:.0f} = {ratio:.2f}x, **{'met' if flat else 'not met'}**.",
        f"* Established net cost no higher than today's memo hit: worst excess "
        f"{worst:+.0f} ns over the memo hit at the same size, "
        f"**{'met' if cheap else 'not met'}**"
        + (
            ""
            if cheap
            else " (an established packet pays a hash-map lookup of its 40-byte tuple, "
            "which the memo hit does not: the memo is a per-CPU array read; see the notes)"
        )
        + ".",
        f"* What the coarse clock saved (bpf_ktime_get_coarse_ns() for bpf_ktime_get_ns(), "
        f"{lo} rules, same rounds): {precise_saved:.0f} ns of the "
        f"{net[(lo, PRECISE_ROW)]:.0f} ns an established packet cost net with the precise clock.",
        f"* An established packet in the reply direction (the same canonical key as the "
        f"original direction's, one lookup): {reply_worst:.0f} ns net at worst, "
        f"{reply_worst - memo[reply_at]:+.0f} ns over the memo hit at {reply_at} rules.",
        f"* Memory per entry: {per_entry:.0f} bytes (memlock of the preallocated hash map "
        f"over its {args.capacity} entries: 40-byte key, 56-byte value, the kernel's "
        "htab_elem header).",
        f"* Python reference tracker: {bare:,.0f} packets/s observe+commit, {stepped:,.0f} "
        f"packets/s with the policy decision (ConnTracker.step), target >= 100,000: "
        f"**{'met' if bare >= 100_000 else 'not met'}** for the tracker alone, "
        f"**{'met' if stepped >= 100_000 else 'not met'}** with the policy.",
    ]
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
## Notes

* Where an established packet's time goes (bpf/flowc_ct.h, bpf/flowc_entry.h),
  measured once on 10 rules by deleting one part at a time from the generated
  C (BPF_PROG_TEST_RUN, 11 interleaved rounds, 2026-12-03; net of the floor):
  the whole packet 95 ns with bpf_ktime_get_ns(), 67 ns with the coarse clock;
  of those 67, ~40 ns are the hash-map lookup itself (jhash of the 40-byte
  tuple, the bucket walk, a 40-byte compare), ~3 ns building the tuple in the
  per-CPU scratch, ~4 ns the entry's update (counts, last-seen, expiry), and
  22 ns everything else (the scratch lookups, the state counter, the fast
  lane's action and rule counters), which is less than the memo hit's 36 ns.
  What separates an established packet from the memo hit is the one lookup in
  a table shared by every CPU, against the memo's inlined read of a per-CPU
  array: a connection's state has to be one for the host (a reply comes in on
  another CPU, another hook), so it cannot live in a per-CPU slot.
* The clock: CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns(), the monotonic
  time of the last tick) instead of CLOCK_MONOTONIC (bpf_ktime_get_ns(), which
  reads the TSC through the timekeeper). Idle timeouts are seconds; the coarse
  clock lags by less than a tick (4 ms at HZ=250). `flowc ct` and the
  collector's default read the same clock.
* The fast lane removes the classifier (the `classified` row minus the
  `fast lane` row), which is why the established cost does not grow with the
  rule count; what is left is the table, not the policy.
* Layout: `struct flowc_ct_key` (40 bytes: family, proto, pad, sport, dport,
  src[16], dst[16]; IPv4 in the first 4 bytes) -> `struct flowc_ct_entry`
  (56 bytes: expires/created/last ns, packets original/reply, replied, tcp,
  fin_from, start flags, hook, swapped, pad). The key is canonical (of the
  tuple and its reverse, the one whose (src, sport) is not above (dst,
  dport); `swapped` says which was the original), so a reply finds its
  connection with one lookup; ICMP echo keeps its request's tuple.
  BPF_MAP_TYPE_HASH, preallocated, pinned at /sys/fs/bpf/flowc/ct, one per host.
* A plain hash, not LRU: the reference's capacity rule is exact (a commit into
  a full table is refused and counted untracked, on_full decides the packet);
  an LRU map would evict a live connection instead, which no reference run can
  predict.
* The Python tracker's rate varies about 2x with the load of this shared
  2-core VM (other sessions' tests, a software-emulated guest kernel); run it
  on an idle machine for a figure that holds.
"""


if __name__ == "__main__":
    sys.exit(main())
