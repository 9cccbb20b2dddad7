"""Handoff throughput: a 300k-recipient run into one line group, against LOAD DATA.

Starts a simulated node (agents at their normal simulated rate), raises the
backlog bound above the run size, submits the run with `hanjulloctl send`, and
times from send's return until `inserted` equals the target. In the same run it
loads the same rows with LOAD DATA LOCAL INFILE into three tables of the same
shape (SMSQ_SEND_901-903). Prints the rows/s of both and the daemon's peak RSS
(goal < 150 MB), and last `ratio_to_load_data <daemon rate / LOAD DATA rate>`
(goal >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

# This file is named like the `dispatch` package; its own folder must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from config.model import MySQLSection  # noqa: E402
from dispatch import agent_tables  # noqa: E402
from simulators.harness import SimulatedNode, instance_database, mysql  # noqa: E402


async def wait_inserted(run_id: str, started: float, limit_s: float = 900.0) -> None:
    """Poll PostgreSQL directly until every recipient is inserted (a CLI process per
    poll would blur the timing)."""
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database=instance_database())
    try:
        while True:
            row = await conn.fetchrow(
                "SELECT inserted_count, target_count FROM hanjullo.runs WHERE id = $1",
                uuid.UUID(run_id),
            )
            if row is not None and row["inserted_count"] == row["target_count"]:
                return
            if time.monotonic() - started > limit_s:
                raise TimeoutError(f"the run was not inserted within {limit_s:.0f} s")
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_data_baseline(rows: list[tuple[str, str]], run_id: str) -> float:
    async def tables() -> None:
        conn = await agent_tables.connect(MySQLSection(database=instance_database()))
        try:
            async with conn.cursor() as cur:
                for n in (901, 902, 903):
                    await cur.execute(f"DROP TABLE IF EXISTS SMSQ_SEND_{n}")
            await agent_tables.ensure_tables(
                conn, [f"SMSQ_SEND_{n}" for n in (901, 902, 903)], date.today()
            )
        finally:
            conn.close()

    asyncio.run(tables())
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for index, n in enumerate((901, 902, 903)):
            path = Path(tmp) / f"{n}.tsv"
            with path.open("w", encoding="utf-8") as handle:
                for phone, text in rows[index::3]:
                    handle.write(f"{phone}\t0212345678\t{text}\tS\t{run_id}\tbench\n")
            files.append((n, path))
        conn = mysql(local_infile=True)
        started = time.monotonic()
        with conn.cursor() as cur:
            for n, path in files:
                cur.execute(
                    f"LOAD DATA LOCAL INFILE %s INTO TABLE SMSQ_SEND_{n} CHARACTER SET utf8mb4"
                    " FIELDS TERMINATED BY '\\t' (dest_no, call_back, msg_contents, msg_type,"
                    " app_etc1, app_etc2) SET sendreq_time = NOW(), status_code = 100,"
                    " rsv1 = '1'",
                    (str(path),),
                )
        elapsed = time.monotonic() - started
        conn.close()
    return len(rows) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    rows = [
        (f"0107{i:07d}", f"[한줄로] 고객님 {i}번 주문이 발송되었습니다") for i in range(args.rows)
    ]

    def overrides(text: str) -> str:
        text = text.replace("backlog_bound = 10000", f"backlog_bound = {args.rows + 1000}")
        return text.replace("[dispatch]\n", "[dispatch]\nbatch_size = 10000\n", 1)

    with (
        tempfile.TemporaryDirectory(prefix="hj-dispatch-") as tmp,
        SimulatedNode(Path(tmp), overrides=overrides) as node,
    ):
        node.db_init()
        node.start_sim()
        node.start_daemon()
        node.wait_components(lambda s: s.get("dispatcher") == "running", 30, "the dispatcher")
        csv = Path(tmp) / "run.csv"
        csv.write_text("phone,text\n" + "".join(f"{p},{t}\n" for p, t in rows), encoding="utf-8")
        out = node.ctl(
            "send",
            "--company",
            "bench",
            "--callback",
            "0212345678",
            "--csv",
            str(csv),
            "--json",
            timeout=600,
        ).stdout
        returned = time.monotonic()
        run_id = json.loads(out)["run_id"]

        asyncio.run(wait_inserted(run_id, returned))
        elapsed = time.monotonic() - returned
        assert node.daemon is not None
        rss = peak_rss_mb(node.daemon.pid)
        node.ctl("run", "cancel", run_id, check=False)
    ours = args.rows / elapsed
    baseline = load_data_baseline(rows, "bench-load-data")
    print(
        f"daemon: {args.rows} rows inserted in {elapsed:.1f}s = {ours:.0f} rows/s "
        f"(from send's return, including the guard pass)",
        file=sys.stderr,
    )
    print(f"LOAD DATA LOCAL INFILE: {baseline:.0f} rows/s", file=sys.stderr)
    print(f"daemon peak RSS {rss:.1f} MB (goal < 150)", file=sys.stderr)
    print(f"ratio_to_load_data {ours / baseline:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
