"""A customer's campaign: a 30k-recipient direct send through the hand-over, end to end.

Starts a simulated node on fresh databases (its agents at 100 rows/s each, the example
configuration otherwise: backlog bound, batch size and poll intervals as a customer's
node has them), waits until the daemon is idle (dispatcher running, every bulk agent
checked healthy), then does what the web service does for a direct send, in-process
(`dispatch.runs.send_direct`: campaigns, campaign_runs, hanjullo.runs and
hanjullo.run_recipients rows and the NOTIFY in one transaction; a CLI process would blur
the timing). Submission is the moment that call returns, i.e. the commit. The run's
company has no line group, so it takes a free three-agent bulk group
(`dispatch.pool_free_groups`).

Measured by polling MySQL and PostgreSQL directly every `POLL_S`:
- first agent row: any row of the run (``app_etc1`` = the campaign id, or the run id on
  code that predates that) in a bulk group's live tables (goal <= 0.2 s);
- last pick-up: ``inserted_count = target_count`` and no row of the run left waiting
  (``rsv1 = '1'``) in its group's tables;
- last result: the run ``completed``, or every inserted row has a result.
Prints these to stderr with their goals, and last on stdout ``makespan_ratio <n>``: the
time to the last pick-up divided by recipients / (the group's agents x the agent rate),
the fastest the agents could possibly take them (goal <= 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/dispatch.py is named like the `dispatch` package; this folder must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import aiomysql  # noqa: E402
import asyncpg  # noqa: E402

from config.clock import NodeClock  # noqa: E402
from config.example import instance_databases  # noqa: E402
from config.loader import load_config  # noqa: E402
from config.model import MySQLSection, NodeConfig  # noqa: E402
from dispatch import agent_tables  # noqa: E402
from dispatch.runs import Recipient, RunSpec, send_direct  # noqa: E402
from simulators.harness import SimulatedNode, current_instance, instance_database  # noqa: E402
from tests import services  # noqa: E402
from tests.config_edits import settings  # noqa: E402

RECIPIENTS = 30_000
AGENT_RATE_PER_S = 100
# The poll that times the events: a few ms, far below the 0.2 s goal it resolves.
POLL_S = 0.003
# Results come every `dispatch.result_sync_interval_s` (2 s): no need to poll tighter.
RESULT_POLL_S = 0.05
FIRST_ROW_GOAL_S = 0.2
MAKESPAN_GOAL = 1.05
# Generous limits: a stuck run fails the bench instead of hanging it.
FIRST_ROW_LIMIT_S = 30.0
PICKUP_SLACK_S = 300.0
RESULT_LIMIT_S = 120.0
# Two of the daemon's passes (dispatch.poll_interval_s, 5 s) and a result sync.
COMPLETE_LIMIT_S = 15.0
COMPANY = "bench-campaign"
CALLBACK = "0212345678"


@dataclass(frozen=True, slots=True)
class Figures:
    first_row_s: float
    inserted_s: float
    last_pickup_s: float
    last_result_s: float
    group: str
    agents: int


def bulk_tables(config: NodeConfig) -> dict[str, list[str]]:
    """Each bulk line group's live agent tables."""
    by_number = {a.number: a.table for a in config.agents}
    return {
        g.name: [by_number[n] for n in g.agents] for g in config.line_groups if g.type == "bulk"
    }


def any_row_sql(tables: list[str], rsv1: str | None = None) -> str:
    """One statement: 1 if any of `tables` holds a row of the run (%s, %s: its campaign
    and run ids), optionally only rows in state `rsv1`; every branch uses ``idx_app``."""
    state = f" AND rsv1 = '{rsv1}'" if rsv1 else ""
    return " UNION ALL ".join(
        f"(SELECT 1 FROM `{t}` WHERE app_etc1 IN (%s, %s){state} LIMIT 1)" for t in tables
    )


async def measure(node: SimulatedNode, config: NodeConfig, recipients: int) -> Figures:
    pg = await asyncpg.connect(host="127.0.0.1", user="postgres", database=instance_database())
    my = await agent_tables.connect(MySQLSection(database=instance_database()))
    try:
        groups = bulk_tables(config)
        every_table = [t for tables in groups.values() for t in tables]
        spec = RunSpec(node_id=config.node.id, company_id=COMPANY, callback=CALLBACK)
        rows = (
            Recipient(f"0107{i:07d}", f"[한줄로] 고객님 {i}번 주문이 발송되었습니다")
            for i in range(recipients)
        )
        now = NodeClock(config.clock.file).now_kst()
        sent = await send_direct(pg, spec, rows, simulated=True, now=now)
        submitted = time.monotonic()
        # Wall clock too: the daemon's log (logs/noded.log in --dir) is stamped with it.
        print(f"submitted at {datetime.now(UTC).isoformat()}", file=sys.stderr)
        ids = (str(sent.campaign_id), str(sent.run_id))
        try:
            figures = await _timeline(pg, my, groups, every_table, sent.run_id, ids, submitted)
        except BaseException:
            node.ctl("run", "cancel", str(sent.run_id), check=False)
            raise
        # Every result is in; the run completes at the daemon's next pass (it releases the
        # group first). Let it, so nothing lingers; cancel it only if it does not.
        deadline = time.monotonic() + COMPLETE_LIMIT_S
        status = None
        while time.monotonic() < deadline:
            status = await pg.fetchval(
                "SELECT status FROM hanjullo.runs WHERE id = $1", sent.run_id
            )
            if status == "completed":
                return figures
            await asyncio.sleep(RESULT_POLL_S)
        print(f"run {sent.run_id} still {status}: cancelling it", file=sys.stderr)
        node.ctl("run", "cancel", str(sent.run_id), check=False)
        return figures
    finally:
        my.close()
        await pg.close()


