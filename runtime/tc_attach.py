"""Attach a loaded slow path to a device's ingress or egress: tc (cls_bpf), tcx
or netkit.

tc mode puts the program in a clsact qdisc as a direct-action cls_bpf filter
at priority ``BPF_PRIO``, behind any flower filters (lower numbers) that the
cache installs in front. ``chain`` puts it in another tc chain: ``flowc
agent`` attaches it in chain 1, where flower traps (``goto chain 1``) send the
packets the flower table does not decide. tcx mode (Linux 6.6+) uses a bpf link, pinned in
bpffs so it outlives the process. Replacing the program is atomic in both
(``tc filter replace`` of the same priority and handle; ``BPF_LINK_UPDATE``).

netkit mode (Linux 6.7+, CONFIG_NETKIT) attaches to a netkit pair through a
pinned bpf link, both directions named from the primary device (the host
side), as the kernel requires. The hook's direction is the primary device's,
as for tc: ``ingress`` is what the container sends (the peer device's own
program, BPF_NETKIT_PEER, run as the peer transmits), ``egress`` what it
receives (the primary's, BPF_NETKIT_PRIMARY). With no program attached a
netkit device applies the default policy its pair was created with (pass
unless created ``drop``); detaching flowc's link returns it to that.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from backends.targets import ETH_P_ALL
from runtime import bpf_syscall, netkit, netlink
from runtime.flower_netlink import (
    RTM_DELTFILTER,
    RTM_NEWTFILTER,
    flower_tcmsg,
    hook_parent,
    message_bytes,
)
from runtime.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST

BPF_PRIO = 49152
BPF_HANDLE = 1
TCA_BPF_FLAG_ACT_DIRECT = 1
PARENT = {direction: hook_parent(direction) for direction in ("ingress", "egress")}
BPFFS = Path("/sys/fs/bpf")
PIN_DIR = BPFFS / "flowc"
MODES = ("tc", "tcx", "netkit")
LINK_MODES = ("tcx", "netkit")
NETKIT_ATTACH = {
    "ingress": bpf_syscall.BPF_NETKIT_PEER,
    "egress": bpf_syscall.BPF_NETKIT_PRIMARY,
}
"""The netkit attach type for each direction of the primary device."""
NETKIT_FEATURE = "netkit devices (CONFIG_NETKIT, Linux 6.7+)"


class AttachError(Exception):
    """Attaching or detaching failed; the message carries the kernel's words."""


class HookUnavailable(AttachError):
    """The running kernel lacks the hook (a feature it was built without)."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """Where a program is attached."""

    device: str
    ifindex: int
    direction: str
    mode: str

    @property
    def pin_path(self) -> Path:
        """The link's pin (tcx and netkit modes)."""
        return pin_path(self.device, self.direction, self.mode)


def pin_path(device: str, direction: str, mode: str) -> Path:
    """Where flowc pins the link of a tcx or netkit hook (tcx keeps its old name)."""
    suffix = "" if mode == "tcx" else f"-{mode}"
    return PIN_DIR / f"{device}-{direction}{suffix}"


def check_hook(device: str, mode: str) -> None:
    """Fail early, before any compile, when ``mode`` cannot attach to ``device``
    here: the kernel lacks the hook (HookUnavailable) or the device is the
    wrong kind (AttachError). tc and tcx need nothing beyond the device."""
    if mode != "netkit":
        with IPRoute() as ipr:
            _ifindex(ipr, device)
        return
    try:
        supported = bpf_syscall.netkit_supported()
    except OSError as exc:
        raise AttachError(f"probing for netkit: {exc.strerror} (errno {exc.errno})") from None
    if not supported:
        raise HookUnavailable(f"this kernel ({os.uname().release}) has no {NETKIT_FEATURE}")
    try:
        info = netkit.device_info(device)
    except netkit.NetkitError as exc:
        raise AttachError(str(exc)) from None
    if info.kind != "netkit":
        kind = f"a {info.kind} device" if info.kind else "not a virtual device"
        raise AttachError(
            f"device {device!r} is {kind}, not netkit: --mode netkit attaches to the "
            "primary device of a netkit pair (--mode tc or tcx attach elsewhere)"
        )
    if not info.netkit_primary:
        raise AttachError(
            f"device {device!r} is the peer of a netkit pair: attach from its primary "
            "device (the kernel names both hooks through the primary)"
        )


def _ifindex(ipr: IPRoute, device: str) -> int:
    found = ipr.link_lookup(ifname=device)
    if not found:
        raise AttachError(f"device {device!r} does not exist")
    return int(found[0])


