"""Kernel tier: the set-up left what bcc needs (run as root on this machine's kernel)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="kernel tier needs root")


@needs_root
def test_kernel_headers_are_where_bcc_looks() -> None:
    build = Path("/lib/modules") / platform.release() / "build"
    assert (build / "Makefile").exists(), f"{build} has no kernel headers (run scripts/setup.sh)"
    # bcc reads the kernel configuration from the build tree's generated headers
    # and includes kconfig.h from the source tree (the -common headers).
    assert (build / "include" / "generated" / "autoconf.h").exists(), f"{build}: no autoconf.h"
    source = build.parent / "source"
    assert (source / "include" / "linux" / "kconfig.h").exists(), f"{source}: no kconfig.h"


@needs_root
def test_venv_imports_bcc_and_compiles_a_program() -> None:
    from bcc import BPF  # Debian's python3-bpfcc, exposed to the venv by setup.sh

    program = BPF(text=b"int f(struct __sk_buff *skb) { return 0; }")
    fn = program.load_func(b"f", BPF.SCHED_CLS)
    assert fn.fd >= 0
    program.cleanup()
