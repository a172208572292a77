"""flowc against iptables and nftables: the same policy, the same packets, one run (root).

For each rule set (ClassBench acl1, fw1 and ipc1 from /work/shared/corpora, and
the generated ``fw`` family of :mod:`bench.workloads`) at 100, 1,000 and 10,000
rules, the benchmark creates one veth pair between two fresh network namespaces
per setup and installs the policy on the receiving side:

* ``flowc``: the bit-vector slow path (``backends.bpf``) as a cls_bpf
  direct-action filter on the receiving veth's tc ingress, class-tuple memo on
  as deployed; ``flowc-walk`` is the same program with the memo switched off
  (every packet walks the bit vectors, as a new flow's first packet does).
* ``iptables``: :func:`bench.netfilter_translate.iptables_rules`, one rule per
  IR rule in the raw table's PREROUTING chain (iptables-legacy when present,
  so the chain is a real xtables linear chain).
* ``nftables``: :func:`bench.netfilter_translate.nft_ruleset`, concatenated
  interval verdict maps with plain-rule fallbacks, in a ``prerouting`` chain
  at raw priority (the module docstring there says how the translation is done).
* ``floor``: the same pair with nothing installed.

Packets are the policy's region witnesses (:func:`ir.analysis.region_witnesses`,
one per rule whose region is not empty, IPv4) plus trace packets: the ClassBench
trace of acl1 (``jiachang_acl1_1k_trace``) where the set is acl1, and a
ClassBench-style trace (:func:`bench.workloads.trace_lines`) otherwise. They are
written into a netsniff-ng ``trafgen`` configuration with the receiver's MAC
address and sent from the other namespace.

First, every setup receives every packet exactly once and its per-rule counters
(flowc's rule stats map, ``iptables-save -c``, nft's rule and element counters)
are compared with :func:`ir.interp.evaluate` on the same packets: a disagreement
is printed and written to the results as a finding. Then rounds interleave the
setups (order rotating each round): each round sends ``--count`` packets through
each setup with ``trafgen -P 1`` and reads the send loop's CPU time, which
includes the receive side: veth delivers into the sender CPU's backlog, and
the softirq drains it as the sender's bottom half re-enables, on the same CPU.
ns/packet is that time divided by the count; "above floor" subtracts the floor
setup's figure of the same round set. Every trafgen run is bounded by its count
and a timeout; namespaces are removed on the way out, on failure too.

Needs root, bcc (scripts/setup.sh) and iptables, nftables and netsniff-ng
(``scripts/bench-setup.sh``). Rules go only into the namespaces it creates.

    flock /tmp/flowc-kernel.lock python -m bench.datapath_bench          # full table
    flock /tmp/flowc-kernel.lock python -m bench.datapath_bench --quick  # small, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.netfilter_translate import (
    NFT_TABLE,
    TranslateError,
    iptables_restore_text,
    iptables_rules,
    nft_ruleset,
    nft_text,
)
from bench.workloads import GenRule, generate_rules, policy_text, trace_lines
from ir.analysis import region_witnesses
from ir.fields import FAMILY_IPV4
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet

if TYPE_CHECKING:
    from compiler.classbench import Filter
    from runtime.bpf_loader import SlowPath
    from tests.netns import Pair

RESULTS = Path(__file__).resolve().parent / "results"
# The corpora sit beside the repository (FLOWC_CORPORA overrides, as in the tests).
CORPUS = (
    Path(
        os.environ.get(
            "FLOWC_CORPORA", Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
        )
    )
    / "classbench"
)
SETUPS = ("floor", "flowc", "flowc-walk", "iptables", "nftables")
TRAFGEN_TIMEOUT_S = 120
TRACE_PACKETS = 2000


class BenchError(Exception):
    """The benchmark cannot run (missing tool, failed install); the message says why."""


def _run(*cmd: str, stdin: str | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:6])}: {done.stderr.strip()[-400:]}")
    return done.stdout


def _iptables(tool: str) -> str:
    """The legacy xtables binary when installed (a real linear chain), else the default."""
    for name in (f"{tool}-legacy", tool):
        if shutil.which(name):
            return name
    raise BenchError(f"{tool} is missing (run scripts/bench-setup.sh)")


def missing_tools() -> list[str]:
    """Tools the benchmark needs that are not installed."""
    return [t for t in ("iptables-restore", "nft", "trafgen", "ip") if shutil.which(t) is None]


# ------------------------------------------------------------------ policies


@dataclass
class Workload:
    """One policy and its packets."""

    ruleset: str
    size: int
    policy: Policy
    packets: list[Packet]
    witnesses: int


def _compile(text: str, name: str) -> Policy:
    from compiler.frontend import compile_source

    result = compile_source(text, name)
    if result.program is None:
        raise BenchError(f"{name} does not compile")
    return result.program.policies[0]


def _classbench_policy(family: str, size: int) -> tuple[Policy, list[str]]:
    from compiler import classbench

    source = (
        CORPUS / "jiachang_acl1_1k"
        if family == "acl1" and size <= 1000
        else CORPUS / f"neurocuts_{family}_{'1k' if size <= 1000 else '10k'}"
    )
    if not source.exists():
        raise BenchError(f"{source} is missing")
    filters = classbench.parse_filters(source.read_text().splitlines())[:size]
    text = classbench.filters_to_policy(filters, source_name=source.name, actions="allow-drop")
    trace: list[str] = []
    trace_file = CORPUS / "jiachang_acl1_1k_trace"
    if family == "acl1" and trace_file.exists():
        lines = trace_file.read_text().splitlines()[:TRACE_PACKETS]
        trace = [classbench.trace_packet_line(p) for p in classbench.parse_trace(lines)]
    else:
        # No trace ships with this set: sample inside the filters' boxes, as
        # ClassBench's trace generator does.
        gen = [_as_gen(f) for f in filters]
        trace = list(trace_lines(gen, flows=TRACE_PACKETS, packets=TRACE_PACKETS, skew=0.0, seed=3))
    return _compile(text, f"{source.name}_{size}.fw"), trace


def _as_gen(f: Filter) -> GenRule:
    return GenRule(
        (int(f.src.network_address), f.src.prefixlen),
        (int(f.dst.network_address), f.dst.prefixlen),
        f.sport,
        f.dport,
        f.proto,
        "allow",
    )


def workload(ruleset: str, size: int) -> Workload:
    """The policy of ``ruleset`` at ``size`` rules with its witness and trace packets."""
    from compiler.packet_syntax import parse_packet

    if ruleset == "fw-gen":
        policy = _compile(policy_text("fw", size, seed=11), f"fw{size}.fw")
        rules = generate_rules("fw", size, seed=11)
        trace = list(
            trace_lines(rules, flows=TRACE_PACKETS, packets=TRACE_PACKETS, skew=0.0, seed=11)
        )
    else:
        policy, trace = _classbench_policy(ruleset, size)
    witnesses = [
        Packet(point)
        for point, _rule in region_witnesses(policy, per_rule=1)
        if point[0] == FAMILY_IPV4
    ]
    packets = witnesses + [parse_packet(line) for line in trace]
    return Workload(ruleset, size, policy, packets, len(witnesses))


# ------------------------------------------------------------------ packets


def trafgen_config(packets: list[Packet], dst_mac: bytes, src_mac: bytes) -> str:
    """A trafgen configuration: one packet block per packet, Ethernet header rewritten."""
    from verify.frames import frame

    blocks = []
    for p in packets:
        data = with_ip_checksum(dst_mac + src_mac + frame(p)[12:])
        blocks.append("{ " + ", ".join(f"0x{b:02x}" for b in data) + " }")
    return "\n".join(blocks) + "\n"


def with_ip_checksum(data: bytes) -> bytes:
    """The frame with its IPv4 header checksum filled in (flowc's test frames leave it
    zero: the BPF parser does not read it, but ip_rcv drops such packets before
    PREROUTING)."""
    if data[12:14] != b"\x08\x00":
        return data
    ihl = (data[14] & 0x0F) * 4
    header = bytearray(data[14 : 14 + ihl])
    header[10:12] = b"\0\0"
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, ihl, 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return data[:14] + bytes(header) + data[14 + ihl :]


_CPU_LINE = re.compile(r"(\d+) sec, (\d+) usec on CPU\d+ \((\d+) packets\)")


def trafgen(ns: str, dev: str, config: Path, count: int, *, ring: bool = False) -> float:
    """Send ``count`` packets (cycling through the config) from ``dev`` in ``ns``;
    the send loop's CPU seconds as trafgen reports them.

    ``-t 0`` makes trafgen send each packet with sendto(2), which builds a linear
    skb; its default TX-ring path (``ring``) leaves all but the Ethernet header in
    page fragments, which flowc's parser cannot read (see the results' findings).
    """
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "trafgen", "-o", dev, "-i", str(config)]
        + ["-n", str(count), "-P", "1"]
        + ([] if ring else ["-t", "0"]),
        capture_output=True,
        text=True,
        timeout=TRAFGEN_TIMEOUT_S,
        check=False,
    )
    text = out.stdout + out.stderr
    found = _CPU_LINE.findall(text)
    if out.returncode != 0 or not found:
        raise BenchError(f"trafgen failed: {text.strip()[-300:]}")
    sent = sum(int(n) for _s, _u, n in found)
    if sent != count:
        raise BenchError(f"trafgen sent {sent} packets, asked for {count}")
    return sum(int(s) + int(u) / 1e6 for s, u, _n in found)


def _rx_packets(ns: str, dev: str) -> int:
    data = json.loads(_run("ip", "-n", ns, "-s", "-j", "link", "show", dev))
    return int(data[0]["stats64"]["rx"]["packets"])


def _mac(ns: str, dev: str) -> bytes:
    data = json.loads(_run("ip", "-n", ns, "-j", "link", "show", dev))
    return bytes.fromhex(data[0]["address"].replace(":", ""))


# ------------------------------------------------------------------ setups


@dataclass
class Setup:
    """One installed setup on its own namespace pair, and what was measured of it."""

    name: str
    pair: Pair
    config: Path
    note: str = ""
    rounds: list[float] = field(default_factory=list)
    slow_path: SlowPath | None = None

    def read_counts(self, policy: Policy) -> Counter[int] | None:
        """Packets counted per IR rule priority (None for the floor)."""
        pair = self.pair
        ns = pair.ns_b
        if self.slow_path is not None:
            stats = self.slow_path.rule_stats()
            return Counter({i: s[0] for i, s in enumerate(stats) if s[0]})
        if self.name == "iptables":
            out = _run(
                "ip", "netns", "exec", ns, _iptables("iptables") + "-save", "-c", "-t", "raw"
            )
            rows = [line for line in out.splitlines() if line.startswith("[")]
            counts: Counter[int] = Counter()
            for r, line in zip(iptables_rules(policy), rows, strict=True):
                counts[r.priority] += int(line[1:].split(":")[0])
            return Counter({k: v for k, v in counts.items() if v})
        if self.name == "nftables":
            out = _run("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", NFT_TABLE)
            return nft_counts(json.loads(out))
        return None


def nft_counts(listing: dict[str, Any]) -> Counter[int]:
    """Per IR rule priority, the packets nft counted (rule counters and map element
    counters, matched by the ``rN`` comments the translation writes)."""
    out: Counter[int] = Counter()
    for item in listing["nftables"]:
        if "map" in item:
            for key, _verdict in item["map"].get("elem", []):
                elem = key.get("elem", {}) if isinstance(key, dict) else {}
                comment, counter = elem.get("comment"), elem.get("counter")
                if comment and counter:
                    out[int(comment[1:])] += int(counter["packets"])
        elif "rule" in item:
            rule = item["rule"]
            comment = rule.get("comment")
            for expr in rule.get("expr", []):
                if "counter" in expr and comment:
                    out[int(comment[1:])] += int(expr["counter"]["packets"])
    return Counter({k: v for k, v in out.items() if v})


def _install(name: str, pair: Pair, policy: Policy, keep: list[SlowPath]) -> Setup | str:
    """Install setup ``name`` on ``pair``; a Setup, or the reason it could not be."""
    from tests.netns import inside

    ns, dev = pair.ns_b, pair.dev_b
    setup = Setup(name, pair, Path())
    if name == "flowc":
        from backends.bpf.emit import lower
        from runtime.bpf_loader import BpfLoadError, SlowPath
        from runtime.tc_attach import attach

        try:
            slow_path = SlowPath(lower(policy, "bitvec"), ifindex_of=lambda _dev: 1)
        except BpfLoadError as exc:
            return f"rejected by the {exc.stage}: {exc.message.splitlines()[0][:120]}"
        keep.append(slow_path)
        with inside(ns):
            attach(slow_path.fd, dev, "ingress", mode="tc")
        setup.slow_path = slow_path
    elif name == "iptables":
        try:
            text = iptables_restore_text(iptables_rules(policy))
        except TranslateError as exc:
            return f"not translated: {exc}"
        _run("ip", "netns", "exec", ns, _iptables("iptables") + "-restore", stdin=text)
    elif name == "nftables":
        try:
            text = nft_text(nft_ruleset(policy))
        except TranslateError as exc:
            return f"not translated: {exc}"
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
            f.write(text)
        try:
            _run("ip", "netns", "exec", ns, "nft", "-f", f.name, timeout=600)
        finally:
            os.unlink(f.name)
    return setup


def expected_counts(policy: Policy, packets: list[Packet]) -> Counter[int]:
    """Per rule priority, how many of ``packets`` the reference interpreter gives it."""
    return Counter(evaluate(policy, p).rule.priority for p in packets)


def agreement(expected: Counter[int], got: Counter[int]) -> str:
    """'' when the per-rule counts are equal, else the first differences."""
    keys = sorted(set(expected) | set(got))
    diff = [(k, expected.get(k, 0), got.get(k, 0)) for k in keys if expected[k] != got[k]]
    if not diff:
        return ""
    shown = ", ".join(f"r{k}: expected {e}, got {g}" for k, e, g in diff[:5])
    return f"{len(diff)} rules differ ({shown})"


def _ring_check(work: Workload, setup: Setup) -> list[str]:
    """Send the packets once more through trafgen's TX ring (non-linear skbs) and
    report how many flowc's parser counted malformed."""
    slow_path = setup.slow_path
    if slow_path is None:
        return []
    before = slow_path.status()["malformed"]
    pair = setup.pair
    trafgen(pair.ns_a, pair.dev_a, setup.config, len(work.packets), ring=True)
    bad = slow_path.status()["malformed"] - before
    if not bad:
        return []
    return [
        f"{work.ruleset} {work.size} flowc: {bad} of {len(work.packets)} packets sent through "
        "trafgen's TX ring (skb linear part = the 14-byte Ethernet header, the rest in page "
        "fragments) counted malformed by flowc's parser, which reads with direct packet "
        "access only (no bpf_skb_pull_data); iptables and nftables read such packets "
        "(skb_header_pointer)"
    ]


