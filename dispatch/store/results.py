"""Results in PostgreSQL: per-recipient outcomes, the run's counters, the breaker's evidence.

A recipient takes its result once (``pending`` → ``final``), so reading the same result
twice changes nothing; the run's counters grow by what actually changed, in the same
transaction. Owns no connection and no engine state.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from dispatch.outcomes import Result, Tally
from dispatch.store.runs import RUN_COLUMNS, Conn, Run, RunStatus

# Runs that have handed rows to agents may still get results in these states.
_MAY_GET_RESULTS = (
    RunStatus.SENDING,
    RunStatus.DRAINING,
    RunStatus.RESULTS,
    RunStatus.PAUSED,
    RunStatus.CANCELLED,
    RunStatus.HELD,
)


# Stopped runs: read only while something happened to them within the result horizon.
_STOPPED = (RunStatus.PAUSED, RunStatus.CANCELLED, RunStatus.HELD)


async def runs_awaiting_results(conn: Conn, node_id: str, horizon_h: float) -> list[Run]:
    """Runs with rows whose result is not in yet, and every run in ``results``. A paused,
    held or cancelled run is read until `horizon_h` hours after its last change (a row
    handed off, pulled back, a result): results come within the horizon or never, so it
    is not read every interval forever."""
    rows = await conn.fetch(
        f"""SELECT {RUN_COLUMNS} FROM hanjullo.runs WHERE node_id = $1
            AND line_group IS NOT NULL AND status = ANY($2::text[])
            AND inserted_count > success_count + fail_count
            AND (status <> ALL($3::text[])
                 OR updated_at >= now() - make_interval(secs => $4 * 3600.0))
            UNION SELECT {RUN_COLUMNS} FROM hanjullo.runs WHERE node_id = $1
            AND status = 'results'""",
        node_id,
        [s.value for s in _MAY_GET_RESULTS],
        [s.value for s in _STOPPED],
        horizon_h,
    )
    return [Run.of(r) for r in rows]


# Runs that will not change again: no result comes to them after the horizon.
_FINAL = (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.REJECTED)


async def settled_runs(
    conn: Conn, node_id: str, run_ids: Sequence[uuid.UUID], horizon_h: float
) -> set[uuid.UUID]:
    """Which of `run_ids` are settled for good: final (completed, cancelled, rejected) and
    unchanged for `horizon_h` hours, or no longer in PostgreSQL at all (their ledger
    entries are then never read again: `dispatch/ledger.py`'s prune)."""
    rows = await conn.fetch(
        """SELECT u.id FROM unnest($2::uuid[]) AS u(id)
           LEFT JOIN hanjullo.runs c ON c.id = u.id
           WHERE c.id IS NULL
              OR (c.node_id = $1 AND c.status = ANY($3::text[])
                  AND c.updated_at < now() - make_interval(secs => $4 * 3600.0))""",
        node_id,
        list(run_ids),
        [s.value for s in _FINAL],
        horizon_h,
    )
    return {r["id"] for r in rows}


async def apply_results(conn: Conn, run_id: uuid.UUID, results: Sequence[Result]) -> list[int]:
    """Record results of recipients still pending and bump the run's counters, in one
    transaction. Returns the status codes of the recipients that changed (each once)."""
    async with conn.transaction():
        changed = await conn.fetch(
            """UPDATE hanjullo.run_recipients r SET state = 'final',
                   status_code = u.code, mob_company = u.company, delivered_at = u.at
               FROM unnest($2::text[], $3::int[], $4::text[], $5::timestamptz[])
                   AS u(phone, code, company, at)
               WHERE r.run_id = $1 AND coalesce(r.phone_norm, r.phone) = u.phone
               AND r.state = 'pending'
               RETURNING r.status_code""",
            run_id,
            [r.dest_no for r in results],
            [r.status_code for r in results],
            [r.mob_company for r in results],
            [r.result_at for r in results],
        )
        codes = [int(c["status_code"]) for c in changed]
        tally = Tally.of(codes)
        await conn.execute(
            """UPDATE hanjullo.runs SET success_count = success_count + $2,
                   fail_count = fail_count + $3, spam_count = spam_count + $4,
                   systemic_count = systemic_count + $5,
                   updated_at = CASE WHEN $6 THEN now() ELSE updated_at END
               WHERE id = $1""",
            run_id,
            tally.success,
            tally.fail,
            tally.spam,
            tally.systemic,
            bool(codes),  # results read again change nothing, not even the run's age
        )
    return codes


async def record_in_flight(conn: Conn, run_id: uuid.UUID, in_flight: int) -> Run:
    """``sent_count`` = results + rows the agents are working on; returns the run as now."""
    row = await conn.fetchrow(
        f"""UPDATE hanjullo.runs SET sent_count = success_count + fail_count + $2
            WHERE id = $1 RETURNING {RUN_COLUMNS}""",
        run_id,
        in_flight,
    )
    if row is None:
        raise LookupError(f"run {run_id} vanished during result sync")
    return Run.of(row)


async def mark_breaker_checked(conn: Conn, run_id: uuid.UUID) -> None:
    """The breaker judges a run once, on its first results."""
    await conn.execute("UPDATE hanjullo.runs SET breaker_checked = true WHERE id = $1", run_id)


async def commonest_codes(
    conn: Conn, run_id: uuid.UUID, codes: Sequence[int], limit: int = 3
) -> list[tuple[int, int]]:
    """The run's most frequent result codes among `codes`, with their counts."""
    rows = await conn.fetch(
        """SELECT status_code, count(*) AS n FROM hanjullo.run_recipients
           WHERE run_id = $1 AND status_code = ANY($2::int[])
           GROUP BY status_code ORDER BY n DESC LIMIT $3""",
        run_id,
        sorted(codes),
        limit,
    )
    return [(int(r["status_code"]), int(r["n"])) for r in rows]
