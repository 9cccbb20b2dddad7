"""The node's writer role, its fencing epoch and the commit ledger, in MySQL.

One daemon per node id writes agent rows: the one holding the MySQL named lock
``hanjullo:writer:<database>:<node id>`` (`take_writer`). The server drops a named lock with the
session that held it, so a killed writer gives the role up at once, and a second daemon
started meanwhile learns who holds it (`holder`). Taking the role appends a row with the
next epoch to ``hanjullo_fence``; its ``SELECT … FOR UPDATE`` waits for every
transaction that still holds the old epoch with a share lock (`check_fence`: every write
of agent rows reads the epoch that way, aborts with `Fenced` when it is not its own, and
several loads of one batch proceed together).

``hanjullo_ledger`` is written in the same transaction as every write of agent rows: which
run, table, epoch, batch seq range and recipients it inserted, pulled back or moved. What
a run has in the agent tables is the replay of its ledger (`replay`), not a search of the
tables by number, so a row the web service deleted or an agent moved to a log month is
never inserted again. A pull-back appends ``pull`` entries in its delete's transaction and
a ``pulled`` entry naming each once PostgreSQL has marked those recipients; an entry left
without it is finished after a crash (`open_pulls`).

Both tables are the node's own (prefixed ``hanjullo_``) and append-only, so the node's
MySQL account needs no UPDATE. The ledger is pruned (`prune`) of runs settled for good: final
and unchanged beyond the result horizon, with no pull-back left unfinished; it holds the
active and recent runs only. Owns no connection and no state.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import aiomysql
import pymysql.err

from config.names import checked_table

FENCE_DDL = """CREATE TABLE IF NOT EXISTS hanjullo_fence (
    node_id VARCHAR(64) NOT NULL,
    epoch BIGINT NOT NULL,
    host VARCHAR(255) NOT NULL,
    pid INT NOT NULL,
    since DATETIME(6) NOT NULL COMMENT 'UTC',
    PRIMARY KEY (node_id, epoch)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

LEDGER_DDL = """CREATE TABLE IF NOT EXISTS hanjullo_ledger (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    node_id VARCHAR(64) NOT NULL,
    run_ref VARCHAR(50) NOT NULL,
    kind VARCHAR(8) NOT NULL,
    tbl VARCHAR(64) NOT NULL,
    epoch BIGINT NOT NULL,
    seq_lo INT NOT NULL DEFAULT 0,
    seq_hi INT NOT NULL DEFAULT 0,
    row_count INT NOT NULL,
    numbers MEDIUMTEXT NOT NULL,
    ref BIGINT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY run_entries (run_ref, id),
    KEY node_kind (node_id, kind, id),
    -- open_pulls, on every tick: a pull entry's 'pulled' entry found by its ref
    KEY pulled_refs (node_id, kind, ref)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

TABLES = (("hanjullo_fence", FENCE_DDL), ("hanjullo_ledger", LEDGER_DDL))

# How long a named-lock holder's session outlives its host when the host vanishes
# without closing it (power loss, a partition): the server ends an idle session after
# this, and the writer pings its lock connection well within it.
WRITER_SESSION_TIMEOUT_S = 30

# A takeover's epoch transaction chosen as a deadlock's victim is tried again this often
# (it holds the named lock, so only the old writer's last transactions compete with it).
TAKEOVER_ATTEMPTS = 5
ER_LOCK_DEADLOCK = 1213


class Kind(StrEnum):
    INSERT = "insert"  # rows written into `tbl`
    PULL = "pull"  # waiting rows deleted from `tbl` (pause, cancel, hold, breaker)
    PULLED = "pulled"  # PostgreSQL has marked the recipients of entry `ref` pulled
    MOVE = "move"  # waiting rows moved into `tbl` by failover (same recipients)


class Fenced(Exception):
    """This daemon's epoch is no longer the node's: another daemon took the writer role."""


class NotWriter(Exception):
    """An agent-row write was asked of a daemon that does not hold the writer role."""


@dataclass(frozen=True, slots=True)
class Fence:
    """The writer role as held: the node and the epoch every write checks."""

    node_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a node's writer role (its last fence row), as a passive daemon says it."""

    host: str
    pid: int
    since: datetime
    epoch: int

    def describe(self) -> str:
        return (
            f"held by host {self.host} pid {self.pid} since {self.since.isoformat()}"
            f" (epoch {self.epoch})"
        )


@dataclass(frozen=True, slots=True)
class PullEntry:
    """A pull-back's ledger entry: the recipients taken out of one table."""

    id: int
    run_ref: str
    table: str
    numbers: list[str]


# Runs per IN (…) list.
LOOKUP_CHUNK = 1000

# The named lock's name: server-wide, so it names the database as well as the node (two
# nodes' databases on one server never share a lock). Named locks are limited to 64
# characters; names are short, but never fail on one.
_LOCK_NAME = "LEFT(CONCAT('hanjullo:writer:', DATABASE(), ':', %s), 64)"


async def ensure_tables(conn: aiomysql.Connection, create: bool = True) -> list[str]:
    """Create the fence and ledger tables when missing; returns the names missing before."""
    async with conn.cursor() as cur:
        await cur.execute("SHOW TABLES LIKE 'hanjullo\\_%'")
        have = {r[0] for r in await cur.fetchall()}
        missing = [name for name, _ in TABLES if name not in have]
        if create:
            for name, ddl in TABLES:
                if name in missing:
                    await cur.execute(ddl)
    return missing


# ---- the writer role --------------------------------------------------------------------


async def take_writer(conn: aiomysql.Connection, node_id: str, host: str, pid: int) -> Fence | None:
    """Try to become the node's writer on `conn` (a connection of its own, kept open while
    the role is held): the named lock, then the next epoch. None when another session
    holds the lock."""
    async with conn.cursor() as cur:
        await cur.execute(f"SET SESSION wait_timeout = {WRITER_SESSION_TIMEOUT_S}")
        await cur.execute(f"SELECT GET_LOCK({_LOCK_NAME}, 0)", (node_id,))
        row = await cur.fetchone()
    if not row or row[0] != 1:
        return None
    for attempt in range(TAKEOVER_ATTEMPTS):
        await conn.begin()
        try:
            async with conn.cursor() as cur:
                epoch = await last_epoch_for_update(cur, node_id) + 1
                await append_epoch(cur, node_id, epoch, host, pid)
        except pymysql.err.OperationalError as exc:
            await conn.rollback()
            if exc.args[0] != ER_LOCK_DEADLOCK or attempt + 1 == TAKEOVER_ATTEMPTS:
                raise
            continue  # the server chose this transaction as a deadlock's victim: again
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()
        return Fence(node_id, epoch)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def last_epoch_for_update(cur: aiomysql.Cursor, node_id: str) -> int:
    """The node's newest epoch, locked for the takeover's transaction: waits for the share
    locks of the previous writer's transactions in flight (`check_fence`)."""
    await cur.execute(
        "SELECT COALESCE(MAX(epoch), 0) FROM hanjullo_fence WHERE node_id = %s FOR UPDATE",
        (node_id,),
    )
    (last,) = await cur.fetchone()
    return int(last)


async def append_epoch(cur: aiomysql.Cursor, node_id: str, epoch: int, host: str, pid: int) -> None:
    """The takeover's fence row (after `last_epoch_for_update`, in its transaction)."""
    await cur.execute(
        "INSERT INTO hanjullo_fence (node_id, epoch, host, pid, since) VALUES (%s, %s, %s, %s, %s)",
        (node_id, epoch, host[:255], pid, datetime.now(UTC).replace(tzinfo=None)),
    )


async def release_writer(conn: aiomysql.Connection, node_id: str) -> None:
    """Give the role up on `conn` before closing it: the server frees a closed session's
    lock only once it has noticed the close, and a successor trying in that moment would
    be told the node is held."""
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT RELEASE_LOCK({_LOCK_NAME})", (node_id,))


async def still_writer(conn: aiomysql.Connection, node_id: str) -> bool:
    """Whether `conn`'s session still holds the node's writer lock (also keeps the session
    from idling out)."""
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT IS_USED_LOCK({_LOCK_NAME}) = CONNECTION_ID()", (node_id,))
        row = await cur.fetchone()
    return bool(row and row[0])


async def holder(conn: aiomysql.Connection, node_id: str) -> Holder | None:
    """The node's last writer, from its newest fence row."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT host, pid, since, epoch FROM hanjullo_fence WHERE node_id = %s"
            " ORDER BY epoch DESC LIMIT 1",
            (node_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    host, pid, since, epoch = row
    return Holder(str(host), int(pid), since.replace(tzinfo=UTC), int(epoch))


async def check_fence(cur: aiomysql.Cursor, fence: Fence | None) -> None:
    """Inside a transaction that writes agent rows: read the node's epoch with a share
    lock (held to the commit, so no takeover lands in between) and abort unless it is
    `fence`'s."""
    if fence is None:
        raise NotWriter("this daemon does not hold the node's writer role")
    # A range read, not MAX(epoch): a share-locking scan that waited for a takeover's row
    # lock goes on to read the rows committed meanwhile, so it sees the new epoch under
    # READ COMMITTED too; and it waits on the own epoch's row rather than the end of the
    # index, where the takeover's insert would meet it in a deadlock under REPEATABLE READ.
    await cur.execute(
        "SELECT epoch FROM hanjullo_fence WHERE node_id = %s AND epoch >= %s"
        " ORDER BY epoch LOCK IN SHARE MODE",
        (fence.node_id, fence.epoch),
    )
    epochs = [int(r[0]) for r in await cur.fetchall()]
    if epochs != [fence.epoch]:
        raise Fenced(
            f"node {fence.node_id}: epochs {epochs or 'none'} from this daemon's"
            f" ({fence.epoch}) on; another daemon took the writer role"
        )


# ---- the ledger -------------------------------------------------------------------------


async def record(
    cur: aiomysql.Cursor,
    fence: Fence,
    kind: Kind,
    run_ref: str,
    table: str,
    numbers: Sequence[str],
    seqs: tuple[int, int] = (0, 0),
    ref: int | None = None,
) -> int:
    """Append one entry (inside the caller's transaction); returns its id."""
    await cur.execute(
        "INSERT INTO hanjullo_ledger (node_id, run_ref, kind, tbl, epoch, seq_lo, seq_hi,"
        " row_count, numbers, ref) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            fence.node_id,
            run_ref,
            kind.value,
            checked_table(table),
            fence.epoch,
            seqs[0],
            seqs[1],
            len(numbers),
            ",".join(numbers),
            ref,
        ),
    )
    return int(cur.lastrowid)


