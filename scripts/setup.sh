#!/usr/bin/env bash
# Idempotent set-up for flowc on Debian 12 (root): system packages for the
# kernel tiers, kernel headers where bcc looks for them, and a virtual
# environment with flowc installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# linux-image-amd64, qemu-system-x86 and busybox-static: the guest-kernel tier
# boots a Debian kernel (which has cls_flower) with virtme-ng under qemu.
APT_PACKAGES=(python3-bpfcc libbpfcc linux-headers-amd64 iproute2 procps
              linux-image-amd64 qemu-system-x86 busybox-static)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The guest tier boots bookworm-backports' 6.12 kernel: it has netkit
# (CONFIG_NETKIT=y, Linux 6.7+), which Debian 12's 6.1 predates, and the same
# cls_flower/act_ct/nf_flow_table modules. The suite is part of Debian's archive,
# signed by the same keyring as bookworm itself; apt pins it below bookworm by
# default (NotAutomatic), so only the packages named here come from it.
# Its headers are installed for reference (tests/test_uapi_numbers.py checks
# netkit's numbers against them); bcc keeps compiling against 6.1's (see
# tests/guest_runner.py, BCC_HEADER_SERIES).
BACKPORTS_KERNEL=6.12.95+deb12-amd64
BACKPORTS_PACKAGES=("linux-image-$BACKPORTS_KERNEL" "linux-headers-$BACKPORTS_KERNEL")
BACKPORTS_SOURCE=/etc/apt/sources.list.d/flowc-backports.sources
missing=()
for pkg in "${BACKPORTS_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    if [ ! -f "$BACKPORTS_SOURCE" ]; then
        cat > "$BACKPORTS_SOURCE" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
        echo "setup: added bookworm-backports ($BACKPORTS_SOURCE)"
    fi
    echo "setup: installing ${missing[*]} (bookworm-backports)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
        "${missing[@]}" >/dev/null
fi

# bcc compiles BPF C against the running kernel's headers at
# /lib/modules/$(uname -r)/{build,source}. The development machines run a
# kernel with no headers package of its own, so point those paths at Debian's
# linux-headers-amd64 (the -amd64 dir is "build", the -common dir "source"):
# Debian 12's own 6.1 series, which bcc 0.26 can compile against (6.12's
# headers, also installed above, it cannot).
# Only done where the running kernel has no headers; real ones are never touched.
kver="$(uname -r)"
moddir="/lib/modules/$kver"
if [ ! -e "$moddir/build/Makefile" ] && [ "$(id -u)" -eq 0 ]; then
    hdr_build="$(ls -d /usr/src/linux-headers-6.1.*-amd64 2>/dev/null | sort -V | tail -n1 || true)"
    if [ -n "$hdr_build" ]; then
        hdr_common="${hdr_build%-amd64}-common"
        mkdir -p "$moddir"
        ln -sfn "$hdr_build" "$moddir/build"
        [ -d "$hdr_common" ] && ln -sfn "$hdr_common" "$moddir/source"
        echo "setup: $moddir/build -> $hdr_build"
    fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Expose Debian's bcc (pure Python over libbcc via ctypes) to the venv, and only bcc:
# a shim directory holding one symlink, put on sys.path by a .pth file.
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
    mkdir -p .venv/bcc-shim
    ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-shim/bcc
    echo "$(pwd)/.venv/bcc-shim" > "$site/flowc-bcc.pth"
fi

stamp=.venv/.flowc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # pip and setuptools narrate an editable install at length; keep their
    # output in a log and show it only when the install fails.
    log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[dev]'; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log above, kept in $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
.venv/bin/python -c 'import bcc' 2>/dev/null && echo "setup: bcc importable" || echo "setup: bcc NOT importable (kernel tier will skip)"
