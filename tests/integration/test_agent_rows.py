"""A run's agent rows exactly as the web service writes a campaign's (issue 16), on the web's
own MySQL tables: app_etc1 the campaign, the run id in bill_id, and the web's result query
counting what the daemon counts; two runs of one campaign kept apart; log tables LIKE live.

The dispatcher runs on in-process PostgreSQL fakes (tests/unit/dispatch_fakes.py) and the
real MariaDB of the web fixture (`tests.webservice.create_web_mysql`: the live tables as
SCHEMA.md lists them, no secondary index); a few lines play the QTmsg agents.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from daemon.dispatcher import controls, results
from daemon.dispatcher import handoff as engine
from daemon.dispatcher.backends import MySQLAgentTables, MySQLWriterLock
from dispatch import agent_tables
from dispatch.store.runs import Run, RunStatus
from tests import webservice as web
from tests.unit.dispatch_fakes import DAY, Fakes, dispatcher, make_run
from tests.webservice import queries as q

GROUP = ["SMSQ_SEND_1", "SMSQ_SEND_2", "SMSQ_SEND_3"]  # bulk-1 of the simulated example
MONTH = date(DAY.year, DAY.month, 1)  # the node clock's month (the fakes' clock is DAY)
COMPANY = str(uuid.uuid4())


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Fakes, MySQLAgentTables]]:
    """A dispatcher writing into fresh web-fixture MySQL tables as the node's writer."""
    name = await web.create_web_mysql()
    f = dispatcher(tmp_path)
    section = f.ctx.config.mysql.model_copy(update={"database": name})
    f.ctx.runtime.config = f.ctx.config.model_copy(update={"mysql": section})
    lock, tables = MySQLWriterLock(f.ctx.runtime), MySQLAgentTables(f.ctx.runtime)
    await tables.open()  # the node's own ledger tables, beside the web's
    try:
        tables.fence = await lock.take()
        f.ctx.tables = tables
        yield f, tables
    finally:
        await lock.release()
        await tables.close()


@pytest.fixture
async def my(node: tuple[Fakes, MySQLAgentTables]) -> AsyncIterator[aiomysql.Connection]:
    """A session as the web's pool opens one (KST, autocommit) on the same database."""
    conn = await web.connect_web_mysql()
    try:
        yield conn
    finally:
        conn.close()


async def handed_off(f: Fakes, count: int, campaign: uuid.UUID | None, **fields: object) -> Run:
    """A run of `count` recipients on bulk-1, handed off in full by the real handoff."""
    run = make_run(
        COMPANY,
        status=RunStatus.SENDING,
        line_group="bulk-1",
        started_at=DAY,
        campaign_id=campaign,
        **fields,
    )
    run = f.book.add(run, count)
    await engine.run_handoff(f.ctx, f.ctx.registry.state(run.id, COMPANY))
    assert f.book.runs[run.id].status == RunStatus.DRAINING
    return f.book.runs[run.id]


async def rows_of(
    my: aiomysql.Connection, tables: list[str], where: str, *args: object
) -> list[dict[str, Any]]:
    union = " UNION ALL ".join(
        f"SELECT '{t}' AS tbl, seqno, dest_no, msg_type, title_str, file_name1, file_name2,"
        f" file_name3, status_code, rsv1, app_etc1, app_etc2, bill_id,"
        f" ABS(TIMESTAMPDIFF(SECOND, sendreq_time, NOW())) AS age_s FROM `{t}` WHERE {where}"
        for t in tables
    )
    return await web.fetch_rows(my, union, *(list(args) * len(tables)))


