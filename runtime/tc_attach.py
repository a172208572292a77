"""Attach a loaded slow path to a device's ingress or egress: tc (cls_bpf) or tcx.

tc mode puts the program in a clsact qdisc as a direct-action cls_bpf filter
at priority ``BPF_PRIO``, behind any flower filters (lower numbers) that the
cache installs in front. ``chain`` puts it in another tc chain: ``flowc
agent`` attaches it in chain 1, where flower traps (``goto chain 1``) send the
packets the flower table does not decide. tcx mode (Linux 6.6+) uses a bpf link, pinned in
bpffs so it outlives the process. Replacing the program is atomic in both
(``tc filter replace`` of the same priority and handle; ``BPF_LINK_UPDATE``).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from backends.targets import ETH_P_ALL
from runtime import bpf_syscall, netlink
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
MODES = ("tc", "tcx")


class AttachError(Exception):
    """Attaching or detaching failed; the message carries the kernel's words."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """Where a program is attached."""

    device: str
    ifindex: int
    direction: str
    mode: str

    @property
    def pin_path(self) -> Path:
        """The tcx link's pin (tcx mode only)."""
        return PIN_DIR / f"{self.device}-{self.direction}"


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
    pin = attachment.pin_path
    try:
        if pin.exists():
            link = bpf_syscall.obj_get(str(pin))
            try:
                bpf_syscall.link_update(link, prog_fd)
            finally:
                os.close(link)
        else:
            link = bpf_syscall.tcx_attach(prog_fd, ifindex, direction == "ingress")
            try:
                bpf_syscall.obj_pin(link, str(pin))
            finally:
                os.close(link)
    except OSError as exc:
        raise AttachError(f"tcx attach: {exc.strerror} (errno {exc.errno})") from None
    return attachment


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
    pin = Attachment(device, ifindex, direction, mode).pin_path
    if not pin.exists():
        return False
    link = bpf_syscall.obj_get(str(pin))
    try:
        bpf_syscall.link_detach(link)
    finally:
        os.close(link)
    pin.unlink()
    return True


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
