"""Plain clients of the real interfaces: a pyserial AT exchange and MySQL in KST."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
import serial

from simulators.harness import mysql

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
