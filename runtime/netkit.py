"""netkit device pairs over rtnetlink: create (modes L3 and L2, default policies,
the peer in another namespace), delete, and ask a device what kind it is.

pyroute2 0.9.7 and Debian 12's iproute2 (6.1) do not know the ``netkit`` link
kind (Linux 6.7+), so the requests are encoded here from ``if_link.h``: an
RTM_NEWLINK whose IFLA_LINKINFO says kind ``netkit`` and whose IFLA_INFO_DATA
carries the peer's ifinfomsg and name (IFLA_NETKIT_PEER_INFO), the mode and the
two default policies.

A netkit pair has a primary device (in the namespace that created it, the
host's) and a peer (usually moved into a container's namespace). Each device
runs its own program as it transmits, before the packet crosses to the other
side; with no program attached it applies its default policy instead (pass
unless the pair was created otherwise).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ir.model import MIRROR, REDIRECT, Policy
from runtime import netlink
from runtime.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_NETKIT_PEER_INFO = 1
IFLA_NETKIT_PRIMARY = 2
IFLA_NETKIT_POLICY = 3
IFLA_NETKIT_PEER_POLICY = 4
IFLA_NETKIT_MODE = 5
NETKIT_L2 = 0
NETKIT_L3 = 1
NLA_F_NESTED = 0x8000

MODES = {"l3": NETKIT_L3, "l2": NETKIT_L2}
POLICIES = {"pass": 0, "drop": 2}  # NETKIT_PASS, NETKIT_DROP: the only defaults allowed
IFINFOMSG = struct.Struct("=BxHiII")
"""struct ifinfomsg: family, pad, type, ifindex, flags, change."""
NETNS_DIR = "/run/netns"


class NetkitError(Exception):
    """A netkit request failed; the message carries the kernel's words."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What rtnetlink says about a device.

    Attributes:
        name, ifindex: the device.
        kind: its IFLA_INFO_KIND (``netkit``, ``veth``, ...; ``""`` for a
            physical device or loopback).
        peer_elsewhere: the device's other end (a veth or netkit peer) lives
            in another network namespace (IFLA_LINK_NETNSID is set).
        netkit_primary: a netkit device that is its pair's primary.
    """

    name: str
    ifindex: int
    kind: str
    peer_elsewhere: bool
    netkit_primary: bool


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _name(name: str) -> bytes:
    if not name or len(name.encode()) > 15:
        raise NetkitError(f"device name {name!r} must be 1-15 bytes")
    return name.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _send(msg_type: int, flags: int, body: bytes) -> None:
    data = netlink.header(16 + len(body), msg_type, flags, 1) + body
    try:
        if not netlink.request(data, 1):
            raise NetkitError("the kernel did not acknowledge the request")
    except OSError as exc:
        raise NetkitError(f"{exc.strerror} (errno {exc.errno})") from None


def create_pair(
    name: str,
    peer: str,
    *,
    mode: str = "l3",
    peer_netns: str | None = None,
    policy: str = "pass",
    peer_policy: str = "pass",
) -> None:
    """Create a netkit pair: primary ``name`` in this thread's namespace, peer
    ``peer`` in ``peer_netns`` (a name under /run/netns) or here.

    ``policy`` / ``peer_policy`` are what each device does with a packet while
    no program is attached to it (``pass`` or ``drop``). Raises NetkitError
    with the kernel's words; a kernel without netkit answers "Unknown device
    type" (EOPNOTSUPP).
    """
    if mode not in MODES:
        raise NetkitError(f"netkit mode must be one of {sorted(MODES)}, not {mode!r}")
    for which in (policy, peer_policy):
        if which not in POLICIES:
            raise NetkitError(f"netkit policy must be one of {sorted(POLICIES)}, not {which!r}")
    peer_attrs = [_attr(IFLA_IFNAME, _name(peer))]
    ns_fd = None
    if peer_netns is not None:
        try:
            ns_fd = os.open(os.path.join(NETNS_DIR, peer_netns), os.O_RDONLY)
        except OSError as exc:
            raise NetkitError(f"network namespace {peer_netns!r}: {exc.strerror}") from None
        peer_attrs.append(_attr(IFLA_NET_NS_FD, _u32(ns_fd)))
    try:
        peer_info = _attr(
            IFLA_NETKIT_PEER_INFO | NLA_F_NESTED,
            IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join(peer_attrs),
        )
        data = _nested(
            IFLA_INFO_DATA,
            peer_info,
            _attr(IFLA_NETKIT_MODE, _u32(MODES[mode])),
            _attr(IFLA_NETKIT_POLICY, _u32(POLICIES[policy])),
            _attr(IFLA_NETKIT_PEER_POLICY, _u32(POLICIES[peer_policy])),
        )
        body = (
            IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            + _attr(IFLA_IFNAME, _name(name))
            + _nested(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"netkit\0"), data)
        )
        try:
            _send(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
        except NetkitError as exc:
            raise NetkitError(f"creating netkit pair {name}/{peer}: {exc}") from None
    finally:
        if ns_fd is not None:
            os.close(ns_fd)


def delete(name: str) -> None:
    """Delete a device (a netkit or veth primary takes its peer with it)."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
    try:
        _send(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body)
    except NetkitError as exc:
        raise NetkitError(f"deleting {name}: {exc}") from None


