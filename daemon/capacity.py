"""What a node measured of its own capacity over the last hour and day: the heartbeat's
``capacity`` (docs/fleet.md), from which the control plane places a new company.

Measured from the node's own tables (campaign runs, their recipients, spam tests) and
what the daemon knows now (which groups are held, which phones are ready):
- per bulk line group: the share of each window it was held by a run, and the p95 wait
  of the runs that took it (from queued, or scheduled when later, to taking the group);
- the bulk agents: results landed per second, and their free share (the share of the
  window their group was not held);
- the test phones: their utilisation (the share of the window a spam test was active),
  and the p95 wait of spam tests from queued to started;
- the companies the node served (a run or a spam test) in the last 30 days;
- the node's verdict of its headroom: a score 0-1, the least of its free shares now and
  over the last hour, lowered by long waits, with the reason of each factor.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from dispatch.spamtests import store as spam_store
from dispatch.store import capacity as run_store
from dispatch.store.runs import Conn

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
COMPANIES_WINDOW = timedelta(days=30)
# A p95 wait this long halves the score (runs for a group, spam tests for the phones).
WAIT_HALVES_SCORE_S = 60.0
# Verdicts by score.
ROOM_AT = 0.5
TIGHT_AT = 0.2


def _share(seconds: float, window: timedelta) -> float:
    return round(min(1.0, max(0.0, seconds / window.total_seconds())), 4)


def _maybe(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


async def measure(
    conn: Conn,
    node_id: str,
    now: datetime,
    bulk_groups: Mapping[str, int],
    held_now: set[str],
    phones_total: int,
    phones_ready: int,
    spam_tests_queued: int,
    runs_waiting: int,
) -> dict[str, Any]:
    """The capacity of node `node_id` at `now` (the node clock, as its rows are written).

    `bulk_groups`: each bulk group's agent count; `held_now`: the groups a run holds now;
    the rest: what the daemon sees now."""
    groups_rows = await run_store.group_holds(conn, node_id, now)
    results_hour, results_day = await run_store.results_landed(conn, node_id, now)
    phones = await spam_store.phones_busy(conn, node_id, now)
    since = now - COMPANIES_WINDOW
    companies = await run_store.companies_since(
        conn, node_id, since
    ) | await spam_store.test_companies_since(conn, node_id, since)
    groups: list[dict[str, Any]] = []
    for name in sorted(bulk_groups):
        row = groups_rows.get(name)
        groups.append(
            {
                "name": name,
                "agents": bulk_groups[name],
                "held_now": name in held_now,
                "held_share": {
                    "hour": _share(row["held_hour_s"] if row else 0.0, WINDOWS["hour"]),
                    "day": _share(row["held_day_s"] if row else 0.0, WINDOWS["day"]),
                },
                "wait_p95_s": {
                    "hour": _maybe(row["wait_p95_hour_s"]) if row else None,
                    "day": _maybe(row["wait_p95_day_s"]) if row else None,
                },
            }
        )
    agents_total = sum(bulk_groups.values())
    free_share = {
        window: (
            round(
                1.0 - sum(g["held_share"][window] * g["agents"] for g in groups) / agents_total,
                4,
            )
            if agents_total
            else 0.0
        )
        for window in WINDOWS
    }
    capacity: dict[str, Any] = {
        "measured_at": now.isoformat(),
        "bulk_groups": groups,
        "agents": {
            "bulk": agents_total,
            "results_per_s": {
                "hour": round(results_hour / WINDOWS["hour"].total_seconds(), 4),
                "day": round(results_day / WINDOWS["day"].total_seconds(), 4),
            },
            "free_share": free_share,
        },
        "phones": {
            "total": phones_total,
            "ready": phones_ready,
            "utilisation": {
                "hour": _share(phones["busy_hour_s"], WINDOWS["hour"]),
                "day": _share(phones["busy_day_s"], WINDOWS["day"]),
            },
            "spam_test_wait_p95_s": {
                "hour": _maybe(phones["wait_p95_hour_s"]),
                "day": _maybe(phones["wait_p95_day_s"]),
            },
            "spam_tests_queued": spam_tests_queued,
        },
        "runs_waiting": runs_waiting,
        "companies_30d": len(companies),
    }
    capacity["headroom"] = verdict(capacity)
    return capacity


def verdict(capacity: Mapping[str, Any]) -> dict[str, Any]:
    """The node's headroom from its measurements: the least free share (bulk groups now,
    bulk agents over the hour, phones over the hour), halved for each long p95 wait."""
    groups = capacity["bulk_groups"]
    reasons: list[str] = []
    if not groups:
        return {"score": 0.0, "verdict": "full", "reasons": ["no bulk line group"]}
    free_now = sum(1 for g in groups if not g["held_now"]) / len(groups)
    reasons.append(
        f"{sum(1 for g in groups if not g['held_now'])}/{len(groups)} bulk groups free now"
    )
    free_hour = float(capacity["agents"]["free_share"]["hour"])
    reasons.append(f"bulk agents free {free_hour:.0%} of the last hour")
    phones = capacity["phones"]
    phones_free = 1.0 - float(phones["utilisation"]["hour"])
    if phones["total"]:
        reasons.append(f"test phones free {phones_free:.0%} of the last hour")
        if phones["ready"] < phones["total"]:
            phones_free *= phones["ready"] / phones["total"]
            reasons.append(f"only {phones['ready']}/{phones['total']} test phones ready")
    score = min(free_now, free_hour, phones_free if phones["total"] else 1.0)
    waits = [g["wait_p95_s"]["hour"] for g in groups if g["wait_p95_s"]["hour"] is not None]
    worst_wait = max(waits, default=0.0)
    if worst_wait >= WAIT_HALVES_SCORE_S:
        score /= 2
        reasons.append(f"runs waited up to {worst_wait:.0f} s (p95) for a group in the hour")
    spam_wait = phones["spam_test_wait_p95_s"]["hour"]
    if spam_wait is not None and spam_wait >= WAIT_HALVES_SCORE_S:
        score /= 2
        reasons.append(f"spam tests waited {spam_wait:.0f} s (p95) for the phones in the hour")
    if capacity["runs_waiting"]:
        score /= 2
        reasons.append(f"{capacity['runs_waiting']} run(s) waiting for a group now")
    score = round(max(0.0, min(1.0, score)), 4)
    label = "room" if score >= ROOM_AT else ("tight" if score >= TIGHT_AT else "full")
    return {"score": score, "verdict": label, "reasons": reasons}
