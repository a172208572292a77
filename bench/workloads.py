"""ClassBench-style policy and flow-trace generators, deterministic from a seed.

The three seeds imitate the shape of ClassBench's seed families:

* ``acl``: specific destinations (/24-/32), sources often wildcarded or /16-/32,
  exact well-known destination ports, mostly TCP.
* ``fw``: wide prefixes (/8-/24 and wildcards), port ranges (1024-65535,
  ephemeral), TCP/UDP and wildcard protocol.
* ``ipc``: a mix of both, more wildcard protocols and source ports.

Addresses come from a small pool of base networks, so prefixes nest and
overlap the way real filter sets do. A trace samples flows inside rules'
boxes and repeats them with Zipf-distributed popularity.

    python -m bench.workloads policy --seed-family fw --rules 1000 --seed 7 > fw1k.fw
    python -m bench.workloads trace --policy-seed-family fw --rules 1000 --seed 7 \\
        --flows 5000 --packets 100000 --skew 1.1 > fw1k.trace
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

SEED_FAMILIES = ("acl", "fw", "ipc")
WELL_KNOWN_PORTS = (22, 25, 53, 80, 110, 123, 143, 161, 389, 443, 445, 993, 1521, 3306, 5432)


@dataclass(frozen=True, slots=True)
class GenRule:
    """One generated rule: prefixes as (address, length), ports as (lo, hi), proto or None."""

    src: tuple[int, int]
    dst: tuple[int, int]
    sport: tuple[int, int]
    dport: tuple[int, int]
    proto: int | None
    action: str

    def to_dsl(self) -> str:
        """The rule as a DSL line."""
        words = [self.action]
        if self.proto is not None:
            words.append({6: "tcp", 17: "udp", 1: "icmp"}.get(self.proto, f"proto {self.proto}"))
        for word, (addr, plen) in (("from", self.src), ("to", self.dst)):
            if plen:
                text = str(ipaddress.IPv4Address(addr))
                words.append(f"{word} {text}" if plen == 32 else f"{word} {text}/{plen}")
        for word, (lo, hi) in (("sport", self.sport), ("dport", self.dport)):
            if (lo, hi) != (0, 65535):
                words.append(f"{word} {lo}" if lo == hi else f"{word} {lo}-{hi}")
        return " ".join(words)


def _prefix(rng: random.Random, pool: list[int], lengths: list[int]) -> tuple[int, int]:
    plen = rng.choice(lengths)
    base = rng.choice(pool) | rng.getrandbits(16)
    mask = ((1 << 32) - 1) ^ ((1 << (32 - plen)) - 1) if plen else 0
    return base & mask, plen


def _ports(rng: random.Random, family: str, is_dst: bool) -> tuple[int, int]:
    roll = rng.random()
    if not is_dst:
        if family == "acl" or roll < 0.7:
            return (0, 65535)
        return rng.choice([(1024, 65535), (0, 1023), (49152, 65535)])
    if family == "acl":
        if roll < 0.8:
            p = rng.choice(WELL_KNOWN_PORTS)
            return (p, p)
        return rng.choice([(0, 65535), (1024, 65535), (6000, 6063)])
    if family == "fw":
        if roll < 0.35:
            return (0, 65535)
        if roll < 0.7:
            lo = rng.randrange(0, 60000)
            return (lo, min(65535, lo + rng.choice([1, 15, 255, 1023, 4999])))
        p = rng.choice(WELL_KNOWN_PORTS)
        return (p, p)
    if roll < 0.5:
        p = rng.choice(WELL_KNOWN_PORTS)
        return (p, p)
    return rng.choice([(0, 65535), (1024, 65535), (0, 1023)])


def generate_rules(family: str, count: int, seed: int) -> list[GenRule]:
    """``count`` rules of the given seed family, deterministic from ``seed``."""
    if family not in SEED_FAMILIES:
        raise ValueError(f"seed family must be one of {SEED_FAMILIES}")
    rng = random.Random(f"{family}:{seed}")
    pool = [rng.getrandbits(32) & 0xFFFF0000 for _ in range(max(8, count // 50))]
    src_lengths = {
        "acl": [0, 0, 16, 24, 28, 32, 32],
        "fw": [0, 8, 16, 16, 20, 24, 32],
        "ipc": [0, 8, 16, 24, 32, 32],
    }[family]
    dst_lengths = {
        "acl": [24, 28, 30, 32, 32, 32],
        "fw": [0, 8, 16, 24, 24, 29, 32],
        "ipc": [0, 16, 24, 32, 32],
    }[family]
    protos: list[int | None] = {
        "acl": [6] * 7 + [17] * 2 + [None],
        "fw": [6] * 5 + [17] * 3 + [None] * 2,
        "ipc": [6] * 4 + [17] * 3 + [1] + [None] * 2,
    }[family]
    rules: list[GenRule] = []
    while len(rules) < count:
        proto = rng.choice(protos)
        has_ports = proto in (6, 17)
        rule = GenRule(
            _prefix(rng, pool, src_lengths),
            _prefix(rng, pool, dst_lengths),
            _ports(rng, family, False) if has_ports else (0, 65535),
            _ports(rng, family, True) if has_ports else (0, 65535),
            proto,
            rng.choice(["allow", "allow", "drop"]),
        )
        if _specificity(rule) < 16:
            continue  # near-wildcard rules would shadow most of the set; real sets rarely have them
        rules.append(rule)
    # Real filter sets list specific rules before general ones (as ClassBench's
    # sets do); random order would leave most rules shadowed.
    rules.sort(key=_specificity, reverse=True)
    return rules


def _specificity(rule: GenRule) -> float:
    """Bits of the header a rule pins down (prefix bits, port-range bits, protocol)."""
    bits = float(rule.src[1] + rule.dst[1])
    for lo, hi in (rule.sport, rule.dport):
        bits += 16 - (hi - lo + 1).bit_length() + 1 if (lo, hi) != (0, 65535) else 0
    return bits + (8 if rule.proto is not None else 0)


def policy_text(family: str, count: int, seed: int, device: str = "eth0") -> str:
    """A complete DSL policy of ``count`` generated rules."""
    lines = [
        f"# Generated by bench.workloads: seed family {family}, {count} rules, seed {seed}.",
        f"policy bench_{family} ingress on {device} {{",
        "    default drop",
    ]
    lines.extend("    " + r.to_dsl() for r in generate_rules(family, count, seed))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _sample(rng: random.Random, rule: GenRule) -> str:
    def addr(prefix: tuple[int, int]) -> str:
        base, plen = prefix
        host = rng.getrandbits(32 - plen) if plen < 32 else 0
        return str(ipaddress.IPv4Address(base | host))

    src, dst = addr(rule.src), addr(rule.dst)
    proto = rule.proto if rule.proto is not None else rng.choice([6, 17, 1])
    if proto in (6, 17):
        sport = rng.randint(*rule.sport)
        dport = rng.randint(*rule.dport)
        # TCP as a mid-connection ACK (README, "Frames the IR does not describe").
        flags = " flags ack" if proto == 6 else ""
        name = "tcp" if proto == 6 else "udp"
        return f"{name} {src}:{sport} -> {dst}:{dport}{flags}"
    return f"icmp {src} -> {dst}"


def zipf_indexes(rng: random.Random, n_items: int, n_draws: int, skew: float) -> Iterator[int]:
    """``n_draws`` indexes in ``[0, n_items)`` with P(i) proportional to 1/(i+1)**skew."""
    weights = [1.0 / (i + 1) ** skew for i in range(n_items)]
    total = sum(weights)
    cumulative = []
    acc = 0.0
    for w in weights:
        acc += w / total
        cumulative.append(acc)
    for _ in range(n_draws):
        yield min(bisect.bisect_left(cumulative, rng.random()), n_items - 1)


def trace_lines(
    rules: list[GenRule],
    *,
    flows: int,
    packets: int,
    skew: float,
    seed: int,
    rule_skew: float | None = None,
) -> Iterator[str]:
    """``packets`` packet lines over ``flows`` distinct flows with Zipf(skew) popularity.

    Each flow is a point inside one rule's box. The rule is drawn uniformly, or,
    with ``rule_skew``, with Zipf(rule_skew) popularity over the rules in a
    shuffled order: ClassBench's trace generator gives each filter a
    Pareto-distributed number of headers for the same reason, since real traffic
    concentrates on few filters.
    """
    rng = random.Random(f"trace:{seed}")
    if rule_skew is None:
        flow_texts = [_sample(rng, rng.choice(rules)) for _ in range(flows)]
    else:
        order = list(rules)
        rng.shuffle(order)
        flow_texts = [
            _sample(rng, order[i]) for i in zipf_indexes(rng, len(order), flows, rule_skew)
        ]
    for i in zipf_indexes(rng, flows, packets, skew):
        yield flow_texts[i]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``policy`` or ``trace``."""
    parser = argparse.ArgumentParser(prog="python -m bench.workloads")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("policy")
    p.add_argument("--seed-family", choices=SEED_FAMILIES, default="acl")
    p.add_argument("--rules", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    t = sub.add_parser("trace")
    t.add_argument("--policy-seed-family", choices=SEED_FAMILIES, default="acl")
    t.add_argument("--rules", type=int, default=1000)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--flows", type=int, default=1000)
    t.add_argument("--packets", type=int, default=10000)
    t.add_argument("--skew", type=float, default=1.0)
    t.add_argument(
        "--rule-skew", type=float, help="Zipf skew of rules over flows (default: uniform)"
    )
    args = parser.parse_args(argv)
    if args.what == "policy":
        sys.stdout.write(policy_text(args.seed_family, args.rules, args.seed))
    else:
        rules = generate_rules(args.policy_seed_family, args.rules, args.seed)
        for line in trace_lines(
            rules,
            flows=args.flows,
            packets=args.packets,
            skew=args.skew,
            seed=args.seed,
            rule_skew=args.rule_skew,
        ):
            sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
