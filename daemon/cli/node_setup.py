"""`hanjulloctl config check|example` and `db init`: a node's configuration and storage.

`db init` runs the daemon's storage bootstrap (`daemon.schema`, a library the CLI and the
daemon share; it starts none of the daemon's components).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import date
from pathlib import Path

import asyncpg
import pymysql

from config.clock import NodeClock
from config.example import sim_example
from config.loader import ConfigError, load_config
from config.model import DEFAULT_CONFIG_PATH, NodeConfig
from daemon.cli.common import CtlError, Subparsers, node_config
from daemon.schema import MigrationFailed, init_storage, run_with_pg
from dispatch.store import web


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(getattr(args, "config", None) or DEFAULT_CONFIG_PATH)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  - {problem}")
        return 1
    print(f"{path}: ok")
    if getattr(args, "db", False):
        try:
            foreign = run_with_pg(config, lambda conn: foreign_web_groups(conn, config))
        except (OSError, asyncpg.PostgresError) as exc:
            raise CtlError(f"cannot read the web service's line groups: {exc}") from exc
        for line in foreign:
            print(f"  ! {line}")
        if not foreign:
            print("web service line groups: every active group is a line group of this node")
    return 0


async def foreign_web_groups(conn: asyncpg.Connection, config: NodeConfig) -> list[str]:
    """The web's active line groups whose tables are no configured group of this node: a
    run assigned to one waits, with that reason, and is never sent on another group."""
    ours = {frozenset(config.agent(n).table for n in g.agents): g.name for g in config.line_groups}
    return [
        f"web line group {group.name!r} ({group.group_type}: {', '.join(group.tables) or 'no'}"
        " valid tables) is no line group of this node; runs assigned to it wait"
        for group in await web.line_groups(conn)
        if frozenset(group.tables) not in ours
    ]


# The production example: beside the source in a checkout, in /etc/hanjullo once packaged.
PRODUCTION_EXAMPLES = (
    Path(__file__).resolve().parents[2] / "systemd" / "node.toml.example",
    DEFAULT_CONFIG_PATH.with_name("node.toml.example"),
)


def cmd_config_example(args: argparse.Namespace) -> int:
    if not args.sim:
        example = next((path for path in PRODUCTION_EXAMPLES if path.exists()), None)
        if example is None:
            raise CtlError(
                f"no production example here ({', '.join(map(str, PRODUCTION_EXAMPLES))}); "
                "--sim examples are always available"
            )
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
    config = node_config(args)
    today: date = NodeClock(config.clock.file).now_kst().date()
    try:
        report = asyncio.run(init_storage(config, today, dry_run=args.dry_run))
    except OSError as exc:
        raise CtlError(f"cannot reach a database: {exc}") from exc
    except (MigrationFailed, asyncpg.PostgresError, pymysql.err.MySQLError) as exc:
        if args.dry_run:
            raise CtlError(
                f"db init would fail on this database: {exc}; nothing was changed"
            ) from exc
        raise CtlError(f"storage bootstrap failed: {exc}; fix the cause and run it again") from exc
    if args.json:
        print(
            json.dumps(
                {
                    "postgres_version": report.pg_version,
                    "postgres_applied": report.pg_applied,
                    "web_tables_created": report.web_created,
                    "mysql_created": report.mysql_created,
                    "databases_created": report.databases_created,
                    "dry_run": report.dry_run,
                }
            )
        )
        return 0
    would = "would be " if report.dry_run else ""
    for database in report.databases_created:
        print(f"database {would}created: {database}")
    print(
        f"postgres schema version {report.pg_version}"
        + (
            f" ({'would apply' if report.dry_run else 'applied'} {', '.join(report.pg_applied)})"
            if report.pg_applied
            else " (up to date)"
        )
    )
    print(
        f"web service tables {would}created: {len(report.web_created)}"
        + (f" ({', '.join(report.web_created)})" if report.web_created else " (all present)")
    )
    print(
        f"mysql tables {would}created: {len(report.mysql_created)}"
        + (f" ({', '.join(report.mysql_created)})" if report.mysql_created else "")
    )
    if report.dry_run:
        print("dry run: nothing was changed (every migration was tried and rolled back)")
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    cfg = sub.add_parser("config", parents=[common], help="check or generate configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", parents=[common], help="validate; exit 1 on problems")
    check.add_argument(
        "--db",
        action="store_true",
        help="also read the web service's line groups and name those this node lacks",
    )
    check.set_defaults(func=cmd_config_check)
    example = cfg_sub.add_parser("example", parents=[common], help="print an example config")
    example.add_argument("--sim", action="store_true", help="a fully simulated node")
    example.add_argument("--dir", help="where the simulated node keeps its runtime files")
    example.add_argument("--phones-per-carrier", type=int, default=1, choices=range(1, 10))
    example.add_argument(
        "--instance",
        type=int,
        help="node N's own databases (PostgreSQL and MySQL node<N>, Redis db N, or N - 15 above "
        "15), N = 1-30",
    )
    example.set_defaults(func=cmd_config_example)

    db = sub.add_parser("db", parents=[common], help="storage")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    init = db_sub.add_parser("init", parents=[common], help="create or upgrade all tables")
    init.add_argument("--json", action="store_true")
    init.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing: try every migration in a rolled-back transaction and list "
        "the databases and tables that would be created",
    )
    init.set_defaults(func=cmd_db_init)