async def agent_reports(
    my: aiomysql.Connection, table: str, code: int, run: Run, *, limit: int, move: bool = False
) -> int:
    """A QTmsg agent reports `code` for up to `limit` of the run's waiting rows in `table`
    (UTC result time), and with `move` moves them to this month's log table (made the web's
    way, LIKE the live table)."""
    async with my.cursor() as cur:
        await cur.execute(
            f"UPDATE `{table}` SET status_code = %s, rsv1 = '4', mob_company = '11',"
            " mobsend_time = UTC_TIMESTAMP(), repmsg_recvtm = UTC_TIMESTAMP()"
            " WHERE bill_id = %s AND rsv1 = '1' ORDER BY seqno LIMIT %s",
            (code, str(run.id), limit),
        )
        done = int(cur.rowcount)
        if move:
            log = await web.create_log_table(my, table, MONTH)
            await cur.execute(
                f"INSERT INTO `{log}` SELECT * FROM `{table}` WHERE bill_id = %s AND rsv1 = '4'",
                (str(run.id),),
            )
            await cur.execute(f"UPDATE `{log}` SET rsv1 = '5' WHERE bill_id = %s", (str(run.id),))
            await cur.execute(
                f"DELETE FROM `{table}` WHERE bill_id = %s AND rsv1 = '4'", (str(run.id),)
            )
    return done


async def agent_picks(my: aiomysql.Connection, table: str, run: Run, limit: int) -> None:
    """The agent takes rows (rsv1 2): no longer waiting, no result yet (code still 100)."""
    async with my.cursor() as cur:
        await cur.execute(
            f"UPDATE `{table}` SET rsv1 = '2' WHERE bill_id = %s AND rsv1 = '1'"
            " ORDER BY seqno LIMIT %s",
            (str(run.id), limit),
        )


async def web_counts(my: aiomysql.Connection, campaign: uuid.UUID) -> q.Counts:
    """The web's result query over the group's live tables and this and last month's log
    tables that exist (sq:491-510, 367-400)."""
    logs = await q.existing_log_tables(my)
    months = [f"{MONTH:%Y%m}", f"{date(MONTH.year, MONTH.month - 1, 1):%Y%m}"]
    tables = GROUP + [f"{t}_{m}" for t in GROUP for m in months if f"{t}_{m}" in logs]
    return (await q.result_counts(my, tables, [campaign])).get(str(campaign), q.Counts())


async def synced(f: Fakes, run: Run) -> Run:
    await results.sync_run(f.ctx, f.book.runs[run.id])
    return f.book.runs[run.id]


# ---- (1) the rows, and the web's result query ------------------------------------------------
async def test_a_campaign_runs_rows_are_the_webs_and_the_webs_query_counts_them(
    node: tuple[Fakes, MySQLAgentTables], my: aiomysql.Connection
) -> None:
    f, _ = node
    campaign = uuid.uuid4()
    run = make_run(
        COMPANY,
        status=RunStatus.SENDING,
        line_group="bulk-1",
        started_at=DAY,
        campaign_id=campaign,
        message_type="LMS",
    )
    run = f.book.add(run, 30)
    recipients = f.book.recipients[run.id]
    recipients[0].subject = "가을 세일"  # one recipient with a subject, one with images
    recipients[1].attachments = ["/img/a.jpg", "/img/b.jpg"]
    await engine.run_handoff(f.ctx, f.ctx.registry.state(run.id, COMPANY))
    assert f.book.runs[run.id].status == RunStatus.DRAINING

    rows = await rows_of(my, GROUP, "app_etc1 = %s", str(campaign))
    assert len(rows) == 30 and {r["tbl"] for r in rows} == set(GROUP)
    assert {(r["app_etc1"], r["app_etc2"], r["bill_id"]) for r in rows} == {
        (str(campaign), COMPANY, str(run.id))
    }
    assert {(r["msg_type"], r["status_code"], r["rsv1"]) for r in rows} == {("L", 100, "1")}
    assert max(r["age_s"] for r in rows) < 60  # the server's NOW(), KST as the web reads it
    by_number = {r["dest_no"]: r for r in rows}
    files = ("title_str", "file_name1", "file_name2", "file_name3")
    assert [by_number[recipients[0].phone][c] for c in files] == ["가을 세일", "", "", ""]
    assert [by_number[recipients[1].phone][c] for c in files] == [
        "",
        "/img/a.jpg",
        "/img/b.jpg",
        "",
    ]
    plain = [r for n, r in by_number.items() if n not in (recipients[0].phone, recipients[1].phone)]
    assert {tuple(r[c] for c in files) for r in plain} == {("", "", "", "")}

    # The agents: SMSQ_SEND_1's rows succeed and move to the month's log table; SMSQ_SEND_2's
    # half succeed, half fail (unknown number); SMSQ_SEND_3's are picked up, no result yet.
    live = {t: sum(1 for r in rows if r["tbl"] == t) for t in GROUP}
    await agent_reports(my, "SMSQ_SEND_1", 1000, run, limit=live["SMSQ_SEND_1"], move=True)
    half = live["SMSQ_SEND_2"] // 2
    await agent_reports(my, "SMSQ_SEND_2", 1000, run, limit=half)
    await agent_reports(my, "SMSQ_SEND_2", 7, run, limit=live["SMSQ_SEND_2"] - half)
    await agent_picks(my, "SMSQ_SEND_3", run, live["SMSQ_SEND_3"])

    fresh = await synced(f, run)
    counted = await web_counts(my, campaign)
    assert counted.total == 30 and counted.pending == live["SMSQ_SEND_3"]
    assert (fresh.success_count, fresh.fail_count) == (counted.success, counted.fail)
    assert fresh.success_count == live["SMSQ_SEND_1"] + half
    assert fresh.sent_count - fresh.results == counted.pending  # in flight: pending to the web