def _netlink_words(exc: NetlinkError) -> str:
    return f"{exc.args[1] if len(exc.args) > 1 else exc} (errno {exc.code})"


def _ensure_bpffs() -> None:
    if not os.path.ismount(BPFFS):
        BPFFS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)
    PIN_DIR.mkdir(exist_ok=True)


def _chain_request(
    ifindex: int, direction: str, chain: int, prog_fd: int | None, *, delete: bool = False
) -> None:
    """Add-or-replace (or delete) flowc's cls_bpf filter in ``chain`` (pyroute2 0.9.7's
    tc() request builder has no TCA_CHAIN; flowc's tcmsg class does)."""
    msg = flower_tcmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = ifindex
    msg["handle"] = BPF_HANDLE
    msg["parent"] = PARENT[direction]
    msg["info"] = (BPF_PRIO << 16) | socket.htons(ETH_P_ALL)
    attrs: list[list[object]] = [["TCA_KIND", "bpf"], ["TCA_CHAIN", chain]]
    if prog_fd is not None:
        options = [
            ["TCA_BPF_CLASSID", 1],
            ["TCA_BPF_FD", prog_fd],
            ["TCA_BPF_NAME", "flowc"],
            ["TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT],
        ]
        attrs.append(["TCA_OPTIONS", {"attrs": options}])
    msg["attrs"] = attrs
    flags = NLM_F_REQUEST | NLM_F_ACK
    if not delete:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    data = message_bytes(msg, RTM_DELTFILTER if delete else RTM_NEWTFILTER, flags, 1)
    if not netlink.request(data, 1):
        raise AttachError("the kernel did not acknowledge the cls_bpf request")


def attach(
    prog_fd: int, device: str, direction: str, *, mode: str = "tc", chain: int = 0
) -> Attachment:
    """Attach (or atomically replace) the program on ``device`` ``direction``
    (tc mode: in tc chain ``chain``)."""
    if direction not in PARENT:
        raise AttachError(f"direction must be ingress or egress, not {direction!r}")
    if mode not in MODES:
        raise AttachError(f"mode must be one of {MODES}")
    if chain and mode != "tc":
        raise AttachError("only tc mode has chains")
    with IPRoute() as ipr:
        ifindex = _ifindex(ipr, device)
        attachment = Attachment(device, ifindex, direction, mode)
        if mode == "tc":
            try:
                ipr.tc("add", "clsact", ifindex)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: already there
                    raise AttachError(f"adding clsact: {_netlink_words(exc)}") from None
            if chain:
                try:
                    _chain_request(ifindex, direction, chain, prog_fd)
                except OSError as exc:
                    raise AttachError(
                        f"attaching cls_bpf in chain {chain}: {exc.strerror} (errno {exc.errno})"
                    ) from None
                return attachment
            try:
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    ifindex,
                    handle=BPF_HANDLE,
                    fd=prog_fd,
                    name="flowc",
                    parent=PARENT[direction],
                    classid=1,
                    direct_action=True,
                    prio=BPF_PRIO,
                    protocol=ETH_P_ALL,
                )
            except NetlinkError as exc:
                raise AttachError(f"attaching cls_bpf: {_netlink_words(exc)}") from None
            return attachment
    _ensure_bpffs()
    try:
        _link_attach(prog_fd, attachment)
    except OSError as exc:
        raise AttachError(f"{mode} attach: {_link_words(exc, attachment)}") from None
    return attachment


def _link_words(exc: OSError, where: Attachment) -> str:
    """The kernel's errno for a link request, with what it means for this hook."""
    meaning = (
        {
            errno.ENXIO: f"{where.device} is not a netkit device",
            errno.EACCES: f"{where.device} is a netkit peer, not the primary",
        }.get(exc.errno or 0, "")
        if where.mode == "netkit"
        else ""
    )
    return f"{exc.strerror} (errno {exc.errno}){': ' + meaning if meaning else ''}"


def _link_create(prog_fd: int, where: Attachment) -> int:
    if where.mode == "tcx":
        return bpf_syscall.tcx_attach(prog_fd, where.ifindex, where.direction == "ingress")
    try:
        return bpf_syscall.netkit_attach(prog_fd, where.ifindex, NETKIT_ATTACH[where.direction])
    except OSError as exc:
        if exc.errno == errno.EINVAL and not bpf_syscall.netkit_supported():
            raise HookUnavailable(
                f"this kernel ({os.uname().release}) has no {NETKIT_FEATURE}"
            ) from None
        raise


