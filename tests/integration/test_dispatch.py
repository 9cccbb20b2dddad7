"""Dispatch against the simulators: leases, fairness, exactly once, failover, guards."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from simulators.harness import SimulatedNode, wait_for
from tests.config_edits import overrides, settings
from tests.integration.conftest import FAST_NETWORK
from tests.integration.helpers import (
    kst_month_end,
    kst_today,
    month_of,
    mysql,
    pg_fetch,
    pg_to_node_offset,
    set_node_clock,
)

GROUPS = {"bulk-1": [1, 2, 3], "bulk-2": [4, 5, 6], "bulk-3": [7, 8, 9]}


# Quick agents and a quick dispatcher; each test adds what it needs on top.
FAST_DISPATCH = {
    "simulator": {"agents": {"rate_per_s": 1000}},
    "dispatch": {"poll_interval_s": 0.5, "result_sync_interval_s": 0.5, "batch_size": 2000},
    "supervision": {"check_interval_s": 1.0, "stuck_after_s": 5.0},
}
fast_dispatch = overrides(FAST_NETWORK, FAST_DISPATCH)


def started(directory: Path, edit: Callable[[str], str]) -> Iterator[SimulatedNode]:
    sim = SimulatedNode(directory, overrides=edit)
    sim.db_init()
    sim.start_sim()
    sim.start_daemon()
    try:
        yield sim
    finally:
        sim.close()


@pytest.fixture
def node(node_dir: Path) -> Iterator[SimulatedNode]:
    yield from started(node_dir, fast_dispatch)


@pytest.fixture
def paced_node(node_dir: Path) -> Iterator[SimulatedNode]:
    """Agents at their configured 100 rows/s each: a run of thousands takes seconds."""
    yield from started(
        node_dir, overrides(fast_dispatch, {"simulator": {"agents": {"rate_per_s": 100}}})
    )


def reconfigure(node: SimulatedNode, changes: dict[str, Any]) -> None:
    """Change the node's configuration file through the config model (the daemon and the
    simulator read it when they start)."""
    node.config_path.write_text(settings(node.config_path.read_text(), changes))


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("phone,text\n" + "".join(f"{p},{t}\n" for p, t in rows), encoding="utf-8")
    return path


def send(
    node: SimulatedNode,
    company: str,
    rows: list[tuple[str, str]],
    *extra: str,
    callback: str = "0212345678",
) -> str:
    csv = write_csv(node.dir / f"{company}-{uuid.uuid4().hex[:6]}.csv", rows)
    out = node.ctl(
        "send", "--company", company, "--callback", callback, "--csv", str(csv), "--json", *extra
    ).stdout
    run_id: str = json.loads(out)["run_id"]
    return run_id


def show(node: SimulatedNode, run_id: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(node.ctl("run", "show", run_id, "--json").stdout)
    return result


def numbers(prefix: str, count: int) -> list[tuple[str, str]]:
    return [(f"010{prefix}{i:06d}", f"한줄로 안내 {i}") for i in range(count)]


def agent_rows(run_id: str) -> dict[str, int]:
    """Rows of a run (its run id in bill_id) per table, live and log tables alike, counted in
    one statement."""
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_%'")
            tables = [
                r[0]
                for r in cur.fetchall()
                if r[0].split("_")[2].isdigit() and int(r[0].split("_")[2]) <= 11
            ]
            union = " UNION ALL ".join(
                f"SELECT '{t}' AS tbl, dest_no FROM `{t}` WHERE bill_id = %s" for t in tables
            )
            cur.execute(
                f"SELECT tbl, COUNT(*), COUNT(DISTINCT dest_no) FROM ({union}) AS a"
                " GROUP BY tbl WITH ROLLUP",
                [run_id] * len(tables),
            )
            out = {}
            for tbl, count, distinct in cur.fetchall():
                out[tbl or "total"] = int(count)
                if tbl is None:
                    out["distinct"] = int(distinct)
            return out
    finally:
        conn.close()


def finished(node: SimulatedNode, run_id: str, timeout_s: float = 120) -> dict[str, object]:
    return wait_for(
        lambda: (info := show(node, run_id))["status"] == "completed" and info,  # type: ignore[no-any-return]
        timeout_s,
        f"run {run_id} to complete",
        interval_s=0.5,
    )


def test_four_companies_share_three_groups_one_run_each(node: SimulatedNode) -> None:
    runs = {c: send(node, c, numbers(f"{i}1", 20_000)) for i, c in enumerate("ABCD")}
    violations: list[str] = []
    saw_three_and_one_waiting = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        conn = mysql()
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    for group, agents in GROUPS.items():
                        union = " UNION ALL ".join(
                            f"SELECT DISTINCT app_etc1 FROM SMSQ_SEND_{a} WHERE rsv1 = '1'"
                            for a in agents
                        )
                        cur.execute(f"SELECT COUNT(DISTINCT app_etc1) FROM ({union}) AS w")
                        holders = cur.fetchone()[0]  # type: ignore[index]
                        if holders > 1:
                            violations.append(f"{group}: {holders} runs waiting at once")
                    time.sleep(0.1)
        finally:
            conn.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:

        def three_one() -> bool:
            status = node.status()
            held = [g for g in status["line_groups"] if g["holder"]]
            queued = [r for r in status["runs"] if r["status"] == "queued"]
            if len(held) == 3 and len(queued) == 1:
                saw_three_and_one_waiting.set()
            return saw_three_and_one_waiting.is_set()

        wait_for(three_one, 30, "three runs sending and one waiting", interval_s=0.2)
        infos = {c: finished(node, r, 180) for c, r in runs.items()}
    finally:
        stop.set()
        watcher.join()
    assert not violations, violations[:5]
    for company, run_id in runs.items():
        info = infos[company]
        group = str(info["line_group"])
        rows = agent_rows(run_id)
        tables = {t for t in rows if t.startswith("SMSQ_SEND_")}
        assert {"_".join(t.split("_")[:3]) for t in tables} <= {
            f"SMSQ_SEND_{a}" for a in GROUPS[group]
        }, (company, group, tables)
        assert rows["total"] == rows["distinct"] == info["inserted"] == 20_000


def test_fairness_across_companies(node: SimulatedNode) -> None:
    import asyncio

    from daemon.schema import connect_pg

    async def assign() -> None:
        """As the web's admin assigns a company's line group (admin.ts:426): A and B both
        to bulk-1, which `db init` seeded into sms_line_groups from the configuration."""
        from dispatch.store import web

        conn = await connect_pg(__import__("config").load_config(node.config_path))
        try:
            for code in ("A", "B"):
                # The companies `send --company A` uses on a simulated node.
                company = await web.company_of(conn, code, None, simulated=True)
                await conn.execute(
                    """UPDATE companies SET line_group_id =
                           (SELECT id FROM sms_line_groups WHERE group_name = 'bulk-1')
                       WHERE id = $1""",
                    company,
                )
        finally:
            await conn.close()

    asyncio.run(assign())
    # A's first run holds the group long enough for everything below to queue behind it.
    a_runs = [send(node, "A", numbers(f"5{i}", 80_000 if i == 0 else 300)) for i in range(10)]
    first = show(node, a_runs[0])
    assert first["status"] in ("sending", "draining") and first["line_group"] == "bulk-1"
    b_run = send(node, "B", numbers("60", 300))
    assert finished(node, b_run, 120)["line_group"] == "bulk-1"  # the web's assignment
    b_started = show(node, b_run)["started_at"]
    second = show(node, a_runs[1])
    assert second["started_at"] is None or str(second["started_at"]) > str(b_started)
    for run_id in a_runs:
        node.ctl("run", "cancel", run_id, check=False)


def test_exactly_once_through_ten_kill_9s(node: SimulatedNode) -> None:
    node.stop_daemon()
    # Slow the handoff down: small batches and a small backlog bound.
    reconfigure(node, {"dispatch": {"batch_size": 300, "backlog_bound": 400}})
    node.start_daemon()
    run_id = send(node, "K", numbers("70", 20_000))
    rng = random.Random(4)
    kills = 0
    handed_off = 0
    while kills < 10:
        # Kill only once this daemon has handed off something since it started, a random
        # moment later: every kill lands in the middle of a handoff however slow or busy
        # the machine is (a fixed pause could let a fast run finish before five kills).
        deadline = time.monotonic() + 60
        while (info := show(node, run_id))["status"] == "sending" and (
            info["inserted"] <= handed_off
        ):
            assert time.monotonic() < deadline, f"no progress after kill {kills}: {info}"
            time.sleep(0.05)
        if info["status"] != "sending":
            break
        handed_off = info["inserted"]
        time.sleep(rng.uniform(0.0, 0.3))
        node.stop_daemon(signal.SIGKILL)
        kills += 1
        node.start_daemon()
    assert kills >= 5, "the handoff finished before enough kills landed"
    info = finished(node, run_id, 240)
    rows = agent_rows(run_id)
    assert rows["total"] == rows["distinct"] == info["inserted"] == 20_000


def test_guards_and_ad_rules(node: SimulatedNode) -> None:
    import asyncio

    from daemon.schema import connect_pg
    from tests.webservice import queries as web

    config = __import__("config").load_config(node.config_path)

    async def opt_out() -> tuple[uuid.UUID, uuid.UUID]:
        """Two users of one company; the first opts 01088880002 out, as the web records it
        (per sending user, never per company)."""
        conn = await connect_pg(config)
        try:
            company = await web.create_company(conn, "G", f"G{uuid.uuid4().hex[:8]}")
            first = await web.create_user(conn, company, f"g1-{uuid.uuid4().hex[:8]}")
            second = await web.create_user(conn, company, f"g2-{uuid.uuid4().hex[:8]}")
            await web.register_unsubscribe(conn, company, first, "010-8888-0002", "manual")
            return first, second
        finally:
            await conn.close()

    first, second = asyncio.run(opt_out())
    ad = "(광고) 한줄로 세일 무료거부 080-123-4567"
    rows = [
        ("01088880001", ad),
        ("0212345678", ad),
        ("01088880001", ad),
        ("01088880002", ad),
        ("01088880003", ad + " 가" * 60),
        ("010-8888-0004", ad),
    ]
    set_node_clock(node, kst_today(12))  # daytime, in the real month (docs/clock.md)
    try:
        run_id = send(node, "G", rows, "--ad", "--user", str(first))
        info = finished(node, run_id, 60)
        # The same list sent by the other user: that opt-out is not theirs.
        theirs = finished(node, send(node, "G", rows, "--ad", "--user", str(second)), 60)
    finally:
        node.sim_ctl("clock", "reset")
    assert info["skipped"] == {"invalid_number": 1, "duplicate": 1, "opted_out": 1, "too_long": 1}
    assert info["inserted"] == 2 and info["target"] == 6
    assert theirs["skipped"] == {"invalid_number": 1, "duplicate": 1, "too_long": 1}
    assert theirs["inserted"] == 3
    bad = node.ctl(
        "send",
        "--company",
        "G",
        "--callback",
        "0212345678",
        "--phones",
        str(write_csv(node.dir / "p.txt", [])),
        "--message",
        "세일 안내",
        "--ad",
        check=False,
    )
    assert bad.returncode == 1 and "(광고)" in bad.stderr and bad.stdout == ""


def test_ad_run_before_eight_waits_until_eight_sharp(node: SimulatedNode) -> None:
    eight = kst_today(8).timestamp()
    offset = set_node_clock(node, kst_today(7, 59, 50))
    pg_offset = pg_to_node_offset(offset)
    try:
        text = "(광고) 아침 세일 무료거부 0801234567"
        run_id = send(node, "N", [(p, text) for p, _ in numbers("81", 50)], "--ad")
        wait_for(lambda: show(node, run_id)["status"] == "held", 8, "held")
        assert agent_rows(run_id).get("total", 0) == 0
        assert time.time() + offset < eight, "the night ended before it could be observed"
        info = finished(node, run_id, 60)
        assert info["inserted"] == 50
        granted = pg_fetch("SELECT group_since FROM hanjullo.runs WHERE id = $1::uuid", run_id)
        node_granted = granted[0][0].timestamp() + pg_offset
        # Not a moment before 08:00:00 by the node clock, and woken at 08:00, not much later.
        assert eight <= node_granted < eight + 5
    finally:
        node.sim_ctl("clock", "reset")


def test_ad_run_is_held_at_nine_sharp(paced_node: SimulatedNode) -> None:
    node = paced_node
    nine = kst_today(21).timestamp()
    offset = set_node_clock(node, kst_today(20, 59, 48))
    try:
        text = "(광고) 저녁 세일 무료거부 0801234567"
        run_id = send(node, "E", [(p, text) for p, _ in numbers("77", 10_000)], "--ad")
        seen: list[tuple[float, str]] = []  # (node time, status)
        while time.time() + offset < nine + 4:
            (status,) = pg_fetch("SELECT status FROM hanjullo.runs WHERE id = $1::uuid", run_id)[0]
            seen.append((time.time() + offset, status))
            time.sleep(0.1)
        before = {status for at, status in seen if at < nine}
        after = {status for at, status in seen if at >= nine + 2}
        assert before & {"sending", "draining"}, f"never sending before 21:00: {seen[:5]}"
        assert "held" not in before  # 20:59:59 is still the evening
        assert after == {"held"}
        pulled = pg_fetch(
            "SELECT count(*) FROM hanjullo.run_recipients WHERE run_id = $1::uuid AND is_pulled",
            run_id,
        )[0][0]
        assert pulled > 0  # what the agents had not taken by 21:00 waits for the morning
        assert agent_rows(run_id)["total"] + pulled == 10_000
        node.ctl("run", "cancel", run_id)
    finally:
        node.sim_ctl("clock", "reset")


def test_a_run_sent_at_midnight_on_the_last_day_is_counted_once(paced_node: SimulatedNode) -> None:
    node = paced_node
    # Last month's end: the node clock behind the wall clock's month, as on the 1st
    # before 09:00 KST, when UTC still reads the last day.
    start = kst_month_end(23, 59, 50, months=-1)
    set_node_clock(node, start)
    try:
        run_id = send(node, "M", numbers("66", 6000))
        info = finished(node, run_id, 120)
    finally:
        node.sim_ctl("clock", "reset")
    rows = agent_rows(run_id)
    this_month, next_month = month_of(start), month_of(start + timedelta(days=1))
    assert sum(n for t, n in rows.items() if t.endswith(f"_{this_month}")) > 0
    assert sum(n for t, n in rows.items() if t.endswith(f"_{next_month}")) > 0
    assert rows["total"] == rows["distinct"] == info["inserted"] == 6000
    assert info["success"] + info["fail"] == 6000 and info["pending"] == 0


def test_unregistered_sender_trips_the_breaker(node: SimulatedNode) -> None:
    node.stop_daemon()
    reconfigure(node, {"dispatch": {"backlog_bound": 100}})
    node.start_daemon()
    run_id = send(node, "X", numbers("90", 3000), callback="0299999999")
    info = wait_for(
        lambda: (i := show(node, run_id))["status"] == "paused" and i,
        60,
        "the breaker to pause the run",
    )
    assert "circuit breaker" in str(info["reason"]) and "9008" in str(info["reason"])
    assert int(info["inserted"]) < 3000  # the rest was never sent


def test_hung_agent_rows_move_to_the_others(node: SimulatedNode) -> None:
    node.stop_daemon()
    reconfigure(node, {"simulator": {"agents": {"rate_per_s": 200}}})
    node.sim_ctl("agent", "1", "ok")
    node.start_daemon()
    run_id = send(node, "H", numbers("95", 6000))
    wait_for(lambda: show(node, run_id)["line_group"] is not None, 10, "a group")
    group = str(show(node, run_id)["line_group"])
    first = GROUPS[group][0]
    node.sim_ctl("agent", str(first), "hang")
    hung_at = time.monotonic()
    try:

        def moved_off() -> bool:
            conn = mysql()
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        f"SELECT COUNT(*) FROM SMSQ_SEND_{first} WHERE rsv1 = '1' AND bill_id = %s",
                        (run_id,),
                    )
                    return cur.fetchone()[0] == 0  # type: ignore[index,no-any-return]
            finally:
                conn.close()

        wait_for(moved_off, 30, "the hung agent's rows to move")
        assert time.monotonic() - hung_at <= 30
    finally:
        node.sim_ctl("agent", str(first), "ok")
    info = finished(node, run_id, 120)
    rows = agent_rows(run_id)
    assert rows["total"] == rows["distinct"] == info["inserted"] == 6000
    # Back in service: the next run of that group reaches the recovered agent again.
    wait_for(
        lambda: next(a for a in node.status()["agents"] if a["number"] == first)["state"] == "ok",
        20,
        "the agent to be ok",
    )
    again = send(node, "H", numbers("96", 3000))
    info = finished(node, again, 120)
    assert any(t.startswith(f"SMSQ_SEND_{first}") for t in agent_rows(again))


@pytest.mark.outage
def test_database_and_redis_restarts_mid_run_still_exactly_once(node: SimulatedNode) -> None:
    from tests import services

    node.stop_daemon()
    reconfigure(
        node,
        {
            "simulator": {"agents": {"rate_per_s": 150}},
            "dispatch": {"backlog_bound": 500, "batch_size": 250},
        },
    )
    node.stop_sim()
    node.start_sim()
    node.start_daemon()
    run_id = send(node, "R", numbers("97", 12_000))
    for service in ("mariadb", "postgres", "redis"):
        wait_for(
            lambda: show(node, run_id)["status"] in ("sending", "draining"),
            60,
            "the run to be sending",
        )
        time.sleep(1.0)
        services.stop(service)
        time.sleep(2.0)
        services.start(service)
    info = finished(node, run_id, 300)
    rows = agent_rows(run_id)
    assert rows["total"] == rows["distinct"] == info["inserted"] == 12_000
    assert info["success"] + info["fail"] == 12_000


def test_pause_resume_and_cancel(node: SimulatedNode) -> None:
    node.stop_daemon()
    reconfigure(
        node, {"simulator": {"agents": {"rate_per_s": 100}}, "dispatch": {"backlog_bound": 500}}
    )
    node.stop_sim()
    node.start_sim()
    node.start_daemon()
    run_id = send(node, "P", numbers("98", 4000))
    wait_for(lambda: int(show(node, run_id)["inserted"]) > 0, 20, "rows inserted")
    paused = json.loads(node.ctl("run", "pause", run_id, "--json").stdout)
    assert paused["status"] == "paused" and paused["stopped"] > 0
    rows = agent_rows(run_id)
    # Nothing of the run waits any more; what had gone stays counted as inserted.
    assert rows.get("total", 0) == paused["already_gone"] == show(node, run_id)["inserted"]
    resumed = json.loads(node.ctl("run", "resume", run_id, "--json").stdout)
    assert resumed["resumed"] is True
    info = finished(node, run_id, 180)
    rows = agent_rows(run_id)
    assert rows["total"] == rows["distinct"] == info["inserted"] == 4000
    other = send(node, "P", numbers("99", 3000))
    wait_for(lambda: int(show(node, other)["inserted"]) > 0, 20, "rows inserted")
    cancelled = json.loads(node.ctl("run", "cancel", other, "--json").stdout)
    assert cancelled["status"] == "cancelled"
    assert agent_rows(other).get("total", 0) == cancelled["already_gone"]
