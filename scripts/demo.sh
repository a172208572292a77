#!/usr/bin/env bash
# Set up (idempotent), then walk one policy through the whole pipeline:
# check it, compile it to IR, lower it to BPF C and to flower rules for a NIC
# profile (with the offload partition), prove both lowerings mean the policy
# (the BPF half in the kernel when run as root), ask it about packets, and
# replay a short trace through the rule cache (megaflow vs exact rules).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FLOWC=.venv/bin/flowc
POLICY=examples/web-tier.fw
PROFILE=mlx5-connectx6dx
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "1. check: errors and warnings, with file:line:col"
$FLOWC check "$POLICY"

step "2. compile to the IR (first match wins; every rule cites its DSL line)"
$FLOWC compile "$POLICY" --emit ir

step "3. the BPF slow path: C for bcc, plus the classifier's map contents"
$FLOWC compile "$POLICY" --emit bpf -o "$OUT/bpf"
grep -n "DSL line\|^static\|^int \|SEC(" "$OUT"/bpf/*.bpf.c | head -25
echo "... ($(wc -l < "$OUT"/bpf/*.bpf.c) lines; maps: $(ls "$OUT"/bpf/*.maps.json))"

step "4. flower rules for $PROFILE, and the offload partition (notes on stderr)"
$FLOWC compile "$POLICY" --emit tc --profile "$PROFILE" -o "$OUT/rules.tc"
head -8 "$OUT/rules.tc"
echo "... ($(wc -l < "$OUT/rules.tc") filters in a tc -batch file)"

step "5. verify: flower proven equal to the policy; partition sound; BPF in the kernel"
if [ "$(id -u)" -eq 0 ]; then
    $FLOWC verify "$POLICY" --profile "$PROFILE" --random 500
else
    echo "(not root: the BPF half needs the kernel; running the symbolic halves)"
    $FLOWC verify "$POLICY" --profile "$PROFILE" --no-bpf
fi

step "6. eval: what the policy does to single packets"
$FLOWC eval "$POLICY" --packet "tcp 203.0.113.9:40000 -> 10.10.0.2:443"
$FLOWC eval "$POLICY" --packet "tcp 192.0.2.7:5000 -> 10.10.0.2:443"
$FLOWC eval "$POLICY" --json --packet "tcp 198.51.100.4:41000 -> 10.10.1.11:8080 flags ack"

step "7. simulate: a trace through slow path + NIC rule cache, megaflow vs exact rules"
$FLOWC simulate --policy "$POLICY" --trace examples/web-tier.trace --profile "$PROFILE"
