#!/usr/bin/env bash
# Set up (idempotent) and run the main job on an example: check, compile to IR,
# and ask what the policy does to a few packets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FLOWC=.venv/bin/flowc
set -x
$FLOWC check examples/uplink.fw
$FLOWC compile examples/uplink.fw --emit ir
$FLOWC eval examples/uplink.fw --hook uplink --packet "tcp 10.0.3.7:40000 -> 10.0.1.10:443"
$FLOWC eval examples/uplink.fw --hook uplink --packet "tcp 192.168.1.1:5000 -> 10.0.2.20:5432"
$FLOWC eval examples/uplink.fw --hook uplink --json --packet "udp [fd00::1]:5353 -> [fd00::53]:53"
