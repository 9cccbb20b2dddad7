"""Soak of the QTmsg agent simulator: every row ends in a log table exactly once.

Feeds all 11 agent tables at their configured rate for the given duration, waits
for the agents to finish, then counts in one statement across every live and
log table that each inserted row exists exactly once, moved (rsv1 = 5). Prints
the rows, the throughput and, on the last line, `sim_cpu_fraction <fraction of
one core>` used by the simulator. Exits non-zero if any row is missing, doubled
or left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pymysql

from simulators.harness import SimulatedNode, mysql, wait_for


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_tables(cur: pymysql.cursors.Cursor) -> list[str]:
    cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_%'")
    return [
        r[0]
        for r in cur.fetchall()
        if r[0].count("_") in (2, 3)
        and r[0].split("_")[2].isdigit()
        and int(r[0].split("_")[2]) <= 11
    ]


def count_once(cur: pymysql.cursors.Cursor, tag: str) -> tuple[int, int, int, int]:
    """(rows, distinct ids, rows still in live tables, rows not in state 5): one statement."""
    tables = agent_tables(cur)
    union = " UNION ALL ".join(
        f"SELECT app_etc2, rsv1, {0 if t.count('_') == 3 else 1} AS live FROM `{t}`"
        f" WHERE app_etc1 = %s"
        for t in tables
    )
    cur.execute(
        f"SELECT COUNT(*), COUNT(DISTINCT app_etc2), COALESCE(SUM(live), 0),"
        f" COALESCE(SUM(rsv1 <> '5'), 0) FROM ({union}) AS every_row",
        [tag] * len(tables),
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=100.0, help="rows/s per agent")
    args = parser.parse_args()
    tag = "soak-" + uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory(prefix="hj-soak-") as tmp, SimulatedNode(Path(tmp)) as node:
        node.db_init()
        node.start_sim()
        assert node.sim is not None
        conn = mysql()
        cur = conn.cursor()
        start_cpu, start = cpu_seconds(node.sim.pid), time.monotonic()
        inserted = 0
        tick = 0.5
        next_at = start
        while time.monotonic() - start < args.seconds:
            per_table = int(args.rate * tick)
            for agent in range(1, 12):
                values = []
                for _ in range(per_table):
                    values.append(
                        (
                            f"0107{inserted % 10_000_000:07d}",
                            "15886000",
                            f"soak {inserted}",
                            tag,
                            str(inserted),
                        )
                    )
                    inserted += 1
                cur.executemany(
                    f"INSERT INTO SMSQ_SEND_{agent} (dest_no, call_back, msg_contents, app_etc1,"
                    " app_etc2, sendreq_time) VALUES (%s, %s, %s, %s, %s, NOW())",
                    values,
                )
            next_at += tick
            time.sleep(max(0.0, next_at - time.monotonic()))
            if int(time.monotonic() - start) % 60 == 0 and per_table:
                print(
                    f"{int(time.monotonic() - start)}s: {inserted} rows inserted", file=sys.stderr
                )
        feed_done = time.monotonic()
        wait_for(lambda: count_once(cur, tag)[2] == 0, 300, "the agents to drain", interval_s=1.0)
        elapsed = time.monotonic() - start
        used = cpu_seconds(node.sim.pid) - start_cpu
        rows, distinct, live, unmoved = count_once(cur, tag)
        conn.close()
    print(
        f"inserted {inserted}, in log tables {rows}, distinct {distinct}, left in live "
        f"tables {live}, not in state 5 {unmoved}",
        file=sys.stderr,
    )
    print(
        f"feed {feed_done - start:.0f}s, drained after {elapsed:.0f}s: {rows / elapsed:.0f} rows/s",
        file=sys.stderr,
    )
    ok = rows == inserted == distinct and live == 0 and unmoved == 0
    if not ok:
        print("FAILED: rows missing, doubled or left behind", file=sys.stderr)
    print(f"sim_cpu_fraction {used / elapsed:.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
