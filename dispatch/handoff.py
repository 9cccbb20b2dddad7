"""What the dispatcher does to the agent tables: insert, find, pull back, move, read results.

A run's rows are written exactly as the web service writes a campaign's (WEBSERVICE.md §1):
``app_etc1`` the campaign id (the run id for a run without a campaign), ``app_etc2`` the
company, ``title_str`` and ``file_name1..3`` ``''`` when absent, ``status_code`` 100, ``rsv1``
'1', ``sendreq_time`` the server's ``NOW()``. The run id goes into ``bill_id``, which the web
leaves unused on campaign rows: every read, pull-back and count of a run's rows matches both
(`RunRowKey`), so two runs of one campaign never see each other's rows. Within a run the
recipient's number (``dest_no``) is its key. Every write of the
dispatcher's (a batch per table, a pull-back, a failover move) is one transaction that
first checks the node's fencing epoch and appends its commit-ledger entry
(`dispatch/ledger.py`), so after a crash the rows already inserted are known exactly
and never inserted twice.
A batch goes into each agent table as one multi-row INSERT whose VALUES hold
``NOW()`` for ``sendreq_time`` (the MySQL server's clock, KST session): drivers
fall back to one statement per row when VALUES holds anything but placeholders,
so the statement is built here instead of with ``executemany``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiomysql
import pymysql.err

from config.names import checked_table
from dispatch import infile, ledger
from dispatch.agent_tables import transaction
from dispatch.ledger import Fence, Kind, PullEntry
from dispatch.outcomes import Result

# Rows per multi-row INSERT: large enough to amortise the round trip, small enough
# to stay below the default max_allowed_packet (16 MB) even with 2000-byte LMS texts.
INSERT_CHUNK = 2000
# Numbers per IN (…) list.
LOOKUP_CHUNK = 1000


# One row's values in ROW_COLUMNS order; an AgentRow is one, and so is a plain tuple
# (the handoff builds plain tuples: hundreds of thousands of them per run).
RowValues = tuple[
    str, str, str, str, str | None, str | None, str | None, str | None, str, str, str | None
]


class AgentRow(NamedTuple):
    """One row for an agent table, in ROW_COLUMNS order (a tuple: cheap to build in
    the hundreds of thousands). A run's rows hold ``''`` where the web writes ``''``
    (`dispatch.planner.plan_page`); a spam test's rows NULL, with no ``bill_id``."""

    dest_no: str
    call_back: str
    msg_contents: str
    msg_type: str
    title_str: str | None
    file_name1: str | None
    file_name2: str | None
    file_name3: str | None
    app_etc1: str
    app_etc2: str
    bill_id: str | None = None


# The agent-table columns an AgentRow fills, in its field order.
ROW_COLUMNS = (
    "dest_no, call_back, msg_contents, msg_type, title_str, file_name1, file_name2, file_name3,"
    " app_etc1, app_etc2, bill_id"
)
# Where a row's run id is (its bill_id): the ledger's key of what a batch wrote.
BILL_ID = AgentRow._fields.index("bill_id")


@dataclass(frozen=True, slots=True)
class RunRowKey:
    """How a run's agent rows are told from every other row: ``app_etc1``, what the web
    service counts a campaign's rows by (the campaign id; the run id for a run without a
    campaign, so such rows are still a run's own), and ``bill_id``, the run id. Every match
    of the daemon's is on both (``app_etc1`` first: the live tables' index on it serves it);
    the ledger is keyed by the run id alone (`run_ref`)."""

    app_etc1: str
    bill_id: str

    @classmethod
    def of(cls, run_id: uuid.UUID | str, campaign_id: uuid.UUID | str | None) -> RunRowKey:
        run = str(run_id)
        return cls(str(campaign_id) if campaign_id else run, run)

    @property
    def run_ref(self) -> str:
        """The run's key in the commit ledger (`dispatch/ledger.py`): its run id."""
        return self.bill_id

    @property
    def params(self) -> tuple[str, str]:
        """The values of :data:`MATCH_RUN`'s placeholders."""
        return (self.app_etc1, self.bill_id)


