"""How far a run has got: the guard pass, the handoff's pages and checkpoints, pull-backs.

The checkpoint is ``hanjullo.runs.next_seq``: every recipient at or below it that is
neither skipped nor pulled back is in an agent table. ``verify_until`` is the highest
seq ever written ahead of its checkpoint; recipients between the two are looked up in
the agent tables before they are inserted again. ``prepared_upto`` is how far the
guard pass has checked; the handoff never passes it. Pulled-back recipients
(``is_pulled``) go first when the run sends again.
Owns no connection and no engine state.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import asyncpg

from dispatch.guards import CheckedPage
from dispatch.store.runs import Conn, RunStatus, skip_counts

# ---- keyset pages -------------------------------------------------------------------------


async def keyset_page(conn: Conn, query: str, *args: object) -> list[asyncpg.Record]:
    """One page of a run's recipients in ``seq`` order, read along the primary key.

    A run just handed over is not in the planner's statistics yet (autoanalyze comes later,
    if at all before the run ends), so PostgreSQL expects a few hundred recipients for it
    and plans a bitmap scan of every recipient after the page's start, then a sort: each
    page costs as much as the rest of the run, and paging through 300,000 fresh recipients
    took 3.5 s instead of 0.6 s. A keyset page's right plan is always the primary key's
    index scan (it stops at the limit), so bitmap scans are off for the page's statement."""
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        return await conn.fetch(query, *args)


# ---- the guard pass ---------------------------------------------------------------------


async def checked_numbers(conn: Conn, run_id: uuid.UUID, upto: int) -> set[str]:
    """The numbers of the recipients checked (and not skipped) up to `upto`: a restarted
    guard pass finds duplicates against them."""
    rows = await conn.fetch(
        """SELECT coalesce(phone_norm, phone) AS number FROM hanjullo.run_recipients
           WHERE run_id = $1 AND seq <= $2 AND state <> 'skipped'""",
        run_id,
        upto,
    )
    return {r["number"] for r in rows}


RECIPIENTS_AFTER = """SELECT seq, phone, message_text, subject, attachments
    FROM hanjullo.run_recipients WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"""


async def recipients_after(
    conn: Conn, run_id: uuid.UUID, after: int, limit: int
) -> list[asyncpg.Record]:
    """The next `limit` recipients to check: seq, phone, message_text, subject, attachments."""
    return await keyset_page(
        conn,
        RECIPIENTS_AFTER,
        run_id,
        after,
        limit,
    )


async def opted_out(conn: Conn, user_id: str | None, numbers: list[str]) -> set[str]:
    """Which of `numbers` opted out of the sending user's messages. The web service keeps
    opt-outs per user (``unsubscribes.user_id``, a users.id; routes/campaigns.ts:1443-1448),
    never per company: a run without a user, or with an id that is no users.id, has none."""
    try:
        user = uuid.UUID(user_id) if user_id else None
    except ValueError:
        user = None
    if user is None:
        return set()
    rows = await conn.fetch(
        "SELECT phone FROM unsubscribes WHERE user_id = $1 AND phone = ANY($2::text[])",
        user,
        numbers,
    )
    return {r["phone"] for r in rows}


async def record_checked(conn: Conn, run_id: uuid.UUID, page: CheckedPage) -> None:
    """One checked page: its skips and normalised numbers, and the run's progress and skip
    counts, in one transaction."""
    async with conn.transaction():
        if page.seqs:
            await conn.execute(
                """UPDATE hanjullo.run_recipients r SET phone_norm = u.norm,
                       state = CASE WHEN u.reason IS NULL THEN r.state ELSE 'skipped' END,
                       skip_reason = u.reason
                   FROM unnest($2::int[], $3::text[], $4::text[]) AS u(seq, norm, reason)
                   WHERE r.run_id = $1 AND r.seq = u.seq""",
                run_id,
                page.seqs,
                page.norms,
                page.reasons,
            )
        await conn.execute(
            """UPDATE hanjullo.runs SET prepared_upto = $2,
                   skipped = (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
                              FROM (SELECT k, sum(v::int) AS v FROM (
                                      SELECT key AS k, value AS v FROM jsonb_each_text(skipped)
                                      UNION ALL
                                      SELECT key, value FROM jsonb_each_text($3::jsonb)) a
                                    GROUP BY k) b)
               WHERE id = $1""",
            run_id,
            page.last_seq,
            json.dumps(page.counts),
        )


async def finish_checking(conn: Conn, run_id: uuid.UUID) -> dict[str, int]:
    """Mark the run's guard pass complete; return its skip counts."""
    return skip_counts(
        await conn.fetchval(
            "UPDATE hanjullo.runs SET prepared = true WHERE id = $1 RETURNING skipped", run_id
        )
    )


# ---- the handoff's pages and checkpoints ------------------------------------------------

_PAGE = "seq, coalesce(phone_norm, phone) AS number, message_text, subject, attachments"
PULLED_PAGE = f"""SELECT {_PAGE}, true AS pulled FROM hanjullo.run_recipients
    WHERE run_id = $1 AND is_pulled ORDER BY seq LIMIT $2"""
PENDING_PAGE = f"""SELECT {_PAGE}, false AS pulled FROM hanjullo.run_recipients
    WHERE run_id = $1 AND state = 'pending' AND seq > $2 AND ($4 OR seq <= $5)
    ORDER BY seq LIMIT $3"""


