"""What the spam-test engine reads of its rows in the test agent tables (MySQL): a row
written just before a crash, and the agent's final codes.

A test's rows carry ``app_etc1`` = test id. Writing and pulling back rows is
`dispatch/handoff.py` (the one agent-table writer); the months whose log tables are read
are `dispatch/agent_tables.py:log_tables_between` on the node clock. Functions take a
connection; no state.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiomysql

from config.names import checked_table
from dispatch.agent_tables import PENDING_CODES


async def find_row(
    conn: aiomysql.Connection, tables: Sequence[str], test_ref: str, phone: str, msg_type: str
) -> int | None:
    """The seqno of the test's row to this phone of this type in the first of `tables`
    (live, then log tables) that has one."""
    for name in tables:
        async with conn.cursor() as cur:
            await cur.execute(
                f"SELECT seqno FROM `{checked_table(name)}`"
                " WHERE app_etc1 = %s AND dest_no = %s AND msg_type = %s LIMIT 1",
                (test_ref, phone, msg_type),
            )
            row = await cur.fetchone()
            if row is not None:
                return int(row[0])
    return None


async def final_codes(
    conn: aiomysql.Connection,
    table: str,
    logs: Sequence[str],
    seqnos: Sequence[int],
    test_refs: Sequence[str],
) -> list[tuple[int, int]]:
    """(seqno, status code) of those rows the agent has a final (not pending) result for:
    in the live table once reported (rsv1 4 or 5), or moved to a log table."""
    if not seqnos or not test_refs:
        return []
    ids = ",".join(str(int(n)) for n in seqnos)
    marks = ",".join(["%s"] * len(test_refs))
    union = " UNION ALL ".join(
        [
            f"SELECT seqno, status_code FROM `{checked_table(table)}`"
            f" WHERE seqno IN ({ids}) AND app_etc1 IN ({marks}) AND rsv1 IN ('4', '5')",
            *(
                f"SELECT seqno, status_code FROM `{checked_table(t)}`"
                f" WHERE seqno IN ({ids}) AND app_etc1 IN ({marks})"
                for t in logs
            ),
        ]
    )
    async with conn.cursor() as cur:
        await cur.execute(union, list(test_refs) * (1 + len(logs)))
        rows = await cur.fetchall()
    return [(int(s), int(c)) for s, c in rows if int(c) not in PENDING_CODES]