# The condition every statement on a run's rows carries, with `RunRowKey.params`.
MATCH_RUN = "app_etc1 = %s AND bill_id = %s"


class LoadDataRefused(Exception):
    """The server (or the connection) does not allow LOAD DATA LOCAL INFILE."""


class BatchRejected(Exception):
    """The server took a batch's statement but not every row as given (LOAD DATA LOCAL
    turns a too-long or malformed value into a warning, like IGNORE): rolled back."""


# Server answers meaning "LOAD DATA LOCAL is disabled here".
_LOAD_DATA_REFUSED = (1148, 3948, 1227, 2068)


# LOAD DATA's escapes (ESCAPED BY '\\'), applied in one pass.
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def _tsv(value: str | None) -> str:
    if value is None:
        return "\\N"
    # Most values need no escape; five C-level scans are far cheaper than a translate.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value or "\0" in value:
        return value.translate(_TSV_ESCAPES)
    return value


def tsv_lines(rows: Sequence[RowValues]) -> str:
    """The rows as LOAD DATA lines, in ROW_COLUMNS order.

    The number and the text differ per row and are escaped per row; the other
    fields repeat through a batch (callback, type, campaign, company, run, mostly
    subject and files), so the line's pieces around the text are built once per
    distinct combination (one dict lookup a row instead of nine escapes: this runs on
    the event loop for every row handed off)."""
    memo: dict[tuple[str | None, ...], tuple[str, str]] = {}
    lines = []
    for number, callback, text, *rest in rows:
        key = (callback, *rest)
        pieces = memo.get(key)
        if pieces is None:
            pieces = memo[key] = (
                f"\t{_tsv(callback)}\t",
                "".join(f"\t{_tsv(value)}" for value in rest) + "\n",
            )
        lines.append(f"{_tsv(number)}{pieces[0]}{_tsv(text)}{pieces[1]}")
    return "".join(lines)


@dataclass(slots=True)
class StagedRows:
    """Rows ready for one agent table: the rows and, for LOAD DATA, their lines encoded
    (while the previous batch loads), held in memory only. `discard` lets them go."""

    rows: list[RowValues]
    data: bytes | None = None

    def discard(self) -> None:
        self.data = None


def stage(rows: list[RowValues], as_data: bool) -> StagedRows:
    return StagedRows(rows, tsv_lines(rows).encode() if as_data else None)


async def load_rows(conn: aiomysql.Connection, table: str, data: bytes) -> int:
    """One LOAD DATA LOCAL INFILE statement (atomic, like one INSERT) of lines from
    :func:`tsv_lines`, served from memory by :func:`dispatch.infile.load` on a connection
    of :func:`dispatch.infile.create_pool`. Raises LoadDataRefused when the server does
    not permit it, BatchRejected when the server warned about any row (LOCAL loads
    truncate or drop a bad value with a warning instead of failing)."""
    table = checked_table(table)
    try:
        loaded, warnings = await infile.load_counted(
            conn,
            f"INTO TABLE `{table}` CHARACTER SET utf8mb4"
            " FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'"
            f" ({ROW_COLUMNS}) SET sendreq_time = NOW(), status_code = 100, rsv1 = '1'",
            data,
        )
    except (
        pymysql.err.OperationalError,
        pymysql.err.InternalError,
        pymysql.err.ProgrammingError,
    ) as exc:
        if exc.args and exc.args[0] in _LOAD_DATA_REFUSED:
            raise LoadDataRefused(str(exc)) from exc
        raise
    if warnings:
        raise BatchRejected(f"LOAD DATA into {table}: {warnings} warnings, {loaded} rows")
    return loaded


_MARKS = ",".join(["%s"] * len(AgentRow._fields))


def _insert_sql(table: str, rows: int) -> str:
    """A multi-row INSERT of `rows` RowValues; sendreq_time is the server's NOW()."""
    values = ",".join([f"({_MARKS},NOW(),100,'1')"] * rows)
    return (
        f"INSERT INTO `{checked_table(table)}` ({ROW_COLUMNS}, sendreq_time, status_code, rsv1)"
        f" VALUES {values}"
    )


