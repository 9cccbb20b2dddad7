"""Result sync: how soon a run's counters are final, and what an idle sync cycle costs.

Creates a run of N recipients that the agents have taken (status `results`),
lands N results straight into the group's monthly log tables (as agents move
them there), and runs the dispatcher's real sync cycle until the counters are
final. Prints the time from the last result landing to final counters (goal
<= 5 s) and the queries one sync cycle issues while nothing changes, for a small
and a large run (goal: the same number). Last line:
`idle_sync_queries_ratio <large-run queries / small-run queries>` (goal 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiomysql
import asyncpg

# bench/dispatch.py is named like the `dispatch` package; this folder must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from config.example import sim_example  # noqa: E402
from config.loader import validate  # noqa: E402
from config.model import NodeConfig  # noqa: E402
from daemon import schema  # noqa: E402
from daemon.agents import AgentMonitor  # noqa: E402
from daemon.dispatcher import Dispatcher  # noqa: E402
from daemon.runtime import Runtime  # noqa: E402
from daemon.stores import PostgresKeeper, RedisKeeper  # noqa: E402
from daemon.supervisor import Health  # noqa: E402
from dispatch import agent_tables  # noqa: E402

QUERIES: Counter[str] = Counter()


def count_queries() -> None:
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        original = getattr(asyncpg.connection.Connection, name)

        async def counted(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            QUERIES["postgres"] += 1
            return await __original(self, *args, **kwargs)

        setattr(asyncpg.connection.Connection, name, counted)
    original_execute = aiomysql.Cursor.execute

    async def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        QUERIES["mysql"] += 1
        return await original_execute(self, *args, **kwargs)

    aiomysql.Cursor.execute = counted_execute


async def make_run(config: NodeConfig, size: int) -> uuid.UUID:
    run_id = uuid.uuid4()
    conn = await schema.connect_pg(config)
    try:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO hanjullo.runs (id, node_id, company_id, callback_number,
                       status, line_group, started_at, prepared, prepared_upto, next_seq,
                       inserted_count, target_count)
                   VALUES ($1, $2, 'bench', '0212345678', 'results', 'bulk-1', now(), true,
                           $3, $3, $3, $3)""",
                run_id,
                config.node.id,
                size,
            )
            await conn.copy_records_to_table(
                "run_recipients",
                schema_name="hanjullo",
                records=((run_id, i, f"0106{i:07d}", "bench") for i in range(1, size + 1)),
                columns=["run_id", "seq", "phone", "message_text"],
            )
    finally:
        await conn.close()
    return run_id


async def land_results(config: NodeConfig, run_id: uuid.UUID, size: int, tmp: Path) -> None:
    conn = await agent_tables.connect(config.mysql, local_infile=True)
    today = Runtime.create(config).clock.now_kst().date()
    try:
        await agent_tables.ensure_tables(conn, ["SMSQ_SEND_1", "SMSQ_SEND_2", "SMSQ_SEND_3"], today)
        for index, agent in enumerate((1, 2, 3)):
            path = tmp / f"results-{agent}.tsv"
            with path.open("w") as handle:
                for i in range(index + 1, size + 1, 3):
                    code = 6 if i % 10 else 8
                    handle.write(
                        f"{10_000_000 + i}\t0106{i:07d}\t0212345678\tbench\t{code}\t11"
                        f"\t{run_id}\t{run_id}\n"
                    )
            table = agent_tables.log_table(f"SMSQ_SEND_{agent}", today)
            async with conn.cursor() as cur:
                await cur.execute(f"DELETE FROM `{table}` WHERE seqno >= 10000000")
                await cur.execute(
                    f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` FIELDS TERMINATED BY '\\t'"
                    " (seqno, dest_no, call_back, msg_contents, status_code, mob_company,"
                    " app_etc1, bill_id) SET sendreq_time = NOW(), rsv1 = '5',"
                    " mobsend_time = UTC_TIMESTAMP(), repmsg_recvtm = UTC_TIMESTAMP()",
                    (str(path),),
                )
    finally:
        conn.close()


async def run(size: int, small: int) -> int:
    with tempfile.TemporaryDirectory(prefix="hj-sync-") as tmp_name:
        tmp = Path(tmp_name)
        config = validate(tomllib.loads(sim_example(tmp)))
        conn = await schema.connect_pg(config)
        try:
            await schema.migrate_pg(conn)
        finally:
            await conn.close()
        runtime = Runtime.create(config)
        postgres = PostgresKeeper(runtime)
        redis = RedisKeeper(runtime)
        tasks = [asyncio.create_task(postgres.run(Health("postgres")))]
        await asyncio.wait_for(postgres.ready.wait(), 10)
        dispatcher = Dispatcher(runtime, postgres, redis, AgentMonitor(runtime))
        dispatcher.tables.pool = await agent_tables.create_pool(config.mysql, maxsize=4)
        count_queries()
        idle: dict[int, int] = {}
        runs = {}
        try:
            for n in (small, size):
                runs[n] = await make_run(config, n)
            for n, run_id in runs.items():
                # Only this run is active for this measurement.
                pool = postgres.require()
                async with pool.acquire() as c:
                    await c.execute(
                        "UPDATE hanjullo.runs SET status = 'paused' WHERE node_id = $1"
                        " AND id <> $2",
                        config.node.id,
                        run_id,
                    )
                    await c.execute(
                        "UPDATE hanjullo.runs SET status = 'results' WHERE id = $1", run_id
                    )
                await dispatcher.sync_once()  # first cycle reads from the beginning
                QUERIES.clear()
                await dispatcher.sync_once()
                idle[n] = sum(QUERIES.values())
            run_id = runs[size]
            async with postgres.require().acquire() as c:
                await c.execute("UPDATE hanjullo.runs SET status = 'results' WHERE id = $1", run_id)
            started = time.monotonic()
            await land_results(config, run_id, size, tmp)
            landed = time.monotonic()
            interval = config.dispatch.result_sync_interval_s
            while True:
                await dispatcher.sync_once()
                async with postgres.require().acquire() as c:
                    row = await c.fetchrow(
                        "SELECT success_count, fail_count, status FROM hanjullo.runs WHERE id = $1",
                        run_id,
                    )
                if row is not None and row["success_count"] + row["fail_count"] >= size:
                    break
                await asyncio.sleep(interval)
            final = time.monotonic()
        finally:
            await dispatcher.tables.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await redis.close()
    print(
        f"{size} results landed in {landed - started:.1f}s; counters final "
        f"{final - landed:.2f}s after the last result landed (goal <= 5 s); status "
        f"{row['status']}, success {row['success_count']}, fail {row['fail_count']}",
        file=sys.stderr,
    )
    print(
        f"queries per idle sync cycle: {idle[small]} for {small} recipients, "
        f"{idle[size]} for {size}",
        file=sys.stderr,
    )
    print(f"idle_sync_queries_ratio {idle[size] / idle[small]:.2f}")
    return 0 if final - landed <= 5.0 and idle[size] == idle[small] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--small", type=int, default=3_000)
    args = parser.parse_args()
    return asyncio.run(run(args.rows, args.small))


if __name__ == "__main__":
    sys.exit(main())
