#!/usr/bin/env bash
# Idempotent set-up for the benchmarks that need tools beyond scripts/setup.sh
# (root): bench/datapath_bench.py compares flowc's slow path with iptables and
# nftables and drives real packets with netsniff-ng's trafgen. The kernel needs
# nf_tables and xtables (built in or as modules); this only installs user space.
set -euo pipefail
cd "$(dirname "$0")/.."

# iptables: the xtables-nft or legacy iptables binary (the benchmark uses
# iptables-legacy when present, so its rules are real xtables chains, not
# nf_tables rules in disguise); nftables: the nft command; netsniff-ng: trafgen.
APT_PACKAGES=(iptables nftables netsniff-ng iproute2)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench-setup: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "bench-setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for tool in iptables nft trafgen; do
    command -v "$tool" >/dev/null || { echo "bench-setup: $tool missing after install" >&2; exit 1; }
done
echo "bench-setup: iptables, nft and trafgen present"
