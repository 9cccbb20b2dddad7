"""`hanjulloctl db init`: idempotent, versioned, tables for this month and the next two."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path

import asyncpg

from config.names import add_months
from daemon.schema import MIGRATIONS, latest_version
from simulators.harness import SimulatedNode, instance_database, mysql
from tests import services, webservice
from tests.config_edits import settings


def test_db_init_is_idempotent_and_versioned(sim_node: SimulatedNode) -> None:
    again = json.loads(sim_node.ctl("db", "init", "--json").stdout)
    assert again["postgres_applied"] == []
    assert again["mysql_created"] == []
    assert again["postgres_version"] == latest_version()

    async def versions() -> list[int]:
        conn = await asyncpg.connect(
            host="127.0.0.1", user="postgres", database=instance_database()
        )
        try:
            rows = await conn.fetch("SELECT version FROM hanjullo_schema_versions ORDER BY 1")
            return [r["version"] for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(versions()) == list(range(1, latest_version() + 1))


def test_log_tables_for_three_months_and_kst_sessions(sim_node: SimulatedNode) -> None:
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_7%'")
            names = {row[0] for row in cur.fetchall()}
    finally:
        conn.close()
    # The node's clock may be any day of the month; db init covers its month and two more.
    today = date.today()
    months = {
        f"SMSQ_SEND_7_{d.year:04d}{d.month:02d}" for d in (add_months(today, i) for i in range(3))
    }
    assert {"SMSQ_SEND_7"} | months <= names


def test_mysql_sessions_run_in_kst() -> None:
    from config.model import MySQLSection
    from dispatch import agent_tables

    async def offset() -> object:
        conn = await agent_tables.connect(MySQLSection())
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT @@session.time_zone, TIMESTAMPDIFF(HOUR, UTC_TIMESTAMP(), NOW())"
                )
                return await cur.fetchone()
        finally:
            conn.close()

    assert asyncio.run(offset()) == ("+09:00", 9)


def _databases_present(name: str) -> tuple[bool, bool]:
    async def pg() -> bool:
        admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
        try:
            return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await admin.close()

    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
            in_mysql = cur.fetchone() is not None
    finally:
        conn.close()
    return asyncio.run(pg()), in_mysql


def _node_on(tmp_path: Path, database: str) -> SimulatedNode:
    return SimulatedNode(
        tmp_path,
        overrides=lambda text: settings(
            text, {"postgres": {"database": database}, "mysql": {"database": database}}
        ),
    )


def test_dry_run_changes_nothing_and_says_what_db_init_would_do(tmp_path: Path) -> None:
    name = f"{instance_database()}_dry"
    services.drop_databases(name)
    node = _node_on(tmp_path, name)
    try:
        plan = json.loads(node.ctl("db", "init", "--dry-run", "--json").stdout)
        assert plan["dry_run"] is True
        assert plan["databases_created"] == [f"postgres:{name}", f"mysql:{name}"]
        assert plan["postgres_applied"] == [f"{m.version}: {m.name}" for m in MIGRATIONS]
        assert "SMSQ_SEND_1" in plan["mysql_created"]
        assert _databases_present(name) == (False, False)

        done = json.loads(node.ctl("db", "init", "--json").stdout)
        assert done["dry_run"] is False
        assert (done["databases_created"], done["postgres_applied"]) == (
            plan["databases_created"],
            plan["postgres_applied"],
        )
        assert sorted(done["mysql_created"]) == sorted(plan["mysql_created"])

        # A log table gone missing: the dry run names it and leaves it missing.
        conn = mysql(database=name)
        try:
            with conn.cursor() as cur:
                cur.execute("DROP TABLE SMSQ_SEND_4")
        finally:
            conn.close()
        again = node.ctl("db", "init", "--dry-run")
        assert "postgres schema version" in again.stdout and "(up to date)" in again.stdout
        assert "mysql tables would be created: 1 (SMSQ_SEND_4)" in again.stdout
        assert "nothing was changed" in again.stdout
        assert json.loads(node.ctl("db", "init", "--json").stdout)["mysql_created"] == [
            "SMSQ_SEND_4"
        ]
    finally:
        services.drop_databases(name)


def test_dry_run_on_the_web_services_database_leaves_it_as_it_was(tmp_path: Path) -> None:
    """The install notes' `--dry-run first on a database the web service already uses`:
    every migration is tried there and rolled back; the web's tables stay as they were."""
    name = f"{instance_database()}_dryweb"
    services.drop_databases(name)
    asyncio.run(webservice.create_web_postgres(name))
    asyncio.run(webservice.create_web_mysql(name))

    async def snapshot() -> tuple[webservice.Catalog, list[str]]:
        conn = await webservice.connect_web_postgres(name)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
            return await webservice.catalog(conn), [t[0] for t in tables]
        finally:
            await conn.close()

    node = _node_on(tmp_path, name)
    try:
        before = asyncio.run(snapshot())
        result = node.ctl("db", "init", "--dry-run", check=False)
        assert asyncio.run(snapshot()) == before
        assert "hanjullo_schema_versions" not in before[1]
        if result.returncode == 0:
            assert "nothing was changed" in result.stdout
        else:  # a migration the web's tables refuse: named, nothing changed
            assert "db init would fail on this database" in result.stderr
            assert "nothing was changed" in result.stderr
    finally:
        services.drop_databases(name)