@dataclass
class Outcome:
    """What one workload produced."""

    work: Workload
    setups: dict[str, Setup]
    failed: dict[str, str]
    findings: list[str]
    nft_stats: str


@contextmanager
def _pairs(names: tuple[str, ...]) -> Iterator[dict[str, Pair]]:
    from tests.netns import veth_pair

    with ExitStack() as stack:
        pairs = {}
        for i, name in enumerate(names):
            pairs[name] = stack.enter_context(veth_pair(f"dp{i}", "10.77.0.1", "10.77.0.2"))
        yield pairs


def run_workload(work: Workload, *, count: int, rounds: int, tmp: Path) -> Outcome:
    """Install every setup for ``work``, check verdicts, measure interleaved rounds."""
    keep: list[SlowPath] = []
    failed: dict[str, str] = {}
    findings: list[str] = []
    setups: dict[str, Setup] = {}
    install_names = ("floor", "flowc", "iptables", "nftables")
    ruleset = nft_ruleset(work.policy)
    nft_stats = (
        f"{len(ruleset.maps)} maps ({sum(len(m.elements) for m in ruleset.maps)} elements), "
        f"{len(ruleset.statements) - len(ruleset.maps)} plain rules"
    )
    try:
        with _pairs(install_names) as pairs:
            for name in install_names:
                pair = pairs[name]
                start = time.perf_counter()
                got = _install(name, pair, work.policy, keep)
                if isinstance(got, str):
                    failed[name] = got
                    continue
                mac_b = _mac(pair.ns_b, pair.dev_b)
                mac_a = _mac(pair.ns_a, pair.dev_a)
                got.config = tmp / f"{work.ruleset}-{work.size}-{name}.cfg"
                got.config.write_text(trafgen_config(work.packets, mac_b, mac_a))
                got.note = f"install {time.perf_counter() - start:.1f} s"
                setups[name] = got
                print(f"  {work.ruleset} {work.size}: {name} {got.note}", file=sys.stderr)
            expected = expected_counts(work.policy, work.packets)
            for name, setup in setups.items():
                pair = setup.pair
                before = setup.read_counts(work.policy)
                trafgen(pair.ns_a, pair.dev_a, setup.config, len(work.packets))
                after = setup.read_counts(work.policy)
                if after is None:
                    continue
                got_counts = after - (before or Counter())
                problem = agreement(expected, got_counts)
                if problem:
                    findings.append(f"{work.ruleset} {work.size} {name}: {problem}")
            if "flowc" in setups:
                findings += _ring_check(work, setups["flowc"])
                walk = Setup("flowc-walk", setups["flowc"].pair, setups["flowc"].config)
                walk.slow_path = setups["flowc"].slow_path
                setups["flowc-walk"] = walk
            order = list(setups.values())
            for r in range(rounds):
                shift = r % len(order)
                for setup in order[shift:] + order[:shift]:
                    if setup.slow_path is not None:
                        setup.slow_path.set_memo(setup.name == "flowc")
                    pair = setup.pair
                    rx0 = _rx_packets(pair.ns_b, pair.dev_b)
                    seconds = trafgen(pair.ns_a, pair.dev_a, setup.config, count)
                    rx = _rx_packets(pair.ns_b, pair.dev_b) - rx0
                    if rx != count:
                        findings.append(
                            f"{work.ruleset} {work.size} {setup.name}: round {r + 1} "
                            f"received {rx} of {count}"
                        )
                    setup.rounds.append(seconds * 1e9 / count)
    finally:
        for obj in keep:
            obj.close()
    return Outcome(work, setups, failed, findings, nft_stats)


