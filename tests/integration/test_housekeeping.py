"""Nightly housekeeping: finished runs' recipients and old canaries are pruned."""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from pathlib import Path

from config.example import sim_example
from config.loader import validate
from daemon import schema
from daemon.node import Node
from daemon.runtime import Runtime
from daemon.supervisor import Health


async def test_finished_runs_are_pruned_after_the_horizon_and_nothing_else(
    tmp_path: Path,
) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    conn = await schema.connect_pg(config)
    try:
        await schema.migrate_pg(conn)
        runs = {name: uuid.uuid4() for name in ("old_done", "recent_done", "old_sending")}
        for name, run_id in runs.items():
            status = "sending" if name == "old_sending" else "completed"
            age = "100 days" if name.startswith("old") else "1 day"
            await conn.execute(
                f"""INSERT INTO hanjullo.runs (id, node_id, company_id, status, created_at,
                       completed_at)
                   VALUES ($1, $2, 'acme', $3, now() - interval '{age}',
                           CASE WHEN $3 = 'completed' THEN now() - interval '{age}' END)""",
                run_id,
                config.node.id,
                status,
            )
            await conn.copy_records_to_table(
                "run_recipients",
                schema_name="hanjullo",
                records=[(run_id, i, f"0105{i:07d}", "안내") for i in range(1, 51)],
                columns=["run_id", "seq", "phone", "message_text"],
            )
    finally:
        await conn.close()

    conn = await schema.connect_pg(config)
    try:
        canaries = [
            await conn.fetchval(
                f"""INSERT INTO hanjullo.spam_tests (node_id, callback_number, message_content_sms,
                       source, target_modem, status, overall, completed_at)
                   VALUES ($1, '0212345678', 'hanjullo canary', 'canary', 'KT', 'completed',
                           'pass', now() - interval '{age}') RETURNING id""",
                config.node.id,
            )
            for age in ("40 days", "1 day")
        ]
    finally:
        await conn.close()

    node = Node(Runtime.create(config))
    keeper = asyncio.create_task(node.postgres.run(Health("postgres")))
    try:
        await asyncio.wait_for(node.postgres.ready.wait(), 10)
        await node._prune_runs()
        await node._prune_receipts()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)

    conn = await schema.connect_pg(config)
    try:
        left = {
            name: await conn.fetchval(
                "SELECT count(*) FROM hanjullo.run_recipients WHERE run_id = $1", run_id
            )
            for name, run_id in runs.items()
        }
        kept_canaries = await conn.fetchval(
            "SELECT count(*) FROM hanjullo.spam_tests WHERE id = ANY($1::uuid[])", canaries
        )
        kept_runs = await conn.fetchval(
            "SELECT count(*) FROM hanjullo.runs WHERE id = ANY($1::uuid[])", list(runs.values())
        )
    finally:
        await conn.close()
    # The run's own row (its counters, for the web service) stays; its recipients go.
    assert left == {"old_done": 0, "recent_done": 50, "old_sending": 50}
    assert kept_runs == 3
    # Canaries older than the receipt retention (30 days) go; recent ones stay.
    assert kept_canaries == 1