def replay(entries: Iterable[tuple[str, str]], wanted: Collection[str]) -> set[str]:
    """Which of `wanted` are in the agent tables by the ledger: the last of their insert
    or pull entries, in ledger order, was an insert (a move changes only the table)."""
    present: set[str] = set()
    for kind, numbers in entries:
        if kind == Kind.INSERT:
            present.update(n for n in numbers.split(",") if n in wanted)
        elif kind == Kind.PULL:
            present.difference_update(numbers.split(","))
    return present


async def committed(
    conn: aiomysql.Connection, run_ref: str, numbers: Sequence[str], seqs: tuple[int, int]
) -> set[str]:
    """Which of `numbers` (recipients with seqs in `seqs`) the run has in the agent tables
    by its ledger: its inserts whose batch overlaps `seqs`, and all its pull-backs.

    A locking read (`LOCK IN SHARE MODE`): it waits for any transaction still holding an
    entry of the run uncommitted and reads what that one did. A write whose COMMIT was
    sent but whose answer never came (a reset connection) may commit after the client
    gave up on it; a plain read could run in between, miss its entry and have the batch
    inserted again in the same epoch, where no fence stops it."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT kind, numbers FROM hanjullo_ledger WHERE run_ref = %s"
            " AND (kind = 'pull' OR (kind = 'insert' AND seq_hi >= %s AND seq_lo <= %s))"
            " ORDER BY id LOCK IN SHARE MODE",
            (run_ref, seqs[0], seqs[1]),
        )
        rows = await cur.fetchall()
    return replay(((str(k), str(n)) for k, n in rows), set(numbers))


async def tables_written(conn: aiomysql.Connection, run_ref: str) -> list[str]:
    """Every agent table the run's rows were ever written or moved to."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT DISTINCT tbl FROM hanjullo_ledger WHERE run_ref = %s"
            " AND kind IN ('insert', 'move') ORDER BY tbl",
            (run_ref,),
        )
        return [str(r[0]) for r in await cur.fetchall()]


