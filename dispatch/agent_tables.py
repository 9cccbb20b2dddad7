"""The QTmsg agent table contract: table definitions, names and MySQL sessions.

The simulator's agents and the daemon both use these definitions, so the two
sides can never disagree about a column. Every table name formatted into SQL
goes through :func:`config.names.checked_table` first. Every MySQL session
opened here sets ``time_zone = '+09:00'``: the servers on these machines run in
UTC, production's in KST, and ``sendreq_time`` is always the DB's own KST now.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any

import aiomysql

from config.clock import KST
from config.model import MySQLSection
from config.names import add_months, checked_table, log_table

# Every session: KST, and room for the packed result lists the result sync reads
# (handoff._read_log_results), set once per connection instead of once per query.
SESSION_INIT = (
    "SET time_zone = '+09:00', group_concat_max_len = 67108864;"
    # The fence (dispatch/ledger.py) and the ledger's reads are written for it, whatever
    # the server's default.
    " SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"
)


class Rsv1(StrEnum):
    """The ``rsv1`` lifecycle of a row."""

    WAITING = "1"
    PROCESSING = "2"
    HANDED_TO_RELAY = "3"
    RESULT_RECEIVED = "4"
    MOVED_TO_LOG = "5"


class StatusCode(IntEnum):
    WAITING = 100
    PENDING = 104
    SMS_OK = 6
    LMS_OK = 1000
    KAKAO_OK = 1800
    UNKNOWN_NUMBER = 7
    POWER_OFF = 8
    SHADOW_AREA = 9
    STORAGE_FULL = 10
    SPAM_WORD = 16
    DUPLICATE_SEND = 5004
    MMS_FILE_ERROR = 9007
    SENDER_NOT_REGISTERED = 9008
    FORBIDDEN_HOURS = 9012


# The web service's code sets (utils/sms-result-map.ts:137-140), which every count the node
# shows or writes follows: 7305 (Kakao, result uncertain for up to 30 days) is a failure
# to the web, not pending. The node never sends Kakao (`K` rows), so nothing of its own
# waits on 7305 either: a row reported with it is final, like every code outside these.
SUCCESS_CODES = frozenset({6, 1000, 1800, 7830, 7831})
PENDING_CODES = frozenset({100, 104})
KAKAO_UNCERTAIN = 7305
SPAM_CODES = frozenset({16, 52, 53, 54, 9010})


def is_final(code: int) -> bool:
    return code not in PENDING_CODES


def is_success(code: int) -> bool:
    return code in SUCCESS_CODES


_COLUMNS = """
  seqno INT NOT NULL AUTO_INCREMENT,
  dest_no VARCHAR(20) NOT NULL,
  call_back VARCHAR(20) NOT NULL,
  msg_contents MEDIUMTEXT NOT NULL,
  msg_type VARCHAR(1) NOT NULL DEFAULT 'S',
  title_str VARCHAR(200) NULL,
  msg_instm DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  sendreq_time DATETIME NOT NULL,
  status_code INT NOT NULL DEFAULT 100,
  rsv1 VARCHAR(10) NOT NULL DEFAULT '1',
  mobsend_time DATETIME NULL,
  repmsg_recvtm DATETIME NULL,
  mob_company VARCHAR(10) NULL,
  file_name1 VARCHAR(255) NULL,
  file_name2 VARCHAR(255) NULL,
  file_name3 VARCHAR(255) NULL,
  file_name4 VARCHAR(255) NULL,
  file_name5 VARCHAR(255) NULL,
  bill_id VARCHAR(40) NULL,
  app_etc1 VARCHAR(50) NULL,
  app_etc2 VARCHAR(50) NULL,
  sender_code VARCHAR(20) NULL,
  k_template_code VARCHAR(30) NULL,
  k_next_type VARCHAR(1) NULL,
  k_button_json TEXT NULL,
  PRIMARY KEY (seqno)"""

# The width of every VARCHAR column above, in characters (utf8mb4 counts characters): what
# a value must fit before it is written, since strict MySQL refuses a longer one (the batch
# fails for ever) and a lax one truncates it silently (dispatch/guards.py checks them).
VARCHAR_WIDTHS: dict[str, int] = {
    name: int(width) for name, width in re.findall(r"^\s*(\w+) VARCHAR\((\d+)\)", _COLUMNS, re.M)
}


def live_table_ddl(table: str) -> str:
    table = checked_table(table)
    return (
        f"CREATE TABLE IF NOT EXISTS `{table}` ({_COLUMNS},\n"
        "  KEY idx_pick (rsv1, sendreq_time, seqno),\n"
        "  KEY idx_app (app_etc1, rsv1),\n"
        # The result sync reads a log table from a watermark (app_etc1 = …, repmsg_recvtm
        # >= …); a log table is made LIKE its live table, so the live table carries it.
        "  KEY idx_done (app_etc1, repmsg_recvtm)\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
    )


def log_table_ddl(table: str, month: date) -> str:
    """A month's log table, made the way the web service makes it (sq:518-560): ``LIKE``
    the live table, so it has exactly the live table's columns, keys and AUTO_INCREMENT
    (a moved row keeps its seqno: an explicit value is taken as given)."""
    return f"CREATE TABLE IF NOT EXISTS `{log_table(table, month)}` LIKE `{checked_table(table)}`"


# An agent names the log table a row moves to by its own KST date at the moment of the
# move (the simulated agents by the node clock). Its clock may differ from the node's by
# a little (NTP, a host of its own): windows reach this far past both ends.
AGENT_CLOCK_SKEW = timedelta(minutes=10)


def log_months(since: datetime, until: datetime) -> list[date]:
    """The months whose log tables can hold a row handed to an agent at `since` (node
    clock) and moved by `until` (node clock, usually now), first of each month, oldest first.

    The two ends are taken in either order: a node clock stepped back still finds
    what was moved before the step. The one rule for the whole node (docs/clock.md).
    """
    low, high = sorted((since, until))
    first = (low - AGENT_CLOCK_SKEW).astimezone(KST).date().replace(day=1)
    last = (high + AGENT_CLOCK_SKEW).astimezone(KST).date()
    months = []
    while first <= last:
        months.append(first)
        first = add_months(first, 1)
    return months


def log_tables_between(tables: list[str], since: datetime, until: datetime) -> list[str]:
    """The log tables of `tables` for :func:`log_months` (whether they exist or not)."""
    months = log_months(since, until)
    return [log_table(table, month) for table in tables for month in months]


def months_ahead(today: date, count: int = 3) -> list[date]:
    """The current month and the next ``count - 1`` months."""
    return [add_months(today, i) for i in range(count)]


def _session(section: MySQLSection) -> dict[str, Any]:
    """Connection arguments shared by single connections and pools: KST, autocommit."""
    return {
        "host": section.host,
        "port": section.port,
        "user": section.user,
        "password": section.password.get_secret_value(),
        "db": section.database,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": section.connect_timeout_s,
        "init_command": SESSION_INIT,
    }


async def connect(section: MySQLSection, **extra: Any) -> aiomysql.Connection:
    """One MySQL connection in KST with autocommit on."""
    return await aiomysql.connect(**_session(section), **extra)


async def create_database(section: MySQLSection, create: bool = True) -> bool:
    """Create the configured MySQL database when the server lacks it; True if it was
    missing (and, unless ``create=False``, is created now)."""
    args = _session(section)
    del args["db"], args["init_command"]
    conn = await aiomysql.connect(**args)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (section.database,),
            )
            if await cur.fetchone() is not None:
                return False
            if not create:
                return True
            quoted = section.database.replace("`", "``")
            await cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{quoted}` CHARACTER SET utf8mb4"
                " COLLATE utf8mb4_unicode_ci"
            )
            return True
    finally:
        conn.close()


async def create_pool(section: MySQLSection, maxsize: int = 4, **extra: Any) -> aiomysql.Pool:
    return await aiomysql.create_pool(
        **_session(section), minsize=0, maxsize=maxsize, pool_recycle=300, **extra
    )


async def close_pool(pool: aiomysql.Pool | None) -> None:
    if pool is not None:
        pool.close()
        await pool.wait_closed()


@contextlib.asynccontextmanager
async def transaction(conn: aiomysql.Connection) -> AsyncIterator[aiomysql.Cursor]:
    """BEGIN … COMMIT on an autocommit connection; ROLLBACK on any exception."""
    await conn.begin()
    try:
        async with conn.cursor() as cur:
            yield cur
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.rollback()
        raise
    await conn.commit()


async def ensure_tables(
    conn: aiomysql.Connection, tables: list[str], today: date, create: bool = True
) -> list[str]:
    """Create every live table and its log tables for this month and the next two (the
    web makes this month's and the next; the third is the node's margin at the turn of a
    month, DOMAIN.md §2), each log table ``LIKE`` its live table, which is created first.

    Returns the names that did not exist before; with ``create=False`` (a dry run) only
    lists them.
    """
    created: list[str] = []
    async with conn.cursor() as cur:
        await cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND%'")
        existing = {row[0] for row in await cur.fetchall()}
        for name, ddl in wanted_tables(tables, today):
            if name not in existing:
                if create:
                    await cur.execute(ddl)
                created.append(name)
    return created


def wanted_tables(tables: list[str], today: date) -> list[tuple[str, str]]:
    """(name, DDL) of every live table and its log tables for this month and the next two,
    each live table before its log tables (they are made ``LIKE`` it)."""
    wanted: list[tuple[str, str]] = []
    for table in tables:
        wanted.append((checked_table(table), live_table_ddl(table)))
        wanted += [(log_table(table, m), log_table_ddl(table, m)) for m in months_ahead(today)]
    return wanted


@dataclass(frozen=True, slots=True)
class Backlog:
    """What one agent table holds right now."""

    waiting: int  # rsv1 = '1', due or reserved for later
    due: int  # waiting rows whose sendreq_time has come
    oldest_due_s: int | None  # age of the oldest due waiting row
    in_flight: int  # rsv1 2-4: picked up, result not yet moved to the log table
    first_due: int | None = None  # seqno of the oldest due waiting row


async def read_backlogs(conn: aiomysql.Connection, tables: dict[int, str]) -> dict[int, Backlog]:
    """One statement for every agent's backlog, keyed by agent number."""
    if not tables:
        return {}
    parts = [
        f"SELECT {int(number)} AS agent,"
        " COALESCE(SUM(rsv1 = '1'), 0),"
        " COALESCE(SUM(rsv1 = '1' AND sendreq_time <= NOW()), 0),"
        " TIMESTAMPDIFF(SECOND, MIN(CASE WHEN rsv1 = '1' AND sendreq_time <= NOW()"
        " THEN sendreq_time END), NOW()),"
        " COALESCE(SUM(rsv1 IN ('2', '3', '4')), 0),"
        " MIN(CASE WHEN rsv1 = '1' AND sendreq_time <= NOW() THEN seqno END)"
        f" FROM `{checked_table(table)}`"
        for number, table in tables.items()
    ]
    async with conn.cursor() as cur:
        await cur.execute(" UNION ALL ".join(parts))
        rows = await cur.fetchall()
    return {
        int(agent): Backlog(
            int(waiting),
            int(due),
            None if oldest is None else int(oldest),
            int(flight),
            None if first is None else int(first),
        )
        for agent, waiting, due, oldest, flight, first in rows
    }
