"""`hanjulloctl db init`: idempotent, versioned, tables for this month and the next two; on
the web service's database it leaves the web's tables exactly as they were."""

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
from tests.integration.helpers import pg_fetch


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
            rows = await conn.fetch("SELECT version FROM hanjullo.schema_versions ORDER BY 1")
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


def _pg_script(sql: str, database: str) -> None:
    """Several statements on `database`, as one simple query."""

    async def run() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database=database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _snapshot(name: str) -> tuple[webservice.Catalog, list[str]]:
    """The web's table definitions in `name`, and every table of its public schema."""

    async def run() -> tuple[webservice.Catalog, list[str]]:
        conn = await webservice.connect_web_postgres(name)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
            return await webservice.catalog(conn), [t[0] for t in tables]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_db_init_on_the_web_services_database_leaves_the_webs_tables_as_they_were(
    tmp_path: Path,
) -> None:
    """Acceptance 1 of the web-service contract: the web's definitions (columns, types,
    defaults, constraints, indexes, triggers) are the same before and after `db init`; the
    node's own tables are in its own schema; its test phones are registered as devices."""
    name = f"{instance_database()}_initweb"
    services.drop_databases(name)
    asyncio.run(webservice.create_web_postgres(name))
    asyncio.run(webservice.create_web_mysql(name))
    node = _node_on(tmp_path, name)
    try:
        before = _snapshot(name)
        assert before[1] == sorted(webservice.WEB_TABLES)
        dry = node.ctl("db", "init", "--dry-run")
        assert "web service tables would be created: 0 (all present)" in dry.stdout
        assert "nothing was changed" in dry.stdout
        assert _snapshot(name) == before
        done = json.loads(node.ctl("db", "init", "--json").stdout)
        assert done["postgres_applied"] == [f"{m.version}: {m.name}" for m in MIGRATIONS]
        assert done["web_tables_created"] == []
        assert _snapshot(name) == before
        again = json.loads(node.ctl("db", "init", "--json").stdout)
        assert (again["postgres_applied"], again["web_tables_created"]) == ([], [])
        assert _snapshot(name) == before

        node_tables = pg_fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'hanjullo' ORDER BY 1",
            database=name,
        )
        assert {"runs", "run_recipients", "modem_receipts", "spam_tests"} <= {
            t for (t,) in node_tables
        }
        devices = pg_fetch(
            "SELECT carrier, device_id, is_active, last_seen_at IS NOT NULL"
            " FROM spam_filter_devices ORDER BY carrier",
            database=name,
        )
        config = node.status_config()
        assert [d[0] for d in devices] == ["KT", "LGU", "SKT"]
        assert all(d[1].startswith(f"hanjullo-node:{config['node']['id']}:") for d in devices)
        assert all(d[2] and d[3] for d in devices)
    finally:
        services.drop_databases(name)


def test_db_init_on_an_empty_database_creates_the_webs_tables_as_the_fixture_has_them(
    tmp_path: Path,
) -> None:
    """A standalone node: the web's tables it reads and writes exist afterwards, defined
    exactly as on a database the web service made (the fixture)."""
    name = f"{instance_database()}_initalone"
    web = f"{instance_database()}_initref"
    services.drop_databases(name)
    services.drop_databases(web)
    asyncio.run(webservice.create_web_postgres(web))
    node = _node_on(tmp_path, name)
    try:
        done = json.loads(node.ctl("db", "init", "--json").stdout)
        assert done["web_tables_created"] == list(webservice.WEB_TABLES)
        assert _snapshot(name) == _snapshot(web)
    finally:
        services.drop_databases(name)
        services.drop_databases(web)


def test_a_database_of_the_layout_before_the_node_schema_is_moved_aside(tmp_path: Path) -> None:
    """A node database made before the node's tables moved into their own schema held them
    in public under the web's names; `db init` moves them to hanjullo_legacy (nothing is
    dropped) and then makes the web's tables, so the web's queries work there."""
    name = f"{instance_database()}_initlegacy"
    services.drop_databases(name)
    _pg_script(f'CREATE DATABASE "{name}"', "postgres")
    # What the earlier layout's `db init` left (a few of its tables, as it made them).
    _pg_script(
        """CREATE TABLE hanjullo_schema_versions (version integer PRIMARY KEY, name text);
           INSERT INTO hanjullo_schema_versions VALUES (1, 'node registry');
           CREATE TABLE campaign_runs (id uuid PRIMARY KEY, node_id text, status text);
           CREATE TABLE unsubscribes (id bigserial PRIMARY KEY, company_id text, phone text);
           INSERT INTO campaign_runs VALUES (gen_random_uuid(), 'old', 'completed')""",
        name,
    )
    node = _node_on(tmp_path, name)
    try:
        done = json.loads(node.ctl("db", "init", "--json").stdout)
        assert done["postgres_version"] == latest_version()
        assert {"campaign_runs", "unsubscribes", "spam_filter_devices"} <= set(
            done["web_tables_created"]
        )
        legacy = pg_fetch("SELECT node_id FROM hanjullo_legacy.campaign_runs", database=name)
        assert legacy == [("old",)]
        columns = pg_fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = 'campaign_runs'",
            database=name,
        )
        assert "node_id" not in {c for (c,) in columns}
    finally:
        services.drop_databases(name)


def test_a_migration_that_fails_is_named_with_its_object_and_the_earlier_ones_stay(
    tmp_path: Path,
) -> None:
    name = f"{instance_database()}_initfail"
    services.drop_databases(name)
    node = _node_on(tmp_path, name)
    try:
        node.ctl("db", "init")
        # Something else already took a name migration 3 creates, with another shape.
        _pg_script(
            """DELETE FROM hanjullo.schema_versions WHERE version >= 3;
               DROP TABLE hanjullo.run_recipients;
               DROP TABLE hanjullo.spam_test_results, hanjullo.spam_tests;
               ALTER TABLE hanjullo.runs DROP COLUMN node_id""",
            name,
        )
        failed = node.ctl("db", "init", check=False)
        assert failed.returncode != 0
        assert (
            "migration 3 (runs and their recipients) failed on"
            " index runs_node_status on table hanjullo.runs" in failed.stderr
        ), failed.stderr
        assert 'column "node_id" does not exist' in failed.stderr
        versions = pg_fetch("SELECT version FROM hanjullo.schema_versions", database=name)
        assert sorted(v for (v,) in versions) == [1, 2]
        # Nothing after it ran: migration 4's tables are not there.
        assert pg_fetch("SELECT to_regclass('hanjullo.spam_tests')", database=name) == [(None,)]
    finally:
        services.drop_databases(name)