async def open_pulls(conn: aiomysql.Connection, node_id: str) -> list[PullEntry]:
    """The node's pull-back entries whose recipients PostgreSQL has not marked yet."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT p.id, p.run_ref, p.tbl, p.numbers FROM hanjullo_ledger p"
            " WHERE p.node_id = %s AND p.kind = 'pull' AND NOT EXISTS"
            " (SELECT 1 FROM hanjullo_ledger d WHERE d.node_id = p.node_id"
            " AND d.kind = 'pulled' AND d.ref = p.id) ORDER BY p.id",
            (node_id,),
        )
        rows = await cur.fetchall()
    return [
        PullEntry(int(i), str(run), str(table), [n for n in str(numbers).split(",") if n])
        for i, run, table, numbers in rows
    ]


async def close_pulls(
    conn: aiomysql.Connection, fence: Fence, entries: Sequence[PullEntry]
) -> None:
    """PostgreSQL has marked these entries' recipients pulled: say so, in one transaction."""
    if not entries:
        return
    await conn.begin()
    try:
        async with conn.cursor() as cur:
            for entry in entries:
                await record(cur, fence, Kind.PULLED, entry.run_ref, entry.table, [], ref=entry.id)
    except BaseException:
        await conn.rollback()
        raise
    await conn.commit()


