"""Single mutations of a flower filter list (the mutation suite's operators,
shared by the flower checker's and the auditor's tests)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

from backends.flower.rules import FlowerAction, FlowerFilter, Masked, PortRange


# ------------------------------------------------------------------ mutations
def _widen(key: Masked, width: int, rng: random.Random, prefix: bool) -> Masked | None:
    cared = [b for b in range(width) if key.mask >> b & 1]
    if prefix:
        # Addresses stay prefixes (a mask with holes in 128 bits is refused as
        # too fragmented to check, see test_filter_cube_...): drop the last bit.
        cared = cared[:1]
    if not cared:
        return None
    bit = rng.choice(cared)
    mask = key.mask & ~(1 << bit)
    return Masked(key.value & mask, mask)


def _narrow(key: Masked, width: int, rng: random.Random, prefix: bool) -> Masked | None:
    free = [b for b in range(width) if not key.mask >> b & 1]
    if prefix:
        free = free[-1:]
    if not free:
        return None
    bit = rng.choice(free)
    return Masked(key.value | (rng.getrandbits(1) << bit), key.mask | 1 << bit)


_WIDTHS = {"src_ip": None, "dst_ip": None, "ip_tos": 8, "src_port": 16, "dst_port": 16}
_WIDTHS |= {"tcp_flags": 8, "icmp_type": 8, "icmp_code": 8}


def mutants(
    flt: list[FlowerFilter], rng: random.Random
) -> Iterator[tuple[str, list[FlowerFilter]]]:
    """Single mutations of a filter list, each with its kind."""
    n = len(flt)
    for _ in range(min(n, 6)):
        i = rng.randrange(n)
        yield "drop a filter", flt[:i] + flt[i + 1 :]
        j = rng.randrange(n)
        if flt[i].prio != flt[j].prio:
            a = dataclasses.replace(flt[i], prio=flt[j].prio, handle=flt[j].handle)
            b = dataclasses.replace(flt[j], prio=flt[i].prio, handle=flt[i].handle)
            swapped = list(flt)
            swapped[i], swapped[j] = a, b
            yield "swap two priorities", swapped
        actions = [FlowerAction("pass"), FlowerAction("drop"), FlowerAction("trap", chain=1)]
        other = rng.choice([a for a in actions if a != flt[i].action])
        yield "change an action", _with(flt, i, dataclasses.replace(flt[i], action=other))
        m = flt[i].match
        for name, key in m.key_items():
            width = _WIDTHS.get(name)
            if name in ("src_ip", "dst_ip"):
                width = 32 if m.family == 4 else 128
            if isinstance(key, Masked) and width is not None and name != "ip_tos":
                for how, change in (("widen", _widen), ("narrow", _narrow)):
                    new_key = change(key, width, rng, name in ("src_ip", "dst_ip"))
                    if new_key is not None:
                        new = dataclasses.replace(m, **{name: new_key})  # type: ignore[arg-type]
                        f = dataclasses.replace(flt[i], match=new)
                        yield f"{how} a mask", _with(flt, i, f)
            if isinstance(key, PortRange):
                delta = rng.choice([-1, 1])
                lo, hi = (
                    (key.lo + delta, key.hi) if rng.random() < 0.5 else (key.lo, key.hi + delta)
                )
                if 0 < lo < hi <= 0xFFFF:
                    new = dataclasses.replace(m, **{name: PortRange(lo, hi)})  # type: ignore[arg-type]
                    yield (
                        "shift a range bound",
                        _with(flt, i, dataclasses.replace(flt[i], match=new)),
                    )


def _with(flt: list[FlowerFilter], i: int, f: FlowerFilter) -> list[FlowerFilter]:
    out = list(flt)
    out[i] = f
    return out