async def _timeline(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    groups: dict[str, list[str]],
    every_table: list[str],
    run_id: uuid.UUID,
    ids: tuple[str, str],
    submitted: float,
) -> Figures:
    async def any_row(tables: list[str], rsv1: str | None = None) -> bool:
        async with my.cursor() as cur:
            await cur.execute(any_row_sql(tables, rsv1), ids * len(tables))
            return await cur.fetchone() is not None

    async def run_row() -> asyncpg.Record:
        row = await pg.fetchrow(
            "SELECT status, line_group, target_count, inserted_count, success_count,"
            " fail_count FROM hanjullo.runs WHERE id = $1",
            run_id,
        )
        assert row is not None
        return row

    # First agent row: the group is not known before the grant, so look in every bulk table.
    while not await any_row(every_table):
        if time.monotonic() - submitted > FIRST_ROW_LIMIT_S:
            raise TimeoutError(f"no agent row within {FIRST_ROW_LIMIT_S:.0f} s")
        await asyncio.sleep(POLL_S)
    first_row = time.monotonic()
    row = await run_row()
    group = row["line_group"]
    tables = groups[group]
    target = row["target_count"]
    ideal_s = target / (len(tables) * AGENT_RATE_PER_S)

    # Last pick-up: everything inserted and nothing of the run left waiting.
    inserted_at: float | None = None
    while True:
        row = await run_row()
        if row["inserted_count"] == row["target_count"]:
            inserted_at = inserted_at or time.monotonic()
            if not await any_row(tables, rsv1="1"):
                break
        if time.monotonic() - submitted > ideal_s + PICKUP_SLACK_S:
            raise TimeoutError(f"rows still waiting {ideal_s + PICKUP_SLACK_S:.0f} s after sending")
        await asyncio.sleep(POLL_S)
    last_pickup = time.monotonic()
    assert inserted_at is not None

    # Last result: completed, or a result for every inserted row.
    while True:
        row = await run_row()
        done = row["success_count"] + row["fail_count"] >= row["inserted_count"]
        if row["status"] == "completed" or (row["inserted_count"] == target and done):
            break
        if time.monotonic() - last_pickup > RESULT_LIMIT_S:
            raise TimeoutError(f"results still missing {RESULT_LIMIT_S:.0f} s after the pick-up")
        await asyncio.sleep(RESULT_POLL_S)
    last_result = time.monotonic()
    return Figures(
        first_row - submitted,
        inserted_at - submitted,
        last_pickup - submitted,
        last_result - submitted,
        group,
        len(tables),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=RECIPIENTS)
    parser.add_argument("--dir", type=Path, default=None, help="the node's files (kept)")
    args = parser.parse_args()

    def overrides(text: str) -> str:
        # The example's rate already; stated here because the makespan is measured against it.
        return settings(text, {"simulator": {"agents": {"rate_per_s": AGENT_RATE_PER_S}}})

    for name, port in services.PORTS.items():
        if not services.port_open(port):
            services.start(name)
    # No run of an earlier session may hold a group or wait ahead of this one.
    services.fresh_databases(*instance_databases(current_instance()))
    with contextlib.ExitStack() as stack:
        directory = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        node = stack.enter_context(SimulatedNode(directory, overrides=overrides))
        config = load_config(node.config_path)
        node.db_init()
        node.start_sim()
        node.start_daemon()
        node.wait_components(lambda s: s.get("dispatcher") == "running", 30, "the dispatcher")
        bulk = {n for g in config.line_groups if g.type == "bulk" for n in g.agents}
        node.wait_components(
            lambda _: {a["number"] for a in node.status()["agents"] if a["state"] == "ok"} >= bulk,
            30,
            "every bulk agent checked healthy",
        )
        figures = asyncio.run(measure(node, config, args.recipients))

    ideal_s = args.recipients / (figures.agents * AGENT_RATE_PER_S)
    ratio = figures.last_pickup_s / ideal_s
    print(
        f"{args.recipients} recipients on {figures.group} ({figures.agents} agents x"
        f" {AGENT_RATE_PER_S} rows/s: {ideal_s:.1f} s at best)",
        file=sys.stderr,
    )
    print(
        f"first agent row {figures.first_row_s:.3f} s after submission"
        f" (goal <= {FIRST_ROW_GOAL_S})",
        file=sys.stderr,
    )
    print(f"all rows inserted {figures.inserted_s:.2f} s after submission", file=sys.stderr)
    print(f"last row picked up {figures.last_pickup_s:.2f} s after submission", file=sys.stderr)
    print(f"last result {figures.last_result_s:.2f} s after submission", file=sys.stderr)
    print(f"makespan_ratio {ratio:.3f} (goal <= {MAKESPAN_GOAL})", file=sys.stderr)
    print(f"makespan_ratio {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
