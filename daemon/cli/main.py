"""`hanjulloctl`: the operator's command line.

stdout carries only the result (a table, TOML, or exactly one JSON document with
``--json``); logs, progress and errors go to stderr. ``--config PATH`` is
accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from config.loader import ConfigError, load_config
from config.logs import setup_logging
from config.model import DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH, NodeConfig


class CtlError(Exception):
    """A failure the operator can act on; printed without a traceback, exit 1."""


# ---- status socket client -----------------------------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


def fetch_json(path: Path, url: str, timeout: float = 5.0) -> Any:
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        body = response.read()
    except FileNotFoundError as exc:
        raise CtlError(
            f"no daemon socket at {path}: the daemon is not running, or the path is wrong "
            "(pass --socket or --config)"
        ) from exc
    except ConnectionRefusedError as exc:
        raise CtlError(f"{path} exists but nobody listens: the daemon is not running") from exc
    except PermissionError as exc:
        raise CtlError(
            f"permission denied on {path}: run as root or as a member of the socket's group"
        ) from exc
    except (TimeoutError, OSError) as exc:
        raise CtlError(f"cannot talk to the daemon at {path}: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        raise CtlError(f"daemon answered {response.status}: {body.decode(errors='replace')}")
    return json.loads(body)


# ---- rendering ------------------------------------------------------------------------------
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


# ---- commands -------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> NodeConfig:
    path = getattr(args, "config", None) or DEFAULT_CONFIG_PATH
    return load_config(Path(path))


def _socket_path(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "config", None):
        return _config(args).socket.path
    if DEFAULT_CONFIG_PATH.exists():
        try:
            return load_config(DEFAULT_CONFIG_PATH).socket.path
        except ConfigError:
            pass
    return DEFAULT_SOCKET_PATH


def cmd_status(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    if not args.watch:
        snap = fetch_json(path, "/v1/status")
        print(json.dumps(snap, ensure_ascii=False, indent=2) if args.json else render_status(snap))
        return 0
    try:
        while True:
            snap = fetch_json(path, "/v1/status")
            text = json.dumps(snap, ensure_ascii=False) if args.json else render_status(snap)
            if sys.stdout.isatty() and not args.json:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(getattr(args, "config", None) or DEFAULT_CONFIG_PATH)
    try:
        load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  - {problem}")
        return 1
    print(f"{path}: ok")
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    from config.example import sim_example

    if not args.sim:
        example = Path(__file__).resolve().parent.parent / "systemd" / "node.toml.example"
        if not example.exists():
            raise CtlError("only --sim examples are available in this installation")
        print(example.read_text(), end="")
        return 0
    if args.dir is None:
        raise CtlError("--sim needs --dir DIR (where the simulated node keeps its files)")
    try:
        text = sim_example(
            Path(args.dir), phones_per_carrier=args.phones_per_carrier, instance=args.instance
        )
    except ValueError as exc:
        raise CtlError(f"--instance: {exc}") from exc
    print(text)
    return 0


def cmd_db_init(args: argparse.Namespace) -> int:
    from config.clock import NodeClock
    from daemon.schema import init_storage

    config = _config(args)
    today: date = NodeClock(config.clock.file).now_kst().date()
    import asyncpg
    import pymysql

    try:
        report = asyncio.run(init_storage(config, today))
    except OSError as exc:
        raise CtlError(f"cannot reach a database: {exc}") from exc
    except (asyncpg.PostgresError, pymysql.err.MySQLError) as exc:
        raise CtlError(f"storage bootstrap failed: {exc}; fix the cause and run it again") from exc
    if args.json:
        print(
            json.dumps(
                {
                    "postgres_version": report.pg_version,
                    "postgres_applied": report.pg_applied,
                    "mysql_created": report.mysql_created,
                }
            )
        )
    else:
        print(
            f"postgres schema version {report.pg_version}"
            + (
                f" (applied {', '.join(report.pg_applied)})"
                if report.pg_applied
                else " (up to date)"
            )
        )
        print(
            f"mysql tables created: {len(report.mysql_created)}"
            + (f" ({', '.join(report.mysql_created)})" if report.mysql_created else "")
        )
    return 0


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"node configuration (default {DEFAULT_CONFIG_PATH})",
    )
    parser = argparse.ArgumentParser(
        prog="hanjulloctl", parents=[common], description="Operate a Hanjullo node"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    status = sub.add_parser("status", parents=[common], help="what every component is doing")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--socket", help="the daemon's socket (default: from the config)")
    status.set_defaults(func=cmd_status)

    cfg = sub.add_parser("config", parents=[common], help="check or generate configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", parents=[common], help="validate; exit 1 on problems")
    check.set_defaults(func=cmd_config_check)
    example = cfg_sub.add_parser("example", parents=[common], help="print an example config")
    example.add_argument("--sim", action="store_true", help="a fully simulated node")
    example.add_argument("--dir", help="where the simulated node keeps its runtime files")
    example.add_argument("--phones-per-carrier", type=int, default=1, choices=range(1, 10))
    example.add_argument(
        "--instance",
        type=int,
        help="node N's own databases (PostgreSQL and MySQL node<N>, Redis db N), N = 1-15",
    )
    example.set_defaults(func=cmd_config_example)

    db = sub.add_parser("db", parents=[common], help="storage")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    init = db_sub.add_parser("init", parents=[common], help="create or upgrade all tables")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=cmd_db_init)

    for register in _extensions():
        register(sub, common)
    return parser


# Each capability adds its subcommands: (subparsers, common parent) -> None.
def _extensions() -> list[Callable[[Any, argparse.ArgumentParser], None]]:
    from daemon.cli import pdu, runs, spam

    return [pdu.register, runs.register, spam.register]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("warning", "console")
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"hanjulloctl: {exc}", file=sys.stderr)
        return 1
    except CtlError as exc:
        print(f"hanjulloctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
