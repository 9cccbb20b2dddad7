"""`hanjulloctl status [--json] [--watch]`: what every component, agent, line group, phone,
run and spam test is doing, as tables or as the status API's JSON document."""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from daemon.cli.common import Subparsers, get, socket_path

# How a state reads on a terminal: green it works, yellow it is on its way or waits,
# red it needs someone. Any other value is plain.
GOOD = frozenset({"running", "ok", "ready", "open", "pass", "completed", "sending", "yes"})
WAITING = frozenset(
    {
        "starting",
        "opening",
        "initialising",
        "resetting",
        "unknown",
        "queued",
        "active",
        "waiting",
        "held",
        "paused",
        "draining",
        "results",
        "?",
    }
)
BAD = frozenset(
    {
        "stopped",
        "degraded",
        "unreachable",
        "stalled",
        "absent",
        "hung",
        "misconfigured",
        "closed",
        "blocked",
        "failed",
        "timeout",
        "device_error",
        "cancelled",
        "no",
    }
)


def styled(value: Any) -> Text:
    """A cell: `-` for unknown, coloured by what the word means; never parsed as markup
    (a company name may hold brackets)."""
    if value is None:
        return Text("-", style="dim")
    text = str(value)
    word = text.split(" ", 1)[0]
    style = (
        "green" if word in GOOD else "yellow" if word in WAITING else "red" if word in BAD else ""
    )
    return Text(text, style=style)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A table whose columns line up by display width (a Hangul syllable is two columns)."""
    out = Table(
        box=None,
        pad_edge=False,
        show_edge=False,
        header_style="bold",
        expand=False,
    )
    for i, header in enumerate(headers):
        values = [row[i] for row in rows]
        numeric = any(isinstance(v, (int, float)) for v in values) and all(
            isinstance(v, (int, float)) or v is None for v in values
        )
        # Names and numbers are never folded; free text (reasons, paths) folds first.
        out.add_column(
            header.upper(),
            overflow="fold",
            justify="right" if numeric else "left",
            no_wrap=numeric or i == 0 or header == "table",
        )
    for row in rows:
        out.add_row(*(styled(v) for v in row))
    return out


def status_view(snap: dict[str, Any]) -> Group:
    """Every section of the status as one renderable (for printing and for --watch)."""
    node = snap["node"]
    parts: list[RenderableType] = [
        # The name last: a simulated node's is a long path, and wrapping it must not split
        # the uptime an operator looks for.
        Text(
            f"node {node['id']}  up {int(node['uptime_s'])}s  version {node['version']}  "
            f"({node['name']})"
        ),
        _clock_line(node),
        Text(""),
        table(
            ["component", "state", "since", "reason"],
            [[c["name"], c["state"], c["since"][11:19], c["reason"]] for c in snap["components"]],
        ),
        Text(""),
        table(
            # Short headers: with an agent "unreachable" the table still fits 80 columns.
            ["agent", "table", "group", "state", "port", "waiting", "due", "oldest", "flight"],
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
        Text(""),
        table(
            ["group", "type", "agents", "holder", "since"],
            [
                [
                    g["name"],
                    g["type"],
                    ",".join(map(str, g["agents"])),
                    _holder(g.get("holder")),
                    (g.get("since") or "")[11:19] or None,
                ]
                for g in snap["line_groups"]
            ],
        ),
        Text(""),
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
            Text(""),
            table(
                # The group a run holds is in the line-group table (its holder).
                [
                    "run",
                    "company",
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
            Text(""),
            table(["spam test", "company", "status", "overall", "SKT", "KT", "LGU", "s"], rows),
        ]
    if spam.get("grace_s"):
        grace = "  ".join(f"{c} {g:.1f}s" for c, g in spam["grace_s"].items())
        flagged = [p["modem"] for p in spam.get("phones", []) if p.get("flagged")]
        line = Text(f"spam-test grace: {grace}")
        if flagged:
            line.append(f"; phones that missed their canary: {', '.join(flagged)}", style="red")
        parts.append(line)
    return Group(*parts)


def render_status(snap: dict[str, Any], width: int = 80, color: bool = False) -> str:
    """The status as text `width` columns wide (with ANSI colours when `color`)."""
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
    )
    console.print(status_view(snap))
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").split("\n"))


def _clock_line(node: dict[str, Any]) -> Text:
    """The node clock, and whether the system clock under it is synchronised: night holds
    and log-table months depend on it."""
    line = Text(f"clock {node.get('clock', '-')}  system clock ")
    sync = node.get("clock_sync") or {}
    synchronised = sync.get("synchronised")
    if synchronised is None:
        line.append("sync unknown", style="yellow")
        if sync.get("detail"):
            line.append(f" ({sync['detail']})")
        return line
    line.append(
        "synchronised" if synchronised else "NOT synchronised",
        style="green" if synchronised else "bold red",
    )
    if sync.get("max_error_s") is not None:
        line.append(f", max error {_seconds(float(sync['max_error_s']))}")
    return line


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _holder(holder: Any) -> str | None:
    if not holder:
        return None
    return f"{holder.get('company')}/{str(holder.get('run_id', ''))[:8]}"


def cmd_status(args: argparse.Namespace) -> int:
    path = socket_path(args)
    if args.json:
        if not args.watch:
            print(json.dumps(get(path, "/v1/status"), ensure_ascii=False, indent=2))
            return 0
        try:
            while True:
                print(json.dumps(get(path, "/v1/status"), ensure_ascii=False), flush=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0
    # Colour on a terminal, plain text otherwise (rich decides; NO_COLOR is honoured).
    console = Console(highlight=False)
    if not args.watch:
        console.print(status_view(get(path, "/v1/status")))
        return 0
    if not console.is_terminal:
        # Not a terminal: one status after the other, nothing to redraw.
        try:
            while True:
                console.print(status_view(get(path, "/v1/status")))
                console.print()
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0
    return _watch(console, path, args.interval)


def _watch(console: Console, path: Any, interval: float) -> int:
    """Redraw in place on the terminal's alternate screen (as top does) until Ctrl-C."""
    try:
        with Live(
            status_view(get(path, "/v1/status")),
            console=console,
            screen=True,
            auto_refresh=False,
            vertical_overflow="crop",
        ) as live:
            while True:
                time.sleep(interval)
                live.update(status_view(get(path, "/v1/status")), refresh=True)
    except KeyboardInterrupt:
        return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser("status", parents=[common], help="what every component is doing")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--socket", help="the daemon's socket (default: from the config)")
    status.set_defaults(func=cmd_status)
