"""`hanjulloctl status [--json] [--watch]`: what every component, agent, line group, phone,
run and spam test is doing, as tables or as the status API's JSON document."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from daemon.cli.common import Subparsers, get, socket_path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line.rstrip()]
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def render_status(snap: dict[str, Any]) -> str:
    node = snap["node"]
    parts = [
        f"node {node['id']} ({node['name']})  version {node['version']}  "
        f"up {int(node['uptime_s'])}s  clock {node.get('clock', '-')}",
        "",
        table(
            ["component", "state", "since", "reason"],
            [[c["name"], c["state"], c["since"][11:19], c["reason"]] for c in snap["components"]],
        ),
        "",
        table(
            ["agent", "table", "group", "state", "port", "waiting", "due", "oldest_s", "in_flight"],
            [
                [
                    a["number"],
                    a["table"],
                    a["group"],
                    a["state"],
                    {True: "open", False: "closed", None: "?"}[a["reachable"]],
                    a["waiting"],
                    a["due"],
                    a["oldest_waiting_s"],
                    a["in_flight"],
                ]
                for a in snap["agents"]
            ],
        ),
        "",
        table(
            ["group", "type", "agents", "holder", "since"],
            [
                [
                    g["name"],
                    g["type"],
                    ",".join(map(str, g["agents"])),
                    _holder(g.get("holder")),
                    g.get("since"),
                ]
                for g in snap["line_groups"]
            ],
        ),
        "",
        table(
            ["modem", "carrier", "phone", "driver", "state", "reason"],
            [
                [m["name"], m["carrier"], m["phone"], m["driver"], m["state"], m["reason"]]
                for m in snap["modems"]
            ],
        ),
    ]
    runs = snap.get("runs") or []
    if runs:
        parts += [
            "",
            table(
                [
                    "run",
                    "company",
                    "group",
                    "status",
                    "target",
                    "inserted",
                    "success",
                    "fail",
                    "pending",
                ],
                [
                    [
                        r.get("run_id", "")[:8],
                        r.get("company"),
                        r.get("line_group"),
                        r.get("status"),
                        r.get("target"),
                        r.get("inserted"),
                        r.get("success"),
                        r.get("fail"),
                        r.get("pending"),
                    ]
                    for r in runs
                ],
            ),
        ]
    spam = snap.get("spam_tests") or {}
    tests = spam.get("active", []) + spam.get("queue", []) + spam.get("recent", [])
    if tests:

        def cell(test: dict[str, Any], carrier: str) -> str | None:
            entry = test.get("carriers", {}).get(carrier)
            if entry is None:
                return None
            verdict = entry.get("verdict") or "waiting"
            return verdict + (" (late)" if entry.get("late") else "")

        rows = [
            [
                t.get("test_id", "")[:8],
                t.get("company") or t.get("source"),
                t.get("status", "queued"),
                t.get("overall"),
                *(cell(t, c) for c in ("SKT", "KT", "LGU")),
                t.get("elapsed_s", t.get("waiting_s")),
            ]
            for t in tests
        ]
        parts += [
            "",
            table(["spam test", "company", "status", "overall", "SKT", "KT", "LGU", "s"], rows),
        ]
    if spam.get("grace_s"):
        grace = "  ".join(f"{c} {g:.1f}s" for c, g in spam["grace_s"].items())
        flagged = [p["modem"] for p in spam.get("phones", []) if p.get("flagged")]
        parts.append(
            f"spam-test grace: {grace}"
            + (f"; phones that missed their canary: {', '.join(flagged)}" if flagged else "")
        )
    return "\n".join(parts)


def _holder(holder: Any) -> str | None:
    if not holder:
        return None
    return f"{holder.get('company')}/{str(holder.get('run_id', ''))[:8]}"


def cmd_status(args: argparse.Namespace) -> int:
    path = socket_path(args)
    if not args.watch:
        snap = get(path, "/v1/status")
        print(json.dumps(snap, ensure_ascii=False, indent=2) if args.json else render_status(snap))
        return 0
    try:
        while True:
            snap = get(path, "/v1/status")
            text = json.dumps(snap, ensure_ascii=False) if args.json else render_status(snap)
            if sys.stdout.isatty() and not args.json:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser("status", parents=[common], help="what every component is doing")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--socket", help="the daemon's socket (default: from the config)")
    status.set_defaults(func=cmd_status)