async def insert_rows(conn: aiomysql.Connection, table: str, rows: Sequence[RowValues]) -> int:
    """Insert `rows` into one agent table; one statement per INSERT_CHUNK rows."""
    total = 0
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        params: list[Any] = []
        for r in chunk:
            params += r
        async with conn.cursor() as cur:
            await cur.execute(_insert_sql(table, len(chunk)), params)
            total += cur.rowcount
    return total


async def write_batch(
    conn: aiomysql.Connection,
    fence: Fence | None,
    table: str,
    staged: StagedRows,
    seqs: tuple[int, int],
    load_data: bool,
) -> int:
    """One batch's rows for one agent table, fenced and in the ledger: in one transaction,
    the node's epoch (share lock, `ledger.check_fence`), the rows (LOAD DATA when
    `load_data` and staged, else multi-row INSERTs), every row accounted for, and the
    ledger entry. Returns the rows written; nothing is written unless all of it is."""
    rows = staged.rows
    run_ref = (rows[0][BILL_ID] or "") if rows else ""
    async with transaction(conn) as cur:
        await ledger.check_fence(cur, fence)
        assert fence is not None
        if load_data and staged.data is not None:
            written = await load_rows(conn, table, staged.data)
        else:
            written = await insert_rows(conn, table, rows)
        if written != len(rows):
            raise BatchRejected(f"{table}: {written} of {len(rows)} rows written")
        await ledger.record(cur, fence, Kind.INSERT, run_ref, table, [r[0] for r in rows], seqs)
    return written


async def insert_row(cur: aiomysql.Cursor, table: str, row: RowValues) -> int:
    """Insert one row (inside the caller's transaction); returns its seqno."""
    await cur.execute(_insert_sql(table, 1), row)
    return int(cur.lastrowid)


async def present(
    conn: aiomysql.Connection, tables: Sequence[str], key: RunRowKey, numbers: Sequence[str]
) -> dict[str, str]:
    """Which of `numbers` already have a row of this run, and in which table."""
    found: dict[str, str] = {}
    existing = await existing_tables(conn, tables)
    for start in range(0, len(numbers), LOOKUP_CHUNK):
        chunk = list(numbers[start : start + LOOKUP_CHUNK])
        marks = ",".join(["%s"] * len(chunk))
        for table in existing:
            async with conn.cursor() as cur:
                await cur.execute(
                    f"SELECT dest_no FROM `{checked_table(table)}`"
                    f" WHERE {MATCH_RUN} AND dest_no IN ({marks})",
                    [*key.params, *chunk],
                )
                for (dest,) in await cur.fetchall():
                    found[dest] = table
    return found


async def existing_tables(conn: aiomysql.Connection, tables: Sequence[str]) -> list[str]:
    async with conn.cursor() as cur:
        await cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND%'")
        have = {row[0] for row in await cur.fetchall()}
    return [t for t in tables if t in have]


async def pull_back(
    conn: aiomysql.Connection, fence: Fence | None, tables: Sequence[str], test_ref: str
) -> list[str]:
    """Delete a spam test's rows (``app_etc1`` = test id, as the web writes them) no agent
    has picked up; return their numbers (the spam-test engine's; its rows are not in the
    ledger).

    The rows are locked first (agents claim with SKIP LOCKED, so none is taken
    halfway), then deleted, per table in one transaction fenced by `fence`.
    """
    numbers: list[str] = []
    for name in tables:
        table = checked_table(name)
        async with transaction(conn) as cur:
            await ledger.check_fence(cur, fence)
            await cur.execute(
                f"SELECT seqno, dest_no FROM `{table}` WHERE app_etc1 = %s AND rsv1 = '1'"
                " FOR UPDATE",
                (test_ref,),
            )
            rows = await cur.fetchall()
            for start in range(0, len(rows), LOOKUP_CHUNK):
                ids = ",".join(str(int(r[0])) for r in rows[start : start + LOOKUP_CHUNK])
                await cur.execute(f"DELETE FROM `{table}` WHERE seqno IN ({ids})")
        numbers += [r[1] for r in rows]
    return numbers