# ---- (2) two runs of one campaign on one group -----------------------------------------------
async def test_two_runs_of_one_campaign_never_touch_each_others_rows(
    node: tuple[Fakes, MySQLAgentTables], my: aiomysql.Connection
) -> None:
    """Same campaign (app_etc1), same group, the same recipients: each run reads only its own
    results, and a pull-back, the recovery of an interrupted stop and a failover move of one
    leave the other's rows where they are."""
    f, tables = node
    campaign = uuid.uuid4()
    first = await handed_off(f, 60, campaign)
    second = await handed_off(f, 60, campaign)
    both = await rows_of(my, GROUP, "app_etc1 = %s", str(campaign))
    assert len(both) == 120
    assert sorted({r["bill_id"] for r in both}) == sorted([str(first.id), str(second.id)])

    def count(rows: list[dict[str, Any]], run: Run, **where: str) -> int:
        return sum(
            1
            for r in rows
            if r["bill_id"] == str(run.id) and all(r[k] == v for k, v in where.items())
        )

    # Results: the first run's SMSQ_SEND_1 rows succeed (moved to the log), the second's
    # SMSQ_SEND_2 rows fail. Each run counts only its own.
    in_1 = count(both, first, tbl="SMSQ_SEND_1")
    in_2 = count(both, second, tbl="SMSQ_SEND_2")
    await agent_reports(my, "SMSQ_SEND_1", 6, first, limit=in_1, move=True)
    await agent_reports(my, "SMSQ_SEND_2", 8, second, limit=in_2)
    one, two = await synced(f, first), await synced(f, second)
    assert (one.success_count, one.fail_count) == (in_1, 0)
    assert (two.success_count, two.fail_count) == (0, in_2)
    # The web counts the campaign, both runs together (its rows carry only the campaign).
    counted = await web_counts(my, campaign)
    assert (counted.success, counted.fail, counted.total) == (in_1, in_2, 120)

    # Failover moves the first run's waiting SMSQ_SEND_3 rows to another group's table: each
    # moved row keeps its bill_id, and the ledger names the table under the run's id.
    waiting_3 = {str(r.id): count(both, r, tbl="SMSQ_SEND_3", rsv1="1") for r in (first, second)}
    assert await tables.move_waiting("SMSQ_SEND_3", ["SMSQ_SEND_4"]) == sum(waiting_3.values())
    moved = await rows_of(my, ["SMSQ_SEND_4"], "app_etc1 = %s", str(campaign))
    assert {str(r.id): count(moved, r) for r in (first, second)} == waiting_3
    assert "SMSQ_SEND_4" in await tables.tables_written(str(first.id))

    # Pausing the first run pulls back its waiting rows only (wherever failover put them).
    everywhere = [*GROUP, "SMSQ_SEND_4"]
    now = await rows_of(my, everywhere, "app_etc1 = %s", str(campaign))
    second_waiting = count(now, second, rsv1="1")
    stopped = await controls.control(f.ctx, first.id, "pause")
    assert stopped["stopped"] == 60 - in_1
    after = await rows_of(my, everywhere, "app_etc1 = %s", str(campaign))
    assert count(after, first, rsv1="1") == 0
    assert count(after, second, rsv1="1") == second_waiting > 0

    # A stop of the second run whose pull-back never ran (status set, then a crash) is
    # finished at the next start: its rows go, the first run's (picked up, in the log) stay.
    await f.book.set_status(second.id, RunStatus.PAUSED, "pause by operator")
    assert await controls.pull_back_stopped(f.ctx, [f.book.runs[second.id]]) == second_waiting
    left = await rows_of(my, everywhere, "app_etc1 = %s", str(campaign))
    assert count(left, second, rsv1="1") == 0 and count(left, second) == in_2
    assert await web_counts(my, campaign) == q.Counts(in_1, in_2, 0, in_1 + in_2)

    # Resumed, each run re-inserts exactly what was pulled back of it, nothing of the other.
    for run in (first, second):
        await f.book.set_status(run.id, RunStatus.SENDING, None)
        await engine.run_handoff(f.ctx, f.ctx.registry.state(run.id, COMPANY))
    final = await rows_of(my, everywhere, "app_etc1 = %s", str(campaign))
    for run in (first, second):
        numbers = [r["dest_no"] for r in final if r["bill_id"] == str(run.id)]
        logged = in_1 if run is first else 0
        assert len(numbers) + logged == 60 and len(set(numbers)) == len(numbers)