def _link_attach(prog_fd: int, where: Attachment) -> None:
    """Replace the program behind flowc's pinned link, or create and pin one.

    A pin whose link no longer holds this hook (its device was deleted, or the
    name now belongs to another device) is stale: it is dropped and a fresh
    link takes its place, so a restart after the device came back attaches
    instead of failing."""
    pin = where.pin_path
    if pin.exists():
        link = bpf_syscall.obj_get(str(pin))
        try:
            info = bpf_syscall.link_info(link)
            if info.ifindex == where.ifindex:
                try:
                    bpf_syscall.link_update(link, prog_fd)
                    return
                except OSError as exc:
                    if exc.errno != errno.ENOLINK:
                        raise
            pin.unlink()
        finally:
            os.close(link)
    link = _link_create(prog_fd, where)
    try:
        bpf_syscall.obj_pin(link, str(pin))
    finally:
        os.close(link)


def detach(device: str, direction: str, *, mode: str = "tc", chain: int = 0) -> bool:
    """Remove flowc's program from the hook; True when something was removed."""
    with IPRoute() as ipr:
        ifindex = _ifindex(ipr, device)
        if mode == "tc" and chain:
            try:
                _chain_request(ifindex, direction, chain, None, delete=True)
            except OSError as exc:
                if exc.errno in (2, 22):  # no such filter, chain or clsact
                    return False
                raise AttachError(
                    f"detaching cls_bpf from chain {chain}: {exc.strerror} (errno {exc.errno})"
                ) from None
            return True
        if mode == "tc":
            try:
                ipr.tc(
                    "del-filter",
                    "bpf",
                    ifindex,
                    handle=BPF_HANDLE,
                    parent=PARENT[direction],
                    prio=BPF_PRIO,
                    protocol=ETH_P_ALL,
                )
            except NetlinkError as exc:
                if exc.code in (2, 22):  # ENOENT / EINVAL: no such filter (or no clsact)
                    return False
                raise AttachError(f"detaching cls_bpf: {_netlink_words(exc)}") from None
            return True
    if mode not in LINK_MODES:
        raise AttachError(f"mode must be one of {MODES}")
    pin = Attachment(device, ifindex, direction, mode).pin_path
    if not pin.exists():
        return False
    try:
        link = bpf_syscall.obj_get(str(pin))
        try:
            bpf_syscall.link_detach(link)
        finally:
            os.close(link)
    except OSError as exc:
        raise AttachError(f"{mode} detach: {exc.strerror} (errno {exc.errno})") from None
    pin.unlink()
    return True


@dataclass(frozen=True, slots=True)
class PinnedLink:
    """A link flowc pinned, as found in bpffs (for unload, adoption and checks).

    Attributes:
        pin: its path under PIN_DIR.
        info: what the kernel says about it (ifindex 0: its device is gone).
    """

    pin: Path
    info: bpf_syscall.LinkInfo


def pinned_links() -> list[PinnedLink]:
    """Every link flowc has pinned (tcx and netkit), with the kernel's view of it."""
    if not PIN_DIR.is_dir():
        return []
    found = []
    for pin in sorted(PIN_DIR.iterdir()):
        try:
            link = bpf_syscall.obj_get(str(pin))
        except OSError:
            continue  # not a link flowc can open (another tool's file)
        try:
            found.append(PinnedLink(pin, bpf_syscall.link_info(link)))
        except OSError:
            pass  # a pinned program or map, not a link
        finally:
            os.close(link)
    return found


def held_link(device: str, direction: str, mode: str) -> bpf_syscall.LinkInfo | None:
    """flowc's pinned link of this hook, when it still holds ``device`` (what a
    restarted agent adopts: attaching swaps the program behind it); None when
    there is no pin, or its link lost the device (attaching replaces that pin)."""
    if mode not in LINK_MODES:
        raise AttachError(f"only {' and '.join(LINK_MODES)} hooks have links")
    with IPRoute() as ipr:
        ifindex = _ifindex(ipr, device)
    for pinned in pinned_links():
        if pinned.pin == pin_path(device, direction, mode) and pinned.info.ifindex == ifindex:
            return pinned.info
    return None


def attached_names(device: str, direction: str) -> list[str]:
    """Names of the cls_bpf programs on the hook (tc mode, every chain), to check
    what is attached."""
    with IPRoute() as ipr:
        ifindex = _ifindex(ipr, device)
        try:
            filters = ipr.get_filters(index=ifindex, parent=PARENT[direction])
        except NetlinkError:
            return []
        names = []
        for f in filters:
            options = f.get_attr("TCA_OPTIONS")
            name = options.get_attr("TCA_BPF_NAME") if options is not None else None
            if name is not None:
                names.append(str(name))
        return names
