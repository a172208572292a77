"""The flower key registry is complete and consistent: every FlowerMatch key has
one entry, every entry round-trips through tc -j text and both netlink codecs,
and its attribute numbers are the kernel's (read from pkt_cls.h, not from the
table itself)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.flower.keys import (
    ETH_TYPE,
    FLOWER_KEYS,
    KEYS,
    Cover,
    FlowerKey,
    Matching,
    Variant,
    key_attributes,
)
from backends.flower.rules import (
    ETH_FOR_FAMILY,
    ETH_P_8021Q,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    Masked,
    PortRange,
)
from backends.flower.text import filter_words, parse_tc_json, to_tc_json
from backends.nic_profile import FIELD_KINDS
from ir.fields import FAMILY_IPV4, FAMILY_IPV6, HEADER_SPACE, field_exists, protocols_with
from ir.model import DROP
from runtime.flower_netlink import (
    RTM_NEWTFILTER,
    decode_filter,
    encode_filter,
    flower_options,
    flower_tcmsg,
    message_bytes,
)
from runtime.flower_wire import new_filter_request
from tests.uapi import HEADER_DIRS, uapi_numbers


def test_every_flower_match_key_has_one_entry_in_its_order() -> None:
    keys = [f.name for f in dataclasses.fields(FlowerMatch) if f.name != "protocol"]
    assert [k.name for k in FLOWER_KEYS] == keys
    assert len(KEYS) == len(FLOWER_KEYS)


@pytest.mark.parametrize("flower_key", FLOWER_KEYS, ids=lambda k: k.name)
def test_entry_is_consistent(flower_key: FlowerKey) -> None:
    # Every family finds a variant (the last one claims what no earlier one does).
    assert flower_key.variants[-1].family is None
    for variant in flower_key.variants:
        assert (variant.mask is None) == (flower_key.matching == Matching.EXACT)
        assert variant.value.codec.size * 8 >= variant.width
        if variant.capability is not None:
            assert variant.capability in FIELD_KINDS
        if variant.field is None:
            assert flower_key.cover == Cover.NONE
            continue
        field = HEADER_SPACE.field(variant.field)
        assert field.width + flower_key.ir_shift <= variant.width
        if variant.ip_proto is not None:
            for family in (FAMILY_IPV4, FAMILY_IPV6):
                assert field_exists(variant.field, family, variant.ip_proto)
    assert (flower_key.ranges is not None) == (flower_key.matching == Matching.PORT)
    assert bool(flower_key.ir_shift) == bool(flower_key.ir_shift_bits)


@pytest.mark.parametrize("headers", HEADER_DIRS or ["(none)"])
def test_attribute_numbers_match_the_kernel_header(headers: str) -> None:
    if headers == "(none)":
        pytest.skip("no Debian linux-headers-*-common with include/uapi/linux/pkt_cls.h")
    kernel = uapi_numbers(Path(headers))
    assert kernel["TCA_FLOWER_KEY_ETH_TYPE"] == ETH_TYPE.number
    for attribute in key_attributes():
        assert kernel.get(attribute.name) == attribute.number, attribute.name


def test_attribute_numbers_and_codecs_match_pyroute2s_table() -> None:
    nla = {name: (number, kind) for number, (name, kind) in enumerate(flower_options.nla_map)}
    for attribute in key_attributes():
        assert nla[attribute.name] == (attribute.number, attribute.codec.nla_type)


def served_families(flower_key: FlowerKey, variant: Variant) -> list[int]:
    families = (FAMILY_IPV4, FAMILY_IPV6)
    return [f for f in families if flower_key.variant_for(f, variant.ip_proto) is variant]


@st.composite
def one_key_filters(draw: st.DrawFn) -> FlowerFilter:
    """A filter matching on one registry key, through one of its variants."""
    flower_key = draw(st.sampled_from(FLOWER_KEYS))
    variant = draw(st.sampled_from(flower_key.variants))
    family = draw(st.sampled_from(served_families(flower_key, variant)))
    eth = ETH_FOR_FAMILY[family]
    proto = variant.ip_proto
    if proto is None and not flower_key.tag and variant.field not in (None, "ip_proto"):
        needed = protocols_with(variant.field)[family]
        if not needed.is_full():
            proto = draw(st.sampled_from([v for lo, hi in needed for v in range(lo, hi + 1)]))
    full = variant.full_mask
    key: object
    if flower_key.matching == Matching.EXACT:
        key = draw(st.integers(0, full))
        if flower_key.name == "vlan_ethtype":
            key = eth
    elif flower_key.ranges is not None and draw(st.booleans()):
        lo = draw(st.integers(1, 0xFFFE))
        key = PortRange(lo, draw(st.integers(lo + 1, 0xFFFF)))
    else:
        # Mask 0 is no key at all: the kernel dumps no key whose mask is zero
        # (fl_dump_key_val), and tc has no text for an empty ct_state.
        mask = draw(st.integers(1, full))
        key = Masked(draw(st.integers(0, full)) & mask, mask)
    kw: dict[str, object] = {flower_key.name: key}
    if flower_key.name != "ip_proto":
        kw["ip_proto"] = proto
    if flower_key.tag:
        kw.setdefault("vlan_ethtype", eth)
        match = FlowerMatch(ETH_P_8021Q, **kw)  # type: ignore[arg-type]
    else:
        match = FlowerMatch(eth, **kw)  # type: ignore[arg-type]
    return FlowerFilter(chain=0, prio=1, handle=1, match=match, action=FlowerAction(DROP))


@given(one_key_filters())
def test_every_entry_round_trips_through_tc_json(f: FlowerFilter) -> None:
    assert parse_tc_json(to_tc_json([f])) == [f]


@given(one_key_filters())
def test_every_entry_has_its_tc_batch_word(f: FlowerFilter) -> None:
    words = filter_words(f, "eth0", "ingress")
    for name, _key in f.match.key_items():
        assert KEYS[name].tc_batch in words


@given(one_key_filters())
def test_every_entry_round_trips_through_both_netlink_codecs(f: FlowerFilter) -> None:
    msg = encode_filter(f, 3, "ingress")
    pyroute2_bytes = message_bytes(msg, RTM_NEWTFILTER, 1, 9)
    assert new_filter_request(f, 3, "ingress", flags=1, seq=9) == pyroute2_bytes
    decoded = flower_tcmsg(pyroute2_bytes)
    decoded.decode()
    installed = decode_filter(decoded)
    assert installed is not None
    assert installed.filter == f
    # Each key travels in attributes of its own entry.
    on_wire = {name for name, _ in decoded.get_attr("TCA_OPTIONS")["attrs"]}
    for name, _key in f.match.key_items():
        assert on_wire & {a.name for a in KEYS[name].attributes()}, name
