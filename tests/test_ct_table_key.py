"""The BPF connection table's canonical key (runtime/conntrack.py table_key,
the mirror of bpf/flowc_ct.h flowc_ct_canonical) against a brute-force oracle.

Both directions of a connection must land on one table key, with ``swapped``
telling them apart; ICMP echo keys are not turned round (the reverse of an
echo key is the other side's ping, another conversation)."""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from backends.bpf.abi import CtEntry
from ir.conntrack import ConnKey, is_icmp_of
from ir.fields import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
)
from runtime.conntrack import conn_key, connection, table_key

PORT_PROTOS = (PROTO_TCP, PROTO_UDP, PROTO_SCTP)


@st.composite
def keys(draw: st.DrawFn) -> ConnKey:
    family = draw(st.sampled_from((FAMILY_IPV4, FAMILY_IPV6)))
    bits = 32 if family == FAMILY_IPV4 else 128
    icmp = PROTO_ICMP if family == FAMILY_IPV4 else PROTO_ICMPV6
    proto = draw(st.sampled_from((*PORT_PROTOS, icmp, 47)))
    # Few distinct values, so equal addresses and equal ports come up often.
    address = st.one_of(
        st.sampled_from((0, 1, 2**bits - 1, 0x0A000001)), st.integers(0, 2**bits - 1)
    )
    src, dst = draw(address), draw(address)
    port = st.one_of(st.sampled_from((0, 80, 65535)), st.integers(0, 65535))
    if proto in PORT_PROTOS:
        return ConnKey(family, proto, src, dst, draw(port), draw(port))
    if proto == icmp:
        return ConnKey(family, proto, src, dst, draw(port), 0)
    return ConnKey(family, proto, src, dst, 0, 0)


def _words(address: int, family: int) -> tuple[int, ...]:
    """The address as the table stores it (network order, IPv4 in front), read
    as four words in this machine's byte order: the oracle's own spelling."""
    width = 4 if family == FAMILY_IPV4 else 16
    raw = address.to_bytes(width, "big").ljust(16, b"\0")
    return tuple(int.from_bytes(raw[i : i + 4], sys.byteorder) for i in range(0, 16, 4))


@given(keys())
def test_both_directions_share_one_key_and_swapped_tells_them_apart(key: ConnKey) -> None:
    raw, swapped = table_key(key)
    if is_icmp_of(key.family, key.proto):
        assert (conn_key(raw), swapped) == (key, 0)
        return
    back_raw, back_swapped = table_key(key.reversed())
    assert bytes(raw) == bytes(back_raw)
    if key == key.reversed():
        assert swapped == back_swapped == 0
    else:
        assert {swapped, back_swapped} == {0, 1}
    # The oracle: the key is the tuple whose (src, sport) is not above (dst, dport).
    lower = (_words(key.src, key.family), key.sport) <= (_words(key.dst, key.family), key.dport)
    assert conn_key(raw) == (key if lower else key.reversed())
    assert swapped == (0 if lower else 1)


@given(keys())
def test_an_entry_reads_back_as_its_original_direction(key: ConnKey) -> None:
    raw, swapped = table_key(key)
    entry = CtEntry(expires_ns=9, created_ns=1, last_ns=2, packets_orig=3, swapped=swapped)
    read = connection(raw, entry)
    assert read.key == key and read.packets == (3, 0)
