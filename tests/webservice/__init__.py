"""A fixture of the Hanjullo web service's databases, for tests against what we did not write.

PostgreSQL: ``daemon/web_schema.sql``, our own DDL of every web-service table the node
reads or writes, as production has them (sources cited in the file; `db init` creates
them from it on a database that lacks them). MySQL: the QTmsg agent
tables as the web's ``status/SCHEMA.md:1022-1050`` describes them, and their monthly log
tables made the way the web makes them, ``CREATE TABLE … LIKE`` the live table
(``utils/sms-queue.ts:539``). ``queries.py`` holds the web's own queries against them.

Each fixture database is fresh: dropped and created again, named after the test instance's
database with ``_web`` appended (``node6_web`` under ``HANJULLO_TEST_INSTANCE=6``), so it never
touches the node's own ``node<N>`` databases. :func:`load_schema` also loads the tables into
any other empty PostgreSQL database (a node's, to test ``db init`` on a shared database).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import aiomysql
import asyncpg

from daemon.webschema import WEB_SCHEMA_SQL, WEB_TABLE_NAMES
from simulators.harness import instance_database

SCHEMA_SQL = WEB_SCHEMA_SQL

# The tables web_schema.sql creates, in creation order (foreign keys point backwards).
WEB_TABLES = WEB_TABLE_NAMES

PG_HOST = "127.0.0.1"
PG_USER = "postgres"
MYSQL_HOST = "127.0.0.1"
MYSQL_USER = "root"

# The web's pool assumes the PostgreSQL server runs in Etc/UTC and reads every `timestamp`
# as UTC (config/database.ts:4-5); the fixture database says so itself.
WEB_PG_TIMEZONE = "Etc/UTC"
# Production's MySQL runs in KST and the web sets no session time zone
# (config/database.ts:53-66); this machine's servers run in UTC, so the web's sessions
# here say what production's server would.
WEB_MYSQL_SESSION = "SET time_zone = '+09:00'"

# The live agent tables the fixture creates by default: production's eleven
# (SCHEMA.md:1023, SMS_TABLES).
PRODUCTION_TABLES = tuple(f"SMSQ_SEND_{n}" for n in range(1, 12))

_TABLE_NAME = re.compile(r"SMSQ_SEND(_[0-9]{1,3})?")


def web_database_name() -> str:
    """The fixture's database name on both servers: the test instance's, plus ``_web``."""
    return f"{instance_database()}_web"


# ---- PostgreSQL ---------------------------------------------------------------------------
async def connect_web_postgres(database: str | None = None) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=PG_HOST, user=PG_USER, database=database or web_database_name()
    )


async def load_schema(conn: asyncpg.Connection) -> None:
    """Create the web's tables on `conn`'s (empty) database, in one transaction."""
    async with conn.transaction():
        await conn.execute(SCHEMA_SQL.read_text(encoding="utf-8"))


async def create_web_postgres(database: str | None = None) -> str:
    """Drop and create the fixture database, set its time zone, load the schema; its name."""
    name = database or web_database_name()
    admin = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres")
    try:
        quoted = await admin.fetchval("SELECT quote_ident($1)", name)
        await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {quoted}")
        await admin.execute(f"ALTER DATABASE {quoted} SET timezone TO '{WEB_PG_TIMEZONE}'")
    finally:
        await admin.close()
    conn = await connect_web_postgres(name)
    try:
        await load_schema(conn)
    finally:
        await conn.close()
    return name


async def empty_web_tables(conn: asyncpg.Connection) -> None:
    """Remove every row of the web's tables (between tests sharing one fixture database)."""
    await conn.execute(f"TRUNCATE {', '.join(WEB_TABLES)} CASCADE")


