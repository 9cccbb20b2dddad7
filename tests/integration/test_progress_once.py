"""The run's progress on the real PostgreSQL: a batch recorded twice is counted once (review
F3: after a takeover the old writer, until it notices, and the new one may both record it),
settled runs go quiet, and a run's pages are read along its primary key."""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from config.example import sim_example
from config.loader import validate
from daemon import schema
from dispatch.store import progress, results


async def test_a_batch_or_a_pulled_page_recorded_twice_is_counted_once(tmp_path: Path) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    conn = await schema.connect_pg(config)
    run_id = uuid.uuid4()
    try:
        await schema.migrate_pg(conn)
        await conn.execute(
            """INSERT INTO hanjullo.runs (id, node_id, company_id, status, created_at)
               VALUES ($1, $2, 'acme', 'sending', now())""",
            run_id,
            config.node.id,
        )
        await conn.copy_records_to_table(
            "run_recipients",
            schema_name="hanjullo",
            records=[(run_id, i, f"0105{i:07d}", "안내") for i in range(1, 21)],
            columns=["run_id", "seq", "phone", "message_text"],
        )

        async def counted() -> tuple[int, int]:
            row = await conn.fetchrow(
                "SELECT next_seq, inserted_count FROM hanjullo.runs WHERE id = $1", run_id
            )
            assert row is not None
            return int(row["next_seq"]), int(row["inserted_count"])

        for _ in range(2):  # the old writer and the new one
            await progress.record_batch(conn, run_id, 10, 10, None)
        assert await counted() == (10, 10)
        await progress.record_batch(conn, run_id, 10, 20, None)
        assert await counted() == (20, 20)

        # Seqs 3-5 were pulled back (uncounted); their re-insert is recorded twice.
        await conn.execute(
            """UPDATE hanjullo.run_recipients SET state = 'pulled', is_pulled = true
               WHERE run_id = $1 AND seq BETWEEN 3 AND 5""",
            run_id,
        )
        await conn.execute(
            "UPDATE hanjullo.runs SET inserted_count = inserted_count - 3 WHERE id = $1", run_id
        )
        for _ in range(2):
            await progress.record_batch(conn, run_id, 3, 5, [3, 4, 5])
        assert await counted() == (20, 20)

        # The next batch's verify_until comes with a checkpoint, even one recorded twice
        # (the checkpoint does not move then, the crash window must still be covered).
        async def verify_until() -> int:
            return int(
                await conn.fetchval("SELECT verify_until FROM hanjullo.runs WHERE id = $1", run_id)
            )

        await progress.record_batch(conn, run_id, 10, 20, None, verify_until=30)
        assert await counted() == (20, 20) and await verify_until() == 30
        await progress.record_batch(conn, run_id, 3, 5, [3, 4, 5], verify_until=40)
        assert await verify_until() == 40
        await progress.record_batch(conn, run_id, 10, 30, None, verify_until=35)
        assert await counted() == (30, 30) and await verify_until() == 40  # never lowered
    finally:
        await conn.execute("DELETE FROM hanjullo.run_recipients WHERE run_id = $1", run_id)
        await conn.execute("DELETE FROM hanjullo.runs WHERE id = $1", run_id)
        await conn.close()


async def test_settled_runs_are_final_and_quiet_beyond_the_horizon_or_gone(
    tmp_path: Path,
) -> None:
    """Which runs' ledger entries may go (`results.settled_runs`, on the real PostgreSQL)."""
    config = validate(tomllib.loads(sim_example(tmp_path)))
    conn = await schema.connect_pg(config)
    ids = {name: uuid.uuid4() for name in ("old", "recent", "sending", "other-node", "gone")}
    try:
        await schema.migrate_pg(conn)
        for name, status, node, age_h in (
            ("old", "completed", config.node.id, 49),
            ("recent", "cancelled", config.node.id, 47),
            ("sending", "sending", config.node.id, 49),
            ("other-node", "completed", "another-node", 49),
        ):
            await conn.execute(
                """INSERT INTO hanjullo.runs (id, node_id, company_id, status, created_at,
                       updated_at)
                   VALUES ($1, $2, 'acme', $3, now(), now() - make_interval(hours => $4))""",
                ids[name],
                node,
                status,
                age_h,
            )
        settled = await results.settled_runs(conn, config.node.id, list(ids.values()), 48.0)
        assert settled == {ids["old"], ids["gone"]}
    finally:
        await conn.execute(
            "DELETE FROM hanjullo.runs WHERE id = ANY($1::uuid[])", list(ids.values())
        )
        await conn.close()