# ------------------------------------------------------------------ table


def _median(setup: Setup | None) -> float | None:
    return statistics.median(setup.rounds) if setup is not None and setup.rounds else None


def table(outcomes: list[Outcome]) -> str:
    """The results table: per rule set and size, each setup's packets/s and ns/packet."""
    lines = [
        "| rule set | rules | setup | packets/s | ns/packet | above floor (ns) "
        "| flowc / this (above floor) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        floor = _median(o.setups.get("floor"))
        flowc = _median(o.setups.get("flowc"))
        for name in SETUPS:
            if name in o.failed:
                lines.append(
                    f"| {o.work.ruleset} | {o.work.size} | {name} | {o.failed[name]} | | | |"
                )
                continue
            ns = _median(o.setups.get(name))
            if ns is None:
                continue
            above = ns - floor if floor is not None else float("nan")
            ratio = "-"
            if name in ("iptables", "nftables") and flowc is not None and floor is not None:
                ratio = f"{(flowc - floor) / above:.2f}" if above > 0 and flowc > floor else "n/a"
            lines.append(
                f"| {o.work.ruleset} | {o.work.size} | {name} | {1e9 / ns:,.0f} | {ns:.0f} "
                f"| {above:.0f} | {ratio} |"
            )
    return "\n".join(lines)


def target_lines(outcomes: list[Outcome]) -> list[str]:
    """Per rule set at its largest size: flowc's cost above floor against nftables'."""
    out = []
    for o in outcomes:
        if o.work.size < 10000:
            continue
        floor, flowc = _median(o.setups.get("floor")), _median(o.setups.get("flowc"))
        nft = _median(o.setups.get("nftables"))
        if floor is None or flowc is None or nft is None:
            out.append(f"* {o.work.ruleset} 10000: not measured ({o.failed})")
            continue
        a, b = flowc - floor, nft - floor
        out.append(
            f"* {o.work.ruleset} 10000: flowc {a:.0f} ns vs nftables {b:.0f} ns above floor: "
            f"**{'met' if a <= b else 'not met'}**"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and save bench/results/datapath.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.datapath_bench")
    parser.add_argument("--rulesets", default="acl1,fw1,ipc1,fw-gen")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--count", type=int, default=200_000, help="packets per round per setup")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one small rule set, few packets")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.rulesets, args.sizes, args.count, args.rounds = "fw-gen", "100", 20_000, 2
    if os.geteuid() != 0:
        print("datapath_bench: needs root", file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing:
        print(
            f"datapath_bench: missing {', '.join(missing)} (scripts/bench-setup.sh)",
            file=sys.stderr,
        )
        return 2
    outcomes: list[Outcome] = []
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="flowc-dp-") as tmp:
            for size in (int(s) for s in args.sizes.split(",")):
                for ruleset in args.rulesets.split(","):
                    work = workload(ruleset, size)
                    print(
                        f"{ruleset} {size}: {len(work.policy.rules)} rules, "
                        f"{len(work.packets)} packets ({work.witnesses} witnesses)",
                        file=sys.stderr,
                    )
                    outcomes.append(
                        run_workload(work, count=args.count, rounds=args.rounds, tmp=Path(tmp))
                    )
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"datapath_bench: {exc}", file=sys.stderr)
        return 1
    text = report(outcomes, args, time.time() - started)
    print(text)
    if not args.no_save and not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "datapath.md").write_text(text)
    return 0


def report(outcomes: list[Outcome], args: argparse.Namespace, seconds: float) -> str:
    """The results as markdown."""
    findings = [f for o in outcomes for f in o.findings]
    lines = [
        "# Datapath benchmark: flowc vs iptables vs nftables",
        "",
        f"`python -m bench.datapath_bench` ({args.count:,} packets per setup per round, "
        f"median of {args.rounds} interleaved rounds, trafgen -P 1; {seconds:.0f} s).",
        "",
        table(outcomes),
        "",
        "## Target: flowc <= nftables per packet at 10,000 rules (above floor)",
        "",
        *target_lines(outcomes),
        "",
        "## Verdict agreement (per-rule counters against ir.interp.evaluate)",
        "",
        *(f"* {f}" for f in findings),
        *(
            ["* every setup counted every packet on the rule the interpreter names"]
            if not findings
            else []
        ),
        "",
        "## Workloads",
        "",
        *(
            f"* {o.work.ruleset} {o.work.size}: {len(o.work.policy.rules)} IR rules, "
            f"{len(o.work.packets)} distinct packets ({o.work.witnesses} region witnesses); "
            f"nftables: {o.nft_stats}"
            for o in outcomes
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