# Entries deleted per statement by `prune` (short transactions beside the writes).
PRUNE_CHUNK = 5000


async def ledger_runs(conn: aiomysql.Connection, node_id: str) -> list[str]:
    """The runs the node's ledger has entries of (bounded by `prune`)."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT DISTINCT run_ref FROM hanjullo_ledger WHERE node_id = %s", (node_id,)
        )
        return [str(r[0]) for r in await cur.fetchall()]


async def prune(conn: aiomysql.Connection, node_id: str, run_refs: Sequence[str]) -> int:
    """Delete every entry of `run_refs` (runs settled for good: nothing replays, syncs or
    finishes them again), a chunk per statement; returns the entries deleted."""
    deleted = 0
    for start in range(0, len(run_refs), LOOKUP_CHUNK):
        chunk = list(run_refs[start : start + LOOKUP_CHUNK])
        marks = ",".join(["%s"] * len(chunk))
        while True:
            async with conn.cursor() as cur:
                await cur.execute(
                    f"DELETE FROM hanjullo_ledger WHERE node_id = %s AND run_ref IN ({marks})"
                    f" LIMIT {PRUNE_CHUNK}",
                    [node_id, *chunk],
                )
                deleted += cur.rowcount
                if cur.rowcount < PRUNE_CHUNK:
                    break
    return deleted


async def has_entries(conn: aiomysql.Connection, run_ref: str) -> bool:
    """Whether the run has any ledger entry (a run handed off before the ledger has none);
    a locking read, like `committed`: an entry whose commit is still on its way counts."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT 1 FROM hanjullo_ledger WHERE run_ref = %s LIMIT 1 LOCK IN SHARE MODE",
            (run_ref,),
        )
        return await cur.fetchone() is not None