@contextlib.asynccontextmanager
async def emptied_web_postgres(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the fixture database `database` with every web table emptied
    first (a test's own clean slate); closed afterwards."""
    conn = await connect_web_postgres(database)
    await empty_web_tables(conn)
    try:
        yield conn
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Catalog:
    """The definitions of a set of tables as PostgreSQL's catalog states them."""

    # table, column, type, default, nullable
    columns: tuple[tuple[str, str, str, str | None, bool], ...]
    constraints: tuple[tuple[str, str, str], ...]  # table, name, definition
    indexes: tuple[tuple[str, str, str], ...]  # table, name, definition
    triggers: tuple[tuple[str, str], ...]  # table, name


async def catalog(conn: asyncpg.Connection, tables: tuple[str, ...] = WEB_TABLES) -> Catalog:
    """What `tables` look like now, for comparing a database before and after a change
    (`db init` must leave the web's definitions untouched)."""
    names = list(tables)
    columns = await conn.fetch(
        """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                  pg_get_expr(d.adbin, d.adrelid), NOT a.attnotnull
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
             AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY 1, a.attnum""",
        names,
    )
    constraints = await conn.fetch(
        """SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
           FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) ORDER BY 1, 2""",
        names,
    )
    indexes = await conn.fetch(
        """SELECT tablename, indexname, indexdef FROM pg_indexes
           WHERE schemaname = 'public' AND tablename = ANY($1::text[]) ORDER BY 1, 2""",
        names,
    )
    triggers = await conn.fetch(
        """SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) AND NOT t.tgisinternal
           ORDER BY 1, 2""",
        names,
    )
    return Catalog(
        tuple((r[0], r[1], r[2], r[3], r[4]) for r in columns),
        tuple((r[0], r[1], r[2]) for r in constraints),
        tuple((r[0], r[1], r[2]) for r in indexes),
        tuple((r[0], r[1]) for r in triggers),
    )


# ---- MySQL --------------------------------------------------------------------------------
def agent_table_ddl(table: str) -> str:
    """A live QTmsg table as the web's SCHEMA.md:1022-1050 lists it (vendor DDL is not
    public: NULLability and defaults beyond SCHEMA.md's are inferred; no secondary index is
    documented, so none is made)."""
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"{table!r} is not a live agent table name (SMSQ_SEND or SMSQ_SEND_<n>)")
    return f"""CREATE TABLE `{table}` (
  seqno INT NOT NULL AUTO_INCREMENT,
  dest_no VARCHAR(20),
  call_back VARCHAR(20),
  msg_contents MEDIUMTEXT,
  msg_instm DATETIME DEFAULT CURRENT_TIMESTAMP,  -- "입력 시간"; the web never writes it
  sendreq_time DATETIME,
  mobsend_time DATETIME,                         -- written by the agent, in UTC
  repmsg_recvtm DATETIME,                        -- written by the agent, in UTC
  status_code INT,
  mob_company VARCHAR(10),
  title_str VARCHAR(200),
  msg_type VARCHAR(10),
  rsv1 VARCHAR(10) DEFAULT '1',
  sender_code VARCHAR(9),
  bill_id VARCHAR(40),
  file_name1 VARCHAR(120),
  file_name2 VARCHAR(120),
  file_name3 VARCHAR(120),
  file_name4 VARCHAR(120),
  file_name5 VARCHAR(120),
  k_template_code VARCHAR(30),
  k_next_type VARCHAR(1),
  k_next_contents TEXT,
  k_button_json VARCHAR(1024),
  k_etc_json VARCHAR(1024),
  k_oriseq VARCHAR(20),
  k_resyes VARCHAR(1),
  app_etc1 VARCHAR(50),
  app_etc2 VARCHAR(50),
  PRIMARY KEY (seqno)
) DEFAULT CHARSET=utf8mb4"""


async def connect_web_mysql(database: str | None = None) -> aiomysql.Connection:
    """A MySQL session as the web's pool opens one: autocommit, utf8mb4, KST
    (config/database.ts:43-52)."""
    return await aiomysql.connect(
        host=MYSQL_HOST,
        user=MYSQL_USER,
        password="",
        db=database or web_database_name(),
        charset="utf8mb4",
        autocommit=True,
        init_command=WEB_MYSQL_SESSION,
    )


async def create_log_table(my: aiomysql.Connection, table: str, month: date) -> str:
    """The web's way to make a month's log table (sq:539): LIKE the live table."""
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"{table!r} is not a live agent table name")
    name = f"{table}_{month.year:04d}{month.month:02d}"
    async with my.cursor() as cur:
        # Asked first: IF NOT EXISTS on an existing table raises a client-side Warning.
        await cur.execute(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_NAME = %s",
            (name,),
        )
        if await cur.fetchone() is None:
            await cur.execute(f"CREATE TABLE IF NOT EXISTS `{name}` LIKE `{table}`")
    return name


async def create_web_mysql(
    database: str | None = None, tables: tuple[str, ...] = PRODUCTION_TABLES
) -> str:
    """Drop and create the fixture's MySQL database with the live agent tables; its name."""
    name = database or web_database_name()
    quoted = name.replace("`", "``")
    admin = await aiomysql.connect(
        host=MYSQL_HOST, user=MYSQL_USER, password="", charset="utf8mb4", autocommit=True
    )
    try:
        async with admin.cursor() as cur:
            await cur.execute(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
            )
            if await cur.fetchone() is not None:
                await cur.execute(f"DROP DATABASE `{quoted}`")
            await cur.execute(f"CREATE DATABASE `{quoted}` CHARACTER SET utf8mb4")
    finally:
        admin.close()
    my = await connect_web_mysql(name)
    try:
        async with my.cursor() as cur:
            for table in tables:
                await cur.execute(agent_table_ddl(table))
    finally:
        my.close()
    return name


async def empty_agent_tables(my: aiomysql.Connection) -> None:
    """Drop every log table and empty the live tables (between tests)."""
    async with my.cursor() as cur:
        await cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND%'")
        names = [row[0] for row in await cur.fetchall()]
        for name in names:
            if _TABLE_NAME.fullmatch(name):
                await cur.execute(f"TRUNCATE TABLE `{name}`")
            else:
                await cur.execute(f"DROP TABLE `{name}`")


async def fetch_rows(my: aiomysql.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with my.cursor(aiomysql.DictCursor) as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())
