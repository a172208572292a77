"""netkit mode without a kernel: the target's verdicts in the generated C, the
direction -> attach type map, pin names, when a redirect becomes
bpf_redirect_peer, and the CLI's refusals that need no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.bpf.emit import lower
from backends.targets import NETKIT, TARGETS, TC, TCX
from runtime import bpf_syscall, netkit, tc_attach
from runtime.netkit import DeviceInfo, NetkitError, peer_redirect_targets
from tests.fixtures import compiled, run

POLICY = """
policy p ingress on nk-web {
    default drop
    allow udp dport 53
}
"""


def test_netkit_is_a_target_with_netkits_verdicts() -> None:
    assert TARGETS["netkit"] is NETKIT and not NETKIT.chains
    source = lower(compiled(POLICY), target=NETKIT).source
    assert "#define FLOWC_VERDICT_ALLOW 0 /* NETKIT_PASS */" in source
    assert "#define FLOWC_VERDICT_DROP 2 /* NETKIT_DROP */" in source
    assert "#define FLOWC_VERDICT_REDIRECT 7 /* NETKIT_REDIRECT */" in source
    # tc's names stay tc's
    assert "/* TC_ACT_SHOT */" in lower(compiled(POLICY), target=TC).source


def test_directions_are_the_primary_devices() -> None:
    """ingress of the primary = what the peer transmits (its program, PEER);
    egress = what the primary transmits (PRIMARY)."""
    assert tc_attach.NETKIT_ATTACH == {
        "ingress": bpf_syscall.BPF_NETKIT_PEER,
        "egress": bpf_syscall.BPF_NETKIT_PRIMARY,
    }


def test_pin_names_keep_tcx_and_separate_netkit() -> None:
    assert tc_attach.pin_path("nk-web", "ingress", "tcx") == tc_attach.PIN_DIR / "nk-web-ingress"
    assert tc_attach.pin_path("nk-web", "ingress", "netkit") == (
        tc_attach.PIN_DIR / "nk-web-ingress-netkit"
    )


DEVICES = {
    "nk-web": DeviceInfo("nk-web", 5, "netkit", True, True),
    "nk-local": DeviceInfo("nk-local", 6, "netkit", False, True),
    "veth-c": DeviceInfo("veth-c", 7, "veth", True, False),
    "eth1": DeviceInfo("eth1", 8, "", False, False),
    "br0": DeviceInfo("br0", 9, "bridge", False, False),
}


def info(name: str) -> DeviceInfo:
    if name not in DEVICES:
        raise NetkitError(f"device {name!r} does not exist")
    return DEVICES[name]


@pytest.mark.parametrize("mode", ["tc", "tcx"])
def test_peer_redirect_only_from_tc_ingress_to_a_peer_elsewhere(mode: str) -> None:
    every = [*DEVICES, "gone"]
    chosen = peer_redirect_targets(every, mode=mode, direction="ingress", info=info)
    assert chosen == {"nk-web", "veth-c"}
    assert peer_redirect_targets(every, mode=mode, direction="egress", info=info) == set()


def test_no_peer_redirect_from_a_netkit_program() -> None:
    """A netkit program runs on transmit, where the kernel drops bpf_redirect_peer."""
    assert peer_redirect_targets(DEVICES, mode="netkit", direction="ingress", info=info) == set()


def test_diversions_on_a_netkit_egress_hook_into_another_namespace_are_refused() -> None:
    """The egress hook's program runs with the packet on the peer, whose
    namespace resolves the redirect target: refused when that is the
    container's (another namespace), never silently sent to the wrong device."""
    with pytest.raises(NetkitError, match=r"redirect/mirror to mon0, web on egress of netkit"):
        netkit.check_diversion_targets("nk-web", "egress", ["web", "mon0", "web"], info=info)
    # The ingress hook (the peer's program) runs in this namespace: fine.
    netkit.check_diversion_targets("nk-web", "ingress", ["web"], info=info)
    # A pair whose peer has stayed here resolves in this namespace either way.
    netkit.check_diversion_targets("nk-local", "egress", ["web"], info=info)
    # Nothing diverted: nothing to ask.
    netkit.check_diversion_targets("gone", "egress", [], info=info)


def test_create_pair_refuses_bad_arguments_before_asking_the_kernel() -> None:
    with pytest.raises(NetkitError, match="mode"):
        netkit.create_pair("nk0", "nk1", mode="l4")
    with pytest.raises(NetkitError, match="policy"):
        netkit.create_pair("nk0", "nk1", policy="redirect")
    with pytest.raises(NetkitError, match="1-15 bytes"):
        netkit.create_pair("a-name-far-too-long", "nk1")


def test_load_peer_with_netkit_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "p.fw"
    policy.write_text(POLICY)
    code, _out, err = run(capsys, "load", str(policy), "--mode", "netkit", "--peer")
    assert code == 2 and "--peer needs a tc or tcx ingress hook" in err


def test_modes_agree() -> None:
    assert set(tc_attach.MODES) == set(TARGETS) and TCX.name in tc_attach.LINK_MODES
