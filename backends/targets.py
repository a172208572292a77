"""Kernel constants every target shares, and what each BPF attach point is.

Ethertypes, tc verdicts and netkit's verdicts are the kernel's ABI
(``if_ether.h``, ``pkt_cls.h``, ``if_link.h``); they are written once here for
the BPF backend, the flower backend and the runtime that talks to the kernel.
A :class:`BpfTarget` says where a slow-path program attaches and how it
answers, so the emitter stays the same for each.
"""

from __future__ import annotations

from dataclasses import dataclass

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_PIPE = 3
TC_ACT_STOLEN = 4
TC_ACT_REDIRECT = 7
TC_ACT_GOTO_CHAIN = 2 << 28
TC_ACT_EXT_VAL_MASK = (1 << 28) - 1

NETKIT_NEXT = -1
NETKIT_PASS = 0
NETKIT_DROP = 2
NETKIT_REDIRECT = 7

TC_ACT_NAMES = {
    TC_ACT_OK: "TC_ACT_OK",
    TC_ACT_SHOT: "TC_ACT_SHOT",
    TC_ACT_REDIRECT: "TC_ACT_REDIRECT",
}
"""The verdicts a flowc slow path returns, by the names the kernel headers give them."""

NETKIT_NAMES = {
    NETKIT_PASS: "NETKIT_PASS",
    NETKIT_DROP: "NETKIT_DROP",
    NETKIT_REDIRECT: "NETKIT_REDIRECT",
}
"""netkit's verdicts (``enum netkit_action``) by their header names: the same
numbers as tc's, so the entry point is the same C for both."""


@dataclass(frozen=True, slots=True)
class BpfTarget:
    """An attach point for the slow path.

    Attributes:
        name: the ``--mode`` that selects it.
        description: what the attach point is, for the generated C's comments.
        section: the ELF section / program type bcc loads the entry function as.
        context: the C type of the entry function's argument.
        allow, drop, redirect: the verdict codes the program returns.
        chains: whether the hook has tc chains (flower traps jump to chain 1).
        verdict_names: the header names of the verdict codes, for the generated C.
    """

    name: str
    description: str
    section: str
    context: str
    allow: int
    drop: int
    redirect: int
    chains: bool
    verdict_names: tuple[tuple[int, str], ...] = tuple(TC_ACT_NAMES.items())

    def verdict_name(self, code: int) -> str:
        """The kernel header's name of one of this hook's verdict codes."""
        return dict(self.verdict_names).get(code, str(code))


TC = BpfTarget(
    "tc",
    "tc (cls_bpf in direct-action mode on a clsact qdisc)",
    "classifier",
    "struct __sk_buff",
    TC_ACT_OK,
    TC_ACT_SHOT,
    TC_ACT_REDIRECT,
    chains=True,
)
"""cls_bpf in direct-action mode on a clsact qdisc."""

TCX = BpfTarget(
    "tcx",
    "tcx (a bpf link on the device, Linux 6.6+)",
    "classifier",
    "struct __sk_buff",
    TC_ACT_OK,
    TC_ACT_SHOT,
    TC_ACT_REDIRECT,
    chains=False,
)
"""A tcx bpf link (Linux 6.6+): tc's verdicts, no qdisc and no chains."""

NETKIT = BpfTarget(
    "netkit",
    "netkit (a bpf link on a netkit device pair, Linux 6.7+)",
    "classifier",
    "struct __sk_buff",
    NETKIT_PASS,
    NETKIT_DROP,
    NETKIT_REDIRECT,
    chains=False,
    verdict_names=tuple(NETKIT_NAMES.items()),
)
"""A netkit device's own program (a BPF_PROG_TYPE_SCHED_CLS program run in the
pair's transmit path, before the packet crosses to the peer): netkit's verdicts,
no qdisc, no chains. It sees the Ethernet header at offset 0, as tc does."""

TARGETS = {t.name: t for t in (TC, TCX, NETKIT)}
