"""Who goes next when several companies wait: first in, first out, fair across companies.

Shared by the line-group grants (campaign runs) and the spam-test queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

# A row as asyncpg returns it, or as a test builds it.
Row = Mapping[str, Any] | asyncpg.Record
R = TypeVar("R", bound=Row)

_NEVER = datetime.min.replace(tzinfo=UTC)
# Later than any real time: a company placed in this ordering goes to the back.
_JUST_NOW = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def fair_order(
    waiting: Sequence[R], last_served: Mapping[str | None, datetime], arrival: str
) -> list[R]:
    """`waiting` (rows with ``company_id`` and the `arrival` time column) in the order
    they should be served: the company served least recently first (a company never
    served before everyone else), each company's own rows in arrival order; once a
    company is placed, the others go before its next row."""
    pending = sorted(waiting, key=lambda r: r[arrival])
    served = dict(last_served)
    order: list[R] = []
    while pending:
        row = min(pending, key=lambda r: (served.get(r["company_id"]) or _NEVER, r[arrival]))
        pending.remove(row)
        order.append(row)
        served[row["company_id"]] = _JUST_NOW + timedelta(microseconds=len(order))
    return order
