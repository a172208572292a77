"""``flowc ct list|flush|gc``: the host's BPF connection table (root).

Entries are printed in the packet syntax's words (``tcp 10.0.0.1:40000 ->
10.0.0.2:80``: the connection's original direction), with whether a reply was
seen, the TCP state, the time to expiry and the packet counts. Expiry is lazy
in the program (a packet that finds its entry expired removes it); ``gc``
removes every expired entry now, as the agent's collector does periodically.
"""

from __future__ import annotations

import argparse
import json
import sys

from backends.bpf.conntrack import CT_PIN
from cli.common import ExitCode, Subparsers
from ir.conntrack import NS_PER_S, Connection, TcpState
from ir.fields import PROTO_TCP
from runtime.conntrack import CtTable, CtTableError, table_now_ns


def add_parser(sub: Subparsers) -> None:
    """Register ``ct`` with its actions."""
    p = sub.add_parser("ct", help="list, flush or collect the BPF connection table (root)")
    p.add_argument("action", choices=["list", "flush", "gc"])
    p.add_argument("--json", action="store_true", help="one JSON object per entry / the count")
    p.add_argument("--pin", default=CT_PIN, help=f"the table's bpffs path (default {CT_PIN})")
    p.set_defaults(func=run)


def connection_json(c: Connection, now_ns: int) -> dict[str, object]:
    """One entry as ``flowc ct list --json`` prints it."""
    return {
        "connection": str(c.key),
        "state": "established" if c.replied else "new",
        "replied": c.replied,
        "tcp": c.tcp.name.lower() if c.key.proto == PROTO_TCP else None,
        "fin_from": c.fin_from,
        "expires_in_s": round((c.expires_ns - now_ns) / NS_PER_S, 3),
        "expired": now_ns >= c.expires_ns,
        "age_s": round((now_ns - c.created_ns) / NS_PER_S, 3),
        "idle_s": round((now_ns - c.last_ns) / NS_PER_S, 3),
        "packets": {"original": c.packets[0], "reply": c.packets[1]},
        "hook_id": f"{c.hook_id:#010x}",
        "start_flags": c.start_flags if c.key.proto == PROTO_TCP else None,
    }


def connection_line(c: Connection, now_ns: int) -> str:
    """One entry as ``flowc ct list`` prints it."""
    state = "established" if c.replied else "new (no reply yet)"
    tcp = f" tcp {c.tcp.name}" if c.tcp != TcpState.NONE else ""
    left = (c.expires_ns - now_ns) / NS_PER_S
    expiry = "expired" if left <= 0 else f"expires in {left:.0f}s"
    counts = f"packets {c.packets[0]} orig / {c.packets[1]} reply"
    return f"{c.key}  {state}{tcp}  {expiry}  {counts}  hook {c.hook_id:#010x}"


def run(args: argparse.Namespace) -> int:
    """``flowc ct``: read or clear the pinned table."""
    try:
        with CtTable(args.pin) as table:
            now = table_now_ns()  # the program's clock
            if args.action == "list":
                entries = sorted(table.connections(), key=lambda c: c.created_ns)
                for c in entries:
                    if args.json:
                        print(json.dumps(connection_json(c, now)))
                    else:
                        print(connection_line(c, now))
                if not args.json:
                    print(f"{len(entries)} connection{'s' if len(entries) != 1 else ''}")
                return ExitCode.OK
            gone = table.flush() if args.action == "flush" else table.gc(now)
    except CtTableError as exc:
        print(f"flowc: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except PermissionError:
        print("flowc: the connection table needs root (CAP_BPF)", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    word = "removed" if args.action == "flush" else "expired and removed"
    if args.json:
        print(json.dumps({"action": args.action, "removed": gone}))
    else:
        print(f"{gone} connection{'s' if gone != 1 else ''} {word}")
    return ExitCode.OK
