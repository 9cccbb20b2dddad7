"""The web service's PostgreSQL tables, for a node whose database does not have them.

``web_schema.sql`` beside this file is our DDL of every table of the Hanjullo web service
that the node reads or writes, as production has them (each choice cited there). On a
database the web service already uses, `db init` leaves those tables exactly as they are;
on one without them (a simulated node, CI) it creates the missing ones from this file, so
the node runs alone. A table that exists is never touched: none of its statements run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

WEB_SCHEMA_SQL = Path(__file__).with_name("web_schema.sql")

_COMMENT = re.compile(r"--[^\n]*")
_TARGET = re.compile(
    r"^\s*(?:CREATE\s+TABLE\s+(?P<table>\w+)"
    r"|CREATE\s+(?:UNIQUE\s+)?INDEX\s+\w+\s+ON\s+(?P<indexed>\w+))",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class WebTable:
    name: str
    statements: tuple[str, ...]  # its CREATE TABLE, then its indexes


def web_tables(sql: str | None = None) -> tuple[WebTable, ...]:
    """The tables of `sql` (default: ``web_schema.sql``) in creation order, each with the
    statements that make it. The file holds only CREATE TABLE and CREATE INDEX statements,
    and no ``--`` or ``;`` inside a literal; anything else is refused here, not skipped."""
    text = _COMMENT.sub("", WEB_SCHEMA_SQL.read_text(encoding="utf-8") if sql is None else sql)
    order: list[str] = []
    statements: dict[str, list[str]] = {}
    for raw in text.split(";"):
        statement = raw.strip()
        if not statement:
            continue
        match = _TARGET.match(statement)
        if match is None:
            raise ValueError(f"web_schema.sql: not a CREATE TABLE or INDEX: {statement[:60]!r}")
        table = match["table"] or match["indexed"]
        if match["table"]:
            if table in statements:
                raise ValueError(f"web_schema.sql: table {table} created twice")
            order.append(table)
            statements[table] = []
        elif table not in statements:
            raise ValueError(f"web_schema.sql: index on {table} before its CREATE TABLE")
        statements[table].append(statement)
    return tuple(WebTable(name, tuple(statements[name])) for name in order)


WEB_TABLE_NAMES = tuple(t.name for t in web_tables())