async def pull_back_run(
    conn: aiomysql.Connection, fence: Fence | None, tables: Sequence[str], key: RunRowKey
) -> list[PullEntry]:
    """Delete the run's rows no agent has picked up, from every table in one transaction
    with one ledger entry per table (the intent PostgreSQL's bookkeeping is finished
    from after a crash: `ledger.open_pulls`); fenced. The rows are locked first (agents
    claim with SKIP LOCKED, so none is taken halfway)."""
    found: list[tuple[str, list[tuple[int, str]]]] = []
    entries: list[PullEntry] = []
    async with transaction(conn) as cur:
        await ledger.check_fence(cur, fence)
        assert fence is not None
        for name in await existing_tables(conn, tables):
            table = checked_table(name)
            await cur.execute(
                f"SELECT seqno, dest_no FROM `{table}` WHERE {MATCH_RUN} AND rsv1 = '1' FOR UPDATE",
                key.params,
            )
            rows = [(int(r[0]), str(r[1])) for r in await cur.fetchall()]
            if rows:
                found.append((table, rows))
        for table, rows in found:
            for start in range(0, len(rows), LOOKUP_CHUNK):
                ids = ",".join(str(seqno) for seqno, _ in rows[start : start + LOOKUP_CHUNK])
                await cur.execute(f"DELETE FROM `{table}` WHERE seqno IN ({ids})")
            numbers = [n for _, n in rows]
            entry = await ledger.record(cur, fence, Kind.PULL, key.run_ref, table, numbers)
            entries.append(PullEntry(entry, key.run_ref, table, numbers))
    return entries


async def move_waiting(
    conn: aiomysql.Connection,
    fence: Fence | None,
    source: str,
    targets: Sequence[str],
    limit: int = 50_000,
) -> int:
    """Move rows waiting in `source` (a dead agent) to `targets`, round-robin, in one
    fenced transaction with the ledger's record of which run's rows went to which table:
    a row is never in both tables and never in neither. A moved row keeps every column the
    application wrote (its ``bill_id`` too); the ledger names a run's moved rows by that
    run id (a row without one, the web's or a spam test's, by its ``app_etc1``)."""
    source = checked_table(source)
    async with transaction(conn) as cur:
        await ledger.check_fence(cur, fence)
        assert fence is not None
        await cur.execute(
            f"SELECT seqno, COALESCE(bill_id, app_etc1), dest_no FROM `{source}` WHERE rsv1 = '1'"
            " ORDER BY seqno LIMIT %s FOR UPDATE",
            (limit,),
        )
        rows = [(int(r[0]), r[1], str(r[2])) for r in await cur.fetchall()]
        for index, target in enumerate(targets):
            share = rows[index :: len(targets)]
            for start in range(0, len(share), LOOKUP_CHUNK):
                chunk = ",".join(str(r[0]) for r in share[start : start + LOOKUP_CHUNK])
                await cur.execute(
                    f"INSERT INTO `{checked_table(target)}` ({_MOVED_COLUMNS})"
                    f" SELECT {_MOVED_COLUMNS} FROM `{source}` WHERE seqno IN ({chunk})"
                )
            by_run: dict[str, list[str]] = {}
            for _, ref, number in share:
                if ref is not None:
                    by_run.setdefault(str(ref), []).append(number)
            for ref, numbers in by_run.items():
                await ledger.record(cur, fence, Kind.MOVE, ref, target, numbers)
        for start in range(0, len(rows), LOOKUP_CHUNK):
            chunk = ",".join(str(r[0]) for r in rows[start : start + LOOKUP_CHUNK])
            await cur.execute(f"DELETE FROM `{source}` WHERE seqno IN ({chunk})")
    return len(rows)


_MOVED_COLUMNS = (
    "dest_no, call_back, msg_contents, msg_type, title_str, msg_instm, sendreq_time,"
    " status_code, rsv1, file_name1, file_name2, file_name3, file_name4, file_name5,"
    " bill_id, app_etc1, app_etc2, sender_code"
)


