"""Plain clients of the real interfaces: a pyserial AT exchange and MySQL in KST."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import Any

import asyncpg
import pymysql
import serial

from config.clock import KST
from config.names import add_months
from simulators.harness import SimulatedNode, command, instance_database, mysql

FINAL = (b"\r\nOK\r\n", b"ERROR\r\n", b"ERROR: ")


def at(port: serial.Serial, command: str, timeout_s: float = 3.0) -> str:
    """Send one AT command; return everything up to its final result code ('' on silence)."""
    port.reset_input_buffer()
    port.write(command.encode() + b"\r")
    deadline = time.monotonic() + timeout_s
    seen = b""
    while time.monotonic() < deadline:
        seen += port.read(512)
        if any(marker in seen for marker in FINAL) and seen.endswith(b"\r\n"):
            break
    return seen.decode("latin-1")


@contextmanager
def serial_port(path: str) -> Iterator[serial.Serial]:
    port = serial.Serial(path, 115200, timeout=0.05, exclusive=True)
    try:
        yield port
    finally:
        port.close()


def pg_fetch(sql: str, *args: Any, database: str | None = None) -> list[tuple[Any, ...]]:
    """Rows of one statement on the test PostgreSQL database (or `database`), as tuples."""

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(
            host="127.0.0.1", user="postgres", database=database or instance_database()
        )
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def insert_rows(table: str, rows: list[dict[str, Any]]) -> None:
    conn = mysql()
    try:
        with conn.cursor() as cur:
            for row in rows:
                columns = [
                    "dest_no",
                    "call_back",
                    "msg_contents",
                    "msg_type",
                    "title_str",
                    "file_name1",
                    "app_etc1",
                    "app_etc2",
                ]
                values = [row.get(c) for c in columns]
                values[3] = values[3] or "S"
                cur.execute(
                    f"INSERT INTO `{table}` ({', '.join(columns)}, sendreq_time)"
                    f" VALUES ({', '.join(['%s'] * len(columns))}, NOW())",
                    values,
                )
    finally:
        conn.close()


def rows_by_tag(tag: str, tables: list[str]) -> list[dict[str, Any]]:
    """Every row with app_etc1 = tag across the given tables, counted in one statement."""
    conn = mysql()
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            union = " UNION ALL ".join(
                f"SELECT '{t}' AS tbl, seqno, dest_no, status_code, rsv1, mob_company, "
                f"mobsend_time, repmsg_recvtm, msg_instm FROM `{t}` WHERE app_etc1 = %s"
                for t in tables
            )
            cur.execute(union, [tag] * len(tables))
            return list(cur.fetchall())
    finally:
        conn.close()


def existing_tables(prefix: str) -> list[str]:
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE %s", (prefix.replace("_", "\\_") + "%",))
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


# ---- the node clock, relative to today ---------------------------------------------------
# Tests never pin the node clock to a fixed date: the agents name log tables by the node
# clock's month, and a fixed date drifts away from the real month (docs/clock.md).


def kst_today(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """Today (KST, by the wall clock) at the given time of day: same month as now."""
    return datetime.combine(datetime.now(KST).date(), dt_time(hour, minute, second), KST)


def kst_month_end(hour: int, minute: int = 0, second: int = 0, months: int = 0) -> datetime:
    """The last day of the current KST month (`months` later, or earlier when negative)
    at the given time of day."""
    first_of_next = add_months(datetime.now(KST).date(), months + 1)
    return datetime.combine(first_of_next - timedelta(days=1), dt_time(hour, minute, second), KST)


def kst_next_month_first(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """The 1st of the next KST month at the given time of day."""
    first_of_next = add_months(datetime.now(KST).date(), 1)
    return datetime.combine(first_of_next, dt_time(hour, minute, second), KST)


def set_node_clock(node: SimulatedNode, moment: datetime) -> float:
    """Move the node clock (daemon and simulator alike) to `moment`; return its offset from
    the wall clock in seconds, so that node time = wall time + offset."""
    reply = json.loads(node.sim_ctl("clock", "set", moment.isoformat(), "--json").stdout)
    return float(reply["offset_s"])


def pg_to_node_offset(offset: float) -> float:
    """Seconds to add to a PostgreSQL ``now()`` timestamp to read it on the node clock whose
    offset from this process's clock is `offset` (the two agree unless this process runs
    under a faked wall clock, libfaketime, while the servers keep the real one)."""
    (pg_now,) = pg_fetch("SELECT now()")[0]
    return time.time() + offset - float(pg_now.timestamp())


def month_of(moment: datetime) -> str:
    return moment.astimezone(KST).strftime("%Y%m")


def start_send(
    node: SimulatedNode,
    company: str,
    callback: str,
    phones: list[str],
    message: str,
    wait: bool = True,
) -> subprocess.Popen[str]:
    """`hanjulloctl send --json` on `node` in the background (the phones from a file); the
    caller reads its JSON answer when it needs it."""
    path = node.dir / f"phones-{company}.txt"
    path.write_text("\n".join(phones) + "\n")
    return subprocess.Popen(
        [
            *command("hanjulloctl"),
            "send",
            "--company",
            company,
            "--callback",
            callback,
            "--phones",
            str(path),
            "--message",
            message,
            *(["--wait"] if wait else []),
            "--json",
            "--config",
            str(node.config_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
