"""What a node measures of its runs for its capacity (`daemon/capacity.py`, docs/fleet.md):
how long each line group was held, how long runs waited for one, how many results
landed, and which companies it served. Statements on ``hanjullo.runs`` and
``hanjullo.run_recipients`` only; the windows end at `now`, the node clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dispatch.store.runs import HOLDS_GROUP_SQL, Conn

# A group is held from the moment its run took it until the run released it (it left
# sending/draining: group_released_at; rows from before schema 11 have only completed_at,
# or their last update); a run still holding it is held until now. Not until completed_at:
# a run waits for its results for up to 48 h after it released its group.
GROUPS_SQL = f"""
WITH w AS (
    SELECT $2::timestamptz AS now,
           tstzrange($2::timestamptz - interval '1 hour', $2::timestamptz) AS hour,
           tstzrange($2::timestamptz - interval '1 day', $2::timestamptz) AS day
), holds AS (
    SELECT line_group,
           tstzrange(group_since,
                     greatest(group_since,
                              CASE WHEN status IN ({HOLDS_GROUP_SQL}) THEN w.now
                                   ELSE coalesce(group_released_at, completed_at, updated_at)
                              END)) AS span,
           extract(epoch FROM group_since - greatest(queued_at, coalesce(scheduled_at, queued_at)))
               AS wait_s
    FROM hanjullo.runs, w
    WHERE node_id = $1 AND line_group IS NOT NULL AND group_since IS NOT NULL
      AND coalesce(completed_at, updated_at, w.now) >= lower(w.day)
)
SELECT line_group,
       coalesce(sum(extract(epoch FROM upper(span * w.hour) - lower(span * w.hour)))
                FILTER (WHERE span && w.hour), 0)::double precision AS held_hour_s,
       coalesce(sum(extract(epoch FROM upper(span * w.day) - lower(span * w.day)))
                FILTER (WHERE span && w.day), 0)::double precision AS held_day_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY greatest(wait_s, 0))
           FILTER (WHERE lower(span) >= lower(w.hour)) AS wait_p95_hour_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY greatest(wait_s, 0)) AS wait_p95_day_s
FROM holds, w GROUP BY line_group
"""

RESULTS_SQL = """
WITH w AS (SELECT $2::timestamptz AS now)
SELECT count(*) FILTER (WHERE rr.delivered_at >= w.now - interval '1 hour') AS hour,
       count(*) AS day
FROM hanjullo.runs r JOIN hanjullo.run_recipients rr ON rr.run_id = r.id, w
WHERE r.node_id = $1 AND coalesce(r.completed_at, r.updated_at, w.now) >= w.now - interval '1 day'
  AND rr.delivered_at >= w.now - interval '1 day' AND rr.delivered_at <= w.now
GROUP BY w.now
"""

COMPANIES_SQL = """
SELECT DISTINCT company_id FROM hanjullo.runs
WHERE node_id = $1 AND queued_at >= $2 AND company_id IS NOT NULL
"""


async def group_holds(conn: Conn, node_id: str, now: datetime) -> dict[str, dict[str, Any]]:
    """Per line group: seconds held in the last hour and day (``held_hour_s``,
    ``held_day_s``) and the p95 wait of the runs that took it (``wait_p95_hour_s``,
    ``wait_p95_day_s``, None without such runs)."""
    return {r["line_group"]: dict(r) for r in await conn.fetch(GROUPS_SQL, node_id, now)}


async def results_landed(conn: Conn, node_id: str, now: datetime) -> tuple[int, int]:
    """Results (final recipients) that landed in the last hour, and day."""
    row = await conn.fetchrow(RESULTS_SQL, node_id, now)
    return (0, 0) if row is None else (int(row["hour"]), int(row["day"]))


async def companies_since(conn: Conn, node_id: str, since: datetime) -> set[str]:
    return {r["company_id"] for r in await conn.fetch(COMPANIES_SQL, node_id, since)}