async def waiting_counts(conn: aiomysql.Connection, tables: Sequence[str]) -> dict[str, int]:
    """Rows with rsv1 = '1' per table (the backlog the bound applies to)."""
    if not tables:
        return {}
    union = " UNION ALL ".join(
        f"SELECT '{checked_table(t)}', COUNT(*) FROM `{t}` WHERE rsv1 = '1'" for t in tables
    )
    async with conn.cursor() as cur:
        await cur.execute(union)
        return {name: int(count) for name, count in await cur.fetchall()}


async def run_waiting(conn: aiomysql.Connection, tables: Sequence[str], key: RunRowKey) -> int:
    """The run's rows no agent has picked up yet, across `tables`."""
    union = " UNION ALL ".join(
        f"SELECT COUNT(*) AS c FROM `{checked_table(t)}` WHERE {MATCH_RUN} AND rsv1 = '1'"
        for t in tables
    )
    async with conn.cursor() as cur:
        await cur.execute(
            f"SELECT COALESCE(SUM(c), 0) FROM ({union}) AS w", [*key.params] * len(tables)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def read_results(
    conn: aiomysql.Connection,
    live: Sequence[str],
    logs: Sequence[str],
    key: RunRowKey,
    since: Mapping[str, datetime | None],
) -> tuple[list[Result], int]:
    """New results of a run and its rows in flight.

    Live tables: rows with a result not yet moved (rsv1 4) and the count picked
    up (rsv1 2-4). Log tables: rows whose result time is at or after the
    table's watermark in `since` (None: from the beginning). One statement per
    table, whatever the run's size.
    """
    results: list[Result] = []
    in_flight = 0
    for table in live:
        async with conn.cursor() as cur:
            await cur.execute(
                f"SELECT dest_no, status_code, mob_company, repmsg_recvtm, rsv1"
                f" FROM `{checked_table(table)}` WHERE {MATCH_RUN} AND rsv1 IN ('2','3','4')",
                key.params,
            )
            for dest, code, company, at, rsv1 in await cur.fetchall():
                if rsv1 == "4":
                    results.append(Result(dest, int(code), company, _utc(at), table))
                else:
                    in_flight += 1
    for table in logs:
        results += await _read_log_results(conn, table, key, since.get(table))
    return results, in_flight


# Separators of the packed result lists: ASCII unit and record separators, which no
# number, code or carrier id contains.
_UNIT, _RECORD = "\x1f", "\x1e"
# Result rows packed into one string per group (bounded by group_concat_max_len).
PACK_ROWS = 4096


async def _read_log_results(
    conn: aiomysql.Connection, table: str, key: RunRowKey, mark: datetime | None
) -> list[Result]:
    """A log table's results of a run, packed server-side into a few long strings.

    A burst of results can be hundreds of thousands of rows; decoding them one
    field at a time in the driver costs more than everything else in a sync, so
    MySQL packs ~PACK_ROWS rows per string and Python splits them. Result times
    are sent as seconds since the epoch, computed without time zones (the agents
    write UTC into DATETIME columns)."""
    query = (
        "SELECT GROUP_CONCAT(CONCAT_WS(CHAR(31), dest_no, status_code,"
        " IFNULL(mob_company, ''),"
        " IFNULL(TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', repmsg_recvtm), ''))"
        f" SEPARATOR '{_RECORD}')"
        f" FROM `{checked_table(table)}` WHERE {MATCH_RUN}"
    )
    params: list[Any] = [*key.params]
    if mark is not None:
        query += " AND repmsg_recvtm >= %s"
        params.append(mark.replace(tzinfo=None))
    query += f" GROUP BY seqno DIV {PACK_ROWS}"
    results: list[Result] = []
    times: dict[str, datetime | None] = {"": None}
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        for (packed,) in await cur.fetchall():
            for record in packed.split(_RECORD):
                dest, code, company, at = record.split(_UNIT)
                when = times.get(at)
                if when is None and at:
                    when = times[at] = datetime.fromtimestamp(int(at), UTC)
                results.append(Result(dest, int(code), company or None, when, table))
    return results


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)
