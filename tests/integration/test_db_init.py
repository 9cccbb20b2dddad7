"""`hanjulloctl db init`: idempotent, versioned, tables for this month and the next two."""

from __future__ import annotations

import asyncio
import json
from datetime import date

import asyncpg

from config.names import add_months
from daemon.schema import latest_version
from simulators.harness import SimulatedNode, instance_database, mysql


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