async def test_a_run_without_a_campaign_keeps_its_id_in_app_etc1(
    node: tuple[Fakes, MySQLAgentTables], my: aiomysql.Connection
) -> None:
    f, _ = node
    run = await handed_off(f, 9, None)
    rows = await rows_of(my, GROUP, "bill_id = %s", str(run.id))
    assert len(rows) == 9 and {r["app_etc1"] for r in rows} == {str(run.id)}


# ---- (3) log tables LIKE the live table --------------------------------------------------------
def _definition(create: str, name: str) -> str:
    """SHOW CREATE TABLE's text without the table's name and its AUTO_INCREMENT counter."""
    text = create.replace(f"`{name}`", "`T`", 1)
    return re.sub(r" AUTO_INCREMENT=\d+", "", text)


async def _show_create(conn: aiomysql.Connection, table: str) -> str:
    async with conn.cursor() as cur:
        await cur.execute(f"SHOW CREATE TABLE `{table}`")
        row = await cur.fetchone()
    return str(row[1])


async def test_log_tables_are_like_the_live_table_on_the_webs_tables_and_the_nodes(
    node: tuple[Fakes, MySQLAgentTables], my: aiomysql.Connection
) -> None:
    """`ensure_tables` (db init, housekeeping, the simulated agents) makes every month's log
    table LIKE its live table: on the web's live tables (which it leaves as they are) and on
    a node of its own (live tables from the node's DDL)."""
    before = await _show_create(my, "SMSQ_SEND_1")
    created = await agent_tables.ensure_tables(my, ["SMSQ_SEND_1"], MONTH)
    assert created == [f"SMSQ_SEND_1_{m:%Y%m}" for m in agent_tables.months_ahead(MONTH)]
    assert await _show_create(my, "SMSQ_SEND_1") == before
    for name in created:
        assert _definition(await _show_create(my, name), name) == _definition(before, "SMSQ_SEND_1")

    # A live table of the node's own DDL (a standalone node's), and its log tables.
    own = "SMSQ_SEND_96"
    try:
        made = await agent_tables.ensure_tables(my, [own], MONTH)
        assert made == [own, *(f"{own}_{m:%Y%m}" for m in agent_tables.months_ahead(MONTH))]
        live = _definition(await _show_create(my, own), own)
        assert "AUTO_INCREMENT" in live  # seqno, in the log tables too: LIKE copies it
        for name in made[1:]:
            assert _definition(await _show_create(my, name), name) == live
    finally:
        async with my.cursor() as cur:
            for name in (own, *(f"{own}_{m:%Y%m}" for m in agent_tables.months_ahead(MONTH))):
                await cur.execute(f"DROP TABLE IF EXISTS `{name}`")
