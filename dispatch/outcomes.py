"""What an agent's results mean for a run: tallies, the circuit breaker, completion.

Pure rules on numbers and codes; reading results is `dispatch/handoff.py`'s, recording
them `dispatch/store/results.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatch.agent_tables import SPAM_CODES, SUCCESS_CODES

# Codes that say the sending itself is broken, not the recipient (circuit breaker):
# prepaid balance (55), relay identification (23, 2323), unregistered sender (9008),
# daily/total limits (56-61).
SYSTEMIC_CODES = frozenset({55, 23, 2323, 9008, *range(56, 62)})
# Log-table rows are re-read this far behind the newest result seen (moves are not
# strictly in result order).
RESULT_SLACK = timedelta(seconds=10)
# How a run paused by the breaker reads in its reason (the status API and alerts look for it).
BREAKER_REASON_PREFIX = "circuit breaker:"


@dataclass(frozen=True, slots=True)
class Result:
    """One recipient's result as an agent table holds it."""

    dest_no: str
    status_code: int
    mob_company: str | None
    result_at: datetime | None  # aware (the agent writes UTC)
    table: str


@dataclass(frozen=True, slots=True)
class Tally:
    """How a set of result codes counts on a run."""

    success: int
    fail: int
    spam: int
    systemic: int

    @classmethod
    def of(cls, codes: Sequence[int]) -> Tally:
        success = sum(1 for c in codes if c in SUCCESS_CODES)
        return cls(
            success,
            len(codes) - success,
            sum(1 for c in codes if c in SPAM_CODES),
            sum(1 for c in codes if c in SYSTEMIC_CODES),
        )


def breaker_share(results: int, systemic: int, min_results: int) -> float | None:
    """The share of systemic failures once `min_results` results are in; None before."""
    if results < min_results or results == 0:
        return None
    return systemic / results


def breaker_reason(share: float, results: int, commonest: Iterable[tuple[int, int]]) -> str:
    """The pause reason an operator reads: the share and the commonest systemic codes."""
    top = ", ".join(f"{code}×{count}" for code, count in commonest)
    return (
        f"{BREAKER_REASON_PREFIX} {share:.0%} of the first {results} results are "
        f"systemic failures ({top})"
    )


def completion(
    results: int,
    inserted: int,
    started_at: datetime | None,
    now: datetime,
    horizon: timedelta,
) -> tuple[bool, str | None]:
    """Whether a run waiting for results is complete, and the reason when it is complete
    without every result (the horizon, measured on the node clock from ``started_at``)."""
    if results >= inserted:
        return True, None
    if started_at is not None and now - started_at > horizon:
        return True, "result horizon reached"
    return False, None


def advance_watermarks(
    watermarks: dict[str, datetime | None], results: Iterable[Result], tables: Iterable[str]
) -> None:
    """Move each log table's watermark to just behind the newest result read from it."""
    newest: dict[str, datetime] = {}
    for r in results:
        if r.result_at is not None and (r.table not in newest or r.result_at > newest[r.table]):
            newest[r.table] = r.result_at
    for table in tables:
        if table in newest:
            watermarks[table] = newest[table] - RESULT_SLACK