def _attrs(data: bytes, off: int = 0) -> dict[int, bytes]:
    """The netlink attributes from ``off`` on, by type (nested flag dropped)."""
    out = {}
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def device_info(name: str) -> DeviceInfo:
    """Ask rtnetlink about device ``name`` in this thread's namespace."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
    data = netlink.header(16 + len(body), RTM_GETLINK, NLM_F_REQUEST, 1) + body
    with netlink.route_socket() as sock:
        sock.sendall(data)
        for msg_type, _flags, seq, payload in netlink.messages(sock.recv(65536)):
            if seq != 1:
                continue
            if msg_type == NLMSG_ERROR:
                error = netlink.error_code(payload)
                if error == -19:  # ENODEV
                    raise NetkitError(f"device {name!r} does not exist")
                raise NetkitError(f"asking about {name!r}: {os.strerror(-error)}")
            if msg_type == RTM_NEWLINK:
                return _parse_link(name, payload)
    raise NetkitError(f"no answer about device {name!r}")


def _parse_link(name: str, payload: bytes) -> DeviceInfo:
    _family, _type, ifindex, _flags, _change = IFINFOMSG.unpack_from(payload, 0)
    top = _attrs(payload, IFINFOMSG.size)
    info = _attrs(top.get(IFLA_LINKINFO, b""))
    kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
    primary = False
    if kind == "netkit":
        data = _attrs(info.get(IFLA_INFO_DATA, b""))
        primary = bool(data.get(IFLA_NETKIT_PRIMARY, b"\0")[0])
    return DeviceInfo(name, ifindex, kind, IFLA_LINK_NETNSID in top, primary)


PEER_KINDS = ("netkit", "veth")
"""Device kinds bpf_redirect_peer can cross (the kernel's ndo_get_peer_dev)."""


def peer_redirect_targets(
    devices: Iterable[str],
    *,
    mode: str,
    direction: str,
    info: Callable[[str], DeviceInfo] = device_info,
) -> frozenset[str]:
    """The redirect targets a program on a ``mode`` hook in ``direction`` should
    reach with bpf_redirect_peer rather than bpf_redirect.

    bpf_redirect_peer hands the packet straight to the ingress of the target's
    peer in its own namespace, skipping the backlog queue and a second pass
    through the host's stack; the kernel allows it only from tc ingress (tc or
    tcx; a netkit program runs on transmit, where the kernel drops such a
    redirect) and only to a veth or netkit device, and it is only useful when
    that peer is in another namespace (a container's). Everything else gets
    bpf_redirect, which queues the packet to the target's transmit path.
    """
    if mode not in ("tc", "tcx") or direction != "ingress":
        return frozenset()
    chosen = set()
    for device in devices:
        try:
            found = info(device)
        except NetkitError:
            continue  # the loader reports a missing target with the rule's line
        if found.kind in PEER_KINDS and found.peer_elsewhere:
            chosen.add(device)
    return frozenset(chosen)


def diversion_targets(policy: Policy) -> list[str]:
    """The devices ``policy`` redirects or mirrors to, sorted."""
    return sorted(
        {
            r.action.device
            for r in policy.rules
            if r.action.kind in (REDIRECT, MIRROR) and r.action.device is not None
        }
    )


def check_diversion_targets(
    device: str,
    direction: str,
    targets: Iterable[str],
    *,
    info: Callable[[str], DeviceInfo] = device_info,
) -> None:
    """Refuse redirect and mirror targets a netkit program on ``direction`` of
    primary ``device`` could not reach by the names flowc resolves here.

    netkit_xmit moves the packet onto the other device of the pair before it
    runs the program (``skb->dev = peer``), and bpf_redirect's and
    bpf_clone_redirect's target ifindex is looked up in ``skb->dev``'s
    namespace. The egress hook's program (BPF_NETKIT_PRIMARY, run as the host
    transmits towards the container) therefore redirects among the
    *container's* devices when the peer lives in another namespace, while
    flowc numbers targets in its own: the packet would reach whatever device
    has that number in the container, or be dropped. The ingress hook's
    program runs with the packet on the primary, in this namespace, and its
    targets are fine.

    Raises:
        NetkitError: an egress hook whose pair's peer is in another namespace
            and a policy that redirects or mirrors.
    """
    named = sorted(set(targets))
    if direction != "egress" or not named:
        return
    if not info(device).peer_elsewhere:
        return
    raise NetkitError(
        f"redirect/mirror to {', '.join(named)} on egress of netkit device {device!r}: "
        "the kernel runs that program with the packet already on the peer, in the "
        "container's namespace, and looks redirect targets up there, not where flowc "
        "names them; divert on the ingress hook or on the uplink instead"
    )