async def pulled_page(conn: Conn, run_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
    """Recipients pulled back from the agent tables (pause, night hold, breaker), oldest
    first: seq, number, message_text, subject, attachments, pulled (true)."""
    return await keyset_page(conn, PULLED_PAGE, run_id, limit)


async def checkpoint(conn: Conn, run_id: uuid.UUID) -> int:
    """The run's ``next_seq``."""
    value = await conn.fetchval("SELECT next_seq FROM hanjullo.runs WHERE id = $1", run_id)
    return int(value or 0)


async def pending_page(
    conn: Conn,
    run_id: uuid.UUID,
    after: int,
    limit: int,
    checked_upto: int | None,
) -> list[asyncpg.Record]:
    """The next pending recipients after seq `after`, up to `checked_upto` (None: the guard
    pass is complete): seq, number, message_text, subject, attachments, pulled (false)."""
    return await keyset_page(
        conn,
        PENDING_PAGE,
        run_id,
        after,
        limit,
        checked_upto is None,
        checked_upto or 0,
    )


async def record_verify_until(conn: Conn, run_id: uuid.UUID, seq: int) -> None:
    """Written before a batch goes out: after a crash, everything up to `seq` is looked up."""
    await conn.execute(
        "UPDATE hanjullo.runs SET verify_until = greatest(verify_until, $2) WHERE id = $1",
        run_id,
        seq,
    )


async def record_batch(
    conn: Conn,
    run_id: uuid.UUID,
    size: int,
    last_seq: int,
    pulled_seqs: Sequence[int] | None,
    verify_until: int = 0,
) -> None:
    """A batch is in the agent tables: move the checkpoint past it (or, for a page of
    pulled-back recipients, clear their mark) and count it, in one transaction. Counted
    only as far as it changes something: after a takeover the old writer and the new one
    may both record one batch, and it is counted once. `verify_until`: the next batch's
    last seq, already planned, recorded in the same statement as `record_verify_until`
    would (one round trip fewer before that batch goes out)."""
    async with conn.transaction():
        if pulled_seqs is not None:
            # Only the recipients whose mark this clears are counted.
            await conn.execute(
                """WITH u AS (UPDATE hanjullo.run_recipients
                              SET state = 'pending', is_pulled = false
                              WHERE run_id = $1 AND seq = ANY($2::int[]) AND is_pulled
                              RETURNING 1)
                   UPDATE hanjullo.runs
                   SET inserted_count = inserted_count + (SELECT count(*) FROM u),
                       verify_until = greatest(verify_until, $3), updated_at = now()
                   WHERE id = $1""",
                run_id,
                list(pulled_seqs),
                verify_until,
            )
        else:
            # Only a checkpoint this moves is counted (the right-hand sides read the row
            # as it was); verify_until is raised either way.
            await conn.execute(
                """UPDATE hanjullo.runs SET next_seq = greatest(next_seq, $2),
                       inserted_count = inserted_count
                           + CASE WHEN next_seq < $2 THEN $3 ELSE 0 END,
                       updated_at = CASE WHEN next_seq < $2 THEN now() ELSE updated_at END,
                       verify_until = greatest(verify_until, $4)
                   WHERE id = $1""",
                run_id,
                last_seq,
                size,
                verify_until,
            )


# ---- pull-back --------------------------------------------------------------------------


async def record_pull_back(
    conn: Conn,
    run_id: uuid.UUID,
    numbers: list[str],
    status: RunStatus,
    reason: str | None,
) -> tuple[int, int]:
    """The rows of `numbers` were taken back out of the agent tables: mark those recipients
    pulled (re-inserted first on resume), uncount them and set the run's status, in one
    transaction. Returns (recipients pulled, rows the agents had already taken)."""
    async with conn.transaction():
        stopped = await _mark(conn, run_id, numbers)
        gone = await conn.fetchval(
            """UPDATE hanjullo.runs SET inserted_count = inserted_count - $2,
                   status = $3, status_reason = $4, updated_at = now(),
                   completed_at = CASE WHEN $3 = 'cancelled' THEN now() ELSE completed_at END
               WHERE id = $1 RETURNING inserted_count""",
            run_id,
            stopped,
            status.value,
            reason,
        )
    return int(stopped), int(gone)


async def _mark(conn: Conn, run_id: uuid.UUID, numbers: list[str]) -> int:
    # Nothing else is touched, so what the agents had taken is never sent again. Only
    # recipients still pending change: marking the same pull-back twice changes nothing.
    return int(
        await conn.fetchval(
            """WITH u AS (UPDATE hanjullo.run_recipients SET state = 'pulled', is_pulled = true
                          WHERE run_id = $1 AND state = 'pending'
                          AND coalesce(phone_norm, phone) = ANY($2::text[])
                          RETURNING 1)
               SELECT count(*) FROM u""",
            run_id,
            numbers,
        )
    )


async def mark_pulled(conn: Conn, run_id: uuid.UUID, numbers: list[str]) -> int:
    """Finish a pull-back interrupted after its rows left the agent tables (the ledger
    kept them): mark those recipients pulled and uncount them, leaving the run's status
    as it is, in one transaction. Returns the recipients marked."""
    async with conn.transaction():
        stopped = await _mark(conn, run_id, numbers)
        await conn.execute(
            """UPDATE hanjullo.runs SET inserted_count = inserted_count - $2, updated_at = now()
               WHERE id = $1""",
            run_id,
            stopped,
        )
    return stopped