async def test_a_fresh_run_is_paged_along_its_primary_key_whatever_the_statistics_say(
    tmp_path: Path,
) -> None:
    """The planner's statistics predate a run just handed over; its pages must still be
    read along the primary key (a bitmap scan of the rest of the run and a sort per page
    made paging quadratic: 300,000 fresh recipients in 3.5 s instead of 0.6 s)."""
    config = validate(tomllib.loads(sim_example(tmp_path)))
    conn = await schema.connect_pg(config)
    large = uuid.uuid4()
    try:
        await schema.migrate_pg(conn)
        # Everything below happens in one transaction that is rolled back: the statistics
        # it takes (ANALYZE inside a transaction) and its rows are this test's alone.
        trial = conn.transaction()
        await trial.start()
        # Statistics taken over 400 runs of 100 recipients: a new run is expected to have
        # about a hundred, so the planner would read all of it and sort, page after page.
        earlier = [uuid.uuid4() for _ in range(400)]
        await conn.execute(
            """INSERT INTO hanjullo.runs (id, node_id, company_id, status)
               SELECT unnest($1::uuid[]), $2, 'acme', 'sending'""",
            [*earlier, large],
            config.node.id,
        )
        await conn.copy_records_to_table(
            "run_recipients",
            schema_name="hanjullo",
            records=[
                (r, k * 100 + i, "01012345678", "안내")
                for k, r in enumerate(earlier)
                for i in range(1, 101)
            ],
            columns=["run_id", "seq", "phone", "message_text"],
        )
        await conn.execute("ANALYZE hanjullo.run_recipients")
        await conn.copy_records_to_table(
            "run_recipients",
            schema_name="hanjullo",
            records=[(large, i, f"0106{i:07d}", "안내") for i in range(1, 20_001)],
            columns=["run_id", "seq", "phone", "message_text"],
        )
        await conn.execute(
            "UPDATE hanjullo.run_recipients SET is_pulled = true WHERE run_id = $1 AND seq > 10",
            large,
        )
        # auto_explain tells this session the plan of every statement it runs.
        plans: list[str] = []
        conn.add_log_listener(lambda _conn, message: plans.append(message.message))
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            " SET auto_explain.log_level = notice"
        )

        async def plan_of(page: Awaitable[list[asyncpg.Record]]) -> tuple[list[int], str]:
            plans.clear()
            rows = await page
            # Inside a transaction the page's portal stays open, and its plan is logged when
            # it closes: at the next statement. The listeners run on the next loop turn.
            await conn.execute("SELECT 1")
            await asyncio.sleep(0)
            (text,) = [p for p in plans if "run_recipients" in p]
            return [r["seq"] for r in rows], text

        # What the planner does with these statistics when left alone (the bug's cause).
        _, alone = await plan_of(conn.fetch(progress.RECIPIENTS_AFTER, large, 1000, 5000))
        assert "Bitmap Heap Scan" in alone, alone
        pages: list[tuple[Callable[[], Awaitable[list[asyncpg.Record]]], list[int]]] = [
            (lambda: progress.recipients_after(conn, large, 1000, 5000), [*range(1001, 6001)]),
            (lambda: progress.pending_page(conn, large, 1000, 5000, None), [*range(1001, 6001)]),
            (lambda: progress.pulled_page(conn, large, 3), [11, 12, 13]),
        ]
        for page, seqs in pages:
            read, text = await plan_of(page())
            assert read == seqs
            assert "Index Scan" in text and "Bitmap" not in text and "Sort" not in text, text
        await trial.rollback()
    finally:
        await conn.close()
