"""``hanjullo.runs``: a run's state, its grant of a line group, and status changes.

A run's status (`RunStatus`) is the daemon's own: the web service writes a run as
``queued`` and the daemon moves it on. The grant of a group is recorded here before
anything is inserted (`take_group`); the Redis lease only enforces it.
Owns no connection and no engine state.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own or one borrowed from a pool: every store function takes either.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy


class RunStatus(StrEnum):
    QUEUED = "queued"  # waiting for a line group (or for its scheduled time)
    SENDING = "sending"  # holds a group, inserting rows
    DRAINING = "draining"  # everything inserted; holds the group until agents took it all
    RESULTS = "results"  # group released; waiting for the last results
    HELD = "held"  # advertising run outside 08:00-21:00 KST
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    REJECTED = "rejected"


HOLDS_GROUP = (RunStatus.SENDING, RunStatus.DRAINING)
ACTIVE = (
    RunStatus.QUEUED,
    RunStatus.SENDING,
    RunStatus.DRAINING,
    RunStatus.RESULTS,
    RunStatus.HELD,
    RunStatus.PAUSED,
)
# HOLDS_GROUP as an SQL list.
HOLDS_GROUP_SQL = ", ".join(f"'{s.value}'" for s in HOLDS_GROUP)
# Statuses from which nothing is sent any more.
FINISHED = (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.REJECTED)


@dataclass(frozen=True, slots=True)
class Run:
    """One ``hanjullo.runs`` row as the dispatcher reads it (`RUN_COLUMNS` order)."""

    id: uuid.UUID
    node_id: str
    company_id: str
    user_id: str | None
    status: RunStatus
    status_reason: str | None
    line_group: str | None
    message_type: str
    callback_number: str
    is_ad: bool
    scheduled_at: datetime | None
    queued_at: datetime
    group_since: datetime | None
    started_at: datetime | None
    target_count: int
    inserted_count: int
    sent_count: int
    success_count: int
    fail_count: int
    spam_count: int
    systemic_count: int
    prepared: bool
    prepared_upto: int
    next_seq: int
    verify_until: int
    breaker_checked: bool
    campaign_id: uuid.UUID | None = None  # the web's campaigns.id: its rows' app_etc1

    @classmethod
    def of(cls, record: asyncpg.Record) -> Run:
        data = dict(record)
        data["status"] = RunStatus(data["status"])
        return cls(**data)

    @property
    def results(self) -> int:
        return self.success_count + self.fail_count

    @property
    def awaiting_results(self) -> bool:
        """Rows handed to agents whose result has not been recorded yet."""
        return self.inserted_count > self.results


def skip_counts(value: str | Mapping[str, Any] | None) -> dict[str, int]:
    """``hanjullo.runs.skipped`` (jsonb: a JSON text unless a codec is set) as counts."""
    data = json.loads(value) if isinstance(value, str) else (value or {})
    return {str(k): int(v) for k, v in data.items()}


RUN_COLUMNS = (
    "id, node_id, company_id, user_id, status, status_reason, line_group, message_type,"
    " callback_number, is_ad, scheduled_at, queued_at, group_since, started_at, target_count,"
    " inserted_count, sent_count, success_count, fail_count, spam_count, systemic_count,"
    " prepared, prepared_upto, next_seq, verify_until, breaker_checked, campaign_id"
)


async def runs_in(conn: Conn, node_id: str, statuses: tuple[RunStatus, ...]) -> list[Run]:
    rows = await conn.fetch(
        f"SELECT {RUN_COLUMNS} FROM hanjullo.runs WHERE node_id = $1 AND status = ANY($2::text[])",
        node_id,
        [s.value for s in statuses],
    )
    return [Run.of(r) for r in rows]


async def fetch_run(conn: Conn, run_id: uuid.UUID) -> Run | None:
    row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM hanjullo.runs WHERE id = $1", run_id)
    return None if row is None else Run.of(row)


async def status_of(conn: Conn, run_id: uuid.UUID) -> RunStatus | None:
    """The run's status, read before each batch it hands over. A run whose campaign the
    web service cancelled reads ``cancelled`` at once (so the batch does not go out), also
    before the dispatcher's next pass records the cancel itself."""
    value = await conn.fetchval(
        """SELECT CASE WHEN k.status = 'cancelled' THEN 'cancelled' ELSE r.status END
           FROM hanjullo.runs r LEFT JOIN campaigns k ON k.id = r.campaign_id
           WHERE r.id = $1""",
        run_id,
    )
    return None if value is None else RunStatus(value)


# The right-hand `status` is the row's status before the update: a run that leaves the
# group-holding states stamps when (the capacity measurement's end of its hold).
SET_STATUS_SQL = f"""
UPDATE hanjullo.runs SET status = $2, status_reason = $3, updated_at = now(),
    completed_at = CASE WHEN $2 IN ('completed', 'cancelled') THEN now() ELSE completed_at END,
    group_released_at = CASE WHEN status IN ({HOLDS_GROUP_SQL})
                              AND $2 NOT IN ({HOLDS_GROUP_SQL})
                             THEN now() ELSE group_released_at END
WHERE id = $1
"""


async def set_status(conn: Conn, run_id: uuid.UUID, status: RunStatus, reason: str | None) -> None:
    await conn.execute(
        SET_STATUS_SQL,
        run_id,
        status.value,
        reason,
    )


async def take_group(conn: Conn, run_id: uuid.UUID, group: str, now: datetime) -> bool:
    """Record the grant of `group` to a queued run; False when it is no longer queued.

    `now` is the node clock, like the agents': it starts the run's log-table window."""
    result = await conn.execute(
        """UPDATE hanjullo.runs SET status = 'sending', line_group = $2,
               group_since = now(), group_released_at = NULL,
               started_at = coalesce(started_at, $3),
               status_reason = NULL, updated_at = now()
           WHERE id = $1 AND status = 'queued'
           AND NOT EXISTS (SELECT 1 FROM campaigns k
                           WHERE k.id = hanjullo.runs.campaign_id AND k.status = 'cancelled')""",
        run_id,
        group,
        now,
    )
    return bool(result.endswith(" 1"))


async def last_served(conn: Conn, node_id: str, companies: list[str]) -> dict[str, datetime]:
    """When each company last got a line group (companies never served are absent)."""
    rows = await conn.fetch(
        """SELECT company_id, max(group_since) AS last FROM hanjullo.runs
           WHERE node_id = $1 AND company_id = ANY($2::text[])
           AND group_since IS NOT NULL GROUP BY company_id""",
        node_id,
        companies,
    )
    return {r["company_id"]: r["last"] for r in rows}
