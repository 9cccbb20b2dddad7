"""The web service's schema fixture and its own queries, on real PostgreSQL and MariaDB.

No daemon here: the web service's code paths (tests/webservice/queries.py, re-expressed from
hoyun5295-ctrl/TargetupAI@e7c1db7a) write and read the fixture databases, and a few lines of
test code play the QTmsg agents (a result code on a row, a move to a monthly log table).
What these tests pin down is what the web would show for a given state of the tables, so
the daemon's own tests can build that state and ask the same questions.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import aiomysql
import asyncpg
import pytest

from config.clock import KST
from tests import webservice as web
from tests.webservice import queries as q

SECRET = "fixture-training-secret"  # this test's TRAINING_HMAC_SECRET
APP_TOKEN = "fixture-app-token"  # this test's SPAM_APP_TOKEN
ENV = q.WebEnv()
GROUP = ("SMSQ_SEND_1", "SMSQ_SEND_2", "SMSQ_SEND_3")


@pytest.fixture(scope="module")
def web_databases() -> str:
    """Fresh fixture databases (`<instance db>_web`) on both servers, once per module."""
    import asyncio

    name = asyncio.run(web.create_web_postgres())
    asyncio.run(web.create_web_mysql())
    return name


@pytest.fixture
async def pg(web_databases: str) -> AsyncIterator[asyncpg.Connection]:
    async with web.emptied_web_postgres(web_databases) as conn:
        yield conn


@pytest.fixture
async def my(web_databases: str) -> AsyncIterator[aiomysql.Connection]:
    conn = await web.connect_web_mysql(web_databases)
    await web.empty_agent_tables(conn)
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Tenant:
    company: uuid.UUID
    user: uuid.UUID
    group: uuid.UUID | None
    callback: str = "02-1234-5678"


async def tenant(
    pg: asyncpg.Connection,
    code: str,
    *,
    tables: tuple[str, ...] | None = GROUP,
    prepaid: bool = False,
    spam_plan: bool = True,
) -> Tenant:
    """A company set up the way the web's admin screens do it: plan, company, a user,
    a bulk line group assigned to the company, a default callback number."""
    plan = await q.create_plan(pg, f"PLAN-{code}", spam_filter_enabled=spam_plan)
    company = await q.create_company(
        pg,
        f"{code}상사",
        code,
        plan,
        billing_type="prepaid" if prepaid else "postpaid",
        balance=Decimal(1000),
        cost_per_sms=Decimal(10),
        cost_per_lms=Decimal(30),
    )
    user = await q.create_user(pg, company, f"{code}-user", opt_out_080_number="0801112222")
    group = None
    if tables is not None:
        group = await q.create_line_group(pg, f"대량발송({code})", "bulk", tables)
        await q.assign_company_group(pg, company, group)
    await q.add_callback_number(pg, company, "02-1234-5678", is_default=True)
    return Tenant(company, user, group)


def phones(n: int, start: int = 0) -> list[str]:
    return [f"0109000{i:04d}" for i in range(start, start + n)]


def kst_month(now: datetime, offset: int) -> date:
    local = now.astimezone(KST)
    index = local.year * 12 + local.month - 1 + offset
    return date(index // 12, index % 12 + 1, 1)


# ---- playing the agents -------------------------------------------------------------------
async def agent_rows(my: aiomysql.Connection, tag: uuid.UUID) -> list[dict[str, object]]:
    """Every row tagged `tag` in the live tables, with its table, oldest first."""
    union = " UNION ALL ".join(
        f"SELECT '{t}' AS tbl, seqno, dest_no, call_back, msg_contents, msg_type, title_str,"
        f" status_code, rsv1, app_etc1, app_etc2, bill_id, file_name1, file_name2, file_name3,"
        f" sendreq_time, TIMESTAMPDIFF(SECOND, sendreq_time, NOW()) AS age_s"
        f" FROM {t} WHERE app_etc1 = %s"
        for t in ENV.sms_tables
    )
    return await web.fetch_rows(my, f"{union} ORDER BY seqno", *([str(tag)] * len(ENV.sms_tables)))


async def agent_reports(
    my: aiomysql.Connection,
    row: dict[str, object],
    code: int | None,
    *,
    moved_to: date | None = None,
    carrier: str = "11",
) -> None:
    """What a QTmsg agent does with a row: a result code (mobsend_time in UTC), and once
    done the move to its monthly log table."""
    table = str(row["tbl"])
    async with my.cursor() as cur:
        await cur.execute(
            f"UPDATE {table} SET status_code = %s, mob_company = %s, rsv1 = '4',"
            " mobsend_time = UTC_TIMESTAMP() WHERE seqno = %s",
            (code, carrier, row["seqno"]),
        )
        if moved_to is not None:
            log = await web.create_log_table(my, table, moved_to)
            await cur.execute(
                f"INSERT INTO {log} SELECT * FROM {table} WHERE seqno = %s", (row["seqno"],)
            )
            await cur.execute(f"UPDATE {log} SET rsv1 = '5' WHERE seqno = %s", (row["seqno"],))
            await cur.execute(f"DELETE FROM {table} WHERE seqno = %s", (row["seqno"],))


# ---- the schema ---------------------------------------------------------------------------
async def test_schema_loads_fresh_and_carries_what_the_web_relies_on(
    pg: asyncpg.Connection,
) -> None:
    cat = await web.catalog(pg)
    assert {c[0] for c in cat.columns} == set(web.WEB_TABLES)
    types = {(c[0], c[1]): c[2] for c in cat.columns}
    # The time types the node must write: absolute on campaigns, UTC wall clock on runs.
    assert types[("campaigns", "sent_at")] == "timestamp with time zone"
    assert types[("campaign_runs", "sent_at")] == "timestamp without time zone"
    assert types[("campaign_runs", "created_at")] == "timestamp without time zone"
    assert types[("spam_filter_test_results", "sms_msgkey")] == "character varying(100)"
    assert types[("spam_filter_tests", "variant_id")] == "character varying(10)"
    # No unique key per (test, carrier, type): the web's screens show the first row only.
    result_indexes = [i[2] for i in cat.indexes if i[0] == "spam_filter_test_results"]
    assert not any("UNIQUE" in d and "carrier" in d for d in result_indexes)

    # The web's ON CONFLICT clauses find their unique keys.
    company = await q.create_company(pg, "상사", "C1")
    user = await q.create_user(pg, company, "u1")
    first = await q.register_device(pg, "android-1", "KT", "01011112222", "KT phone")
    await pg.execute("UPDATE spam_filter_devices SET is_active = false WHERE id = $1", first)
    again = await q.register_device(pg, "android-1", "KT", "01011113333", "KT phone")
    device = await pg.fetchrow("SELECT * FROM spam_filter_devices WHERE id = $1", again)
    assert again == first and device is not None
    assert (device["phone"], device["is_active"]) == ("01011113333", True)
    assert device["last_seen_at"] is not None
    assert await q.register_unsubscribe(pg, company, user, "010-5555-6666", "manual")
    assert not await q.register_unsubscribe(pg, company, user, "01055556666", "upload")
    for text in ("first", "second"):
        await q.log_training_data(
            pg,
            SECRET,
            source_id=company,
            company_id=company,
            message_type="SMS",
            is_ad=False,
            final_message=text,
            final_source="manual",
        )
    assert await pg.fetchval("SELECT array_agg(final_message) FROM ai_training_logs") == ["first"]

    # The same DDL in another empty database gives the same catalog, so a before/after
    # comparison sees only what a change did.
    other = f"{web.web_database_name()}_copy"
    await web.create_web_postgres(other)
    copy = await web.connect_web_postgres(other)
    try:
        assert await web.catalog(copy) == cat
        assert await copy.fetchval("SHOW timezone") == web.WEB_PG_TIMEZONE
    finally:
        await copy.close()
        await pg.execute(f'DROP DATABASE "{other}" WITH (FORCE)')


# ---- line groups --------------------------------------------------------------------------
async def test_line_group_is_the_users_then_the_companys_then_the_fallback(
    pg: asyncpg.Connection, my: aiomysql.Connection
) -> None:
    a = await tenant(pg, "LG")
    personal = await q.create_line_group(pg, "개인", "bulk", ("SMSQ_SEND_4", "SMSQ_SEND_5"))
    await q.assign_user_group(pg, a.user, personal)
    other_user = await q.create_user(pg, a.company, "LG-other")
    assert await q.company_sms_tables(pg, a.company, a.user, ENV) == ["SMSQ_SEND_4", "SMSQ_SEND_5"]
    assert await q.company_sms_tables(pg, a.company, other_user, ENV) == list(GROUP)
    assert await q.company_sms_tables(pg, a.company, None, ENV) == list(GROUP)
    # An inactive or non-bulk personal group is not used.
    await pg.execute("UPDATE sms_line_groups SET is_active = false WHERE id = $1", personal)
    assert await q.company_sms_tables(pg, a.company, a.user, ENV) == list(GROUP)
    await pg.execute(
        "UPDATE sms_line_groups SET is_active = true, group_type = 'test' WHERE id = $1", personal
    )
    assert await q.company_sms_tables(pg, a.company, a.user, ENV) == list(GROUP)
    # Names that are not agent tables are dropped (the validator's own rule); it trims
    # before matching and keeps the name as stored, surrounding whitespace and all.
    await pg.execute(
        "UPDATE sms_line_groups SET sms_tables = $2 WHERE id = $1",
        a.group,
        ["SMSQ_SEND_1; DROP TABLE x", "SMSQ_SEND_77", "SMSQ_SEND_3\n"],
    )
    assert await q.company_sms_tables(pg, a.company, None, ENV) == ["SMSQ_SEND_77", "SMSQ_SEND_3\n"]

    # A company without a group: all tables but 10 and 11, and every send is refused —
    # also for a user who has a personal group.
    b = await tenant(pg, "NOGROUP", tables=None)
    assert await q.company_sms_tables(pg, b.company, None, ENV) == [
        f"SMSQ_SEND_{n}" for n in range(1, 10)
    ]
    assert not await q.has_company_line_group(pg, b.company)
    solo = await q.create_line_group(pg, "개인2", "bulk", ("SMSQ_SEND_6",))
    await q.assign_user_group(pg, b.user, solo)
    assert await q.company_sms_tables(pg, b.company, b.user, ENV) == ["SMSQ_SEND_6"]
    with pytest.raises(q.WebRefusal) as refused:
        await q.direct_send(
            pg,
            my,
            b.company,
            b.user,
            "SMS",
            b.callback,
            [q.Recipient("01090000001", "hello")],
            datetime.now(UTC),
            ENV,
            q.RoundRobin(),
            SECRET,
        )
    assert refused.value.code == "LINE_GROUP_NOT_SET"
    # The admin screen refuses invalid names; a group that holds only invalid ones anyway
    # (written around it) still "has a group" but sends on the fallback.
    with pytest.raises(q.WebRefusal):
        await q.create_line_group(pg, "bad", "bulk", ("SMSQ_SEND_X",))
    c = await tenant(pg, "BADNAMES")
    await pg.execute(
        "UPDATE sms_line_groups SET sms_tables = $2 WHERE id = $1", c.group, ["SMSQ_SEND_X"]
    )
    assert await q.has_company_line_group(pg, c.company)
    assert await q.company_sms_tables(pg, c.company, None, ENV) == ENV.bulk_only_tables

    # The test line: the first active test group, else SMSQ_SEND_10.
    await pg.execute("DELETE FROM sms_line_groups WHERE group_type = 'test'")
    assert await q.sms_tables_for_tests(pg) == ["SMSQ_SEND_10"]
    await q.create_line_group(pg, "테스트", "test", ("SMSQ_SEND_9",))
    assert await q.sms_tables_for_tests(pg) == ["SMSQ_SEND_9"]


# ---- a direct send, its results and the web's sync ----------------------------------------
async def test_direct_send_rows_results_sync_summary_and_billing(
    pg: asyncpg.Connection, my: aiomysql.Connection
) -> None:
    now = datetime.now(UTC)
    a = await tenant(pg, "DIRECT", prepaid=True)
    await q.register_unsubscribe(pg, a.company, a.user, "010-9000-0010", "manual")
    other = await q.create_user(pg, a.company, "DIRECT-other")
    await q.register_unsubscribe(pg, a.company, other, "010-9000-0001", "manual")  # not ours
    numbers = phones(12)
    numbers[11] = "010-9000-0000"  # the first number again, typed with hyphens
    recipients = [q.Recipient(p, f"{p[-4:]}님 안녕하세요") for p in numbers]

    sent = await q.direct_send(
        pg, my, a.company, a.user, "SMS", a.callback, recipients, now, ENV, q.RoundRobin(), SECRET
    )
    assert (sent.sent, sent.failed, sent.duplicates, sent.unsubscribed) == (10, 0, 1, 1)

    rows = await agent_rows(my, sent.campaign_id)
    assert len(rows) == 10
    assert {r["dest_no"] for r in rows} == set(phones(10))
    assert Counter(str(r["tbl"]) for r in rows) == {
        "SMSQ_SEND_1": 4,
        "SMSQ_SEND_2": 3,
        "SMSQ_SEND_3": 3,
    }
    for r in rows:
        assert r["app_etc1"] == str(sent.campaign_id)
        assert r["app_etc2"] == str(a.company)
        assert (r["msg_type"], r["title_str"], r["status_code"], r["rsv1"]) == ("S", "", 100, "1")
        assert (r["file_name1"], r["file_name2"], r["file_name3"]) == ("", "", "")
        assert r["call_back"] == "0212345678" and r["bill_id"] is None
        assert 0 <= int(str(r["age_s"])) <= 60  # sendreq_time is the server's KST NOW()

    camp = await pg.fetchrow("SELECT * FROM campaigns WHERE id = $1", sent.campaign_id)
    assert camp is not None
    assert (camp["send_type"], camp["status"], camp["target_count"]) == ("direct", "sending", 10)
    assert (camp["sent_count"], camp["fail_count"], camp["success_count"]) == (10, 0, 0)
    assert camp["created_by"] == a.user and camp["user_id"] is None
    assert camp["sent_at"] is not None and abs(camp["sent_at"] - now) < timedelta(minutes=1)
    run = await pg.fetchrow("SELECT * FROM campaign_runs WHERE campaign_id = $1", sent.campaign_id)
    assert run is not None
    assert (run["run_number"], run["status"], run["sent_count"], run["target_count"]) == (
        1,
        "sending",
        10,
        10,
    )
    # A `timestamp` holding the UTC wall clock (the session is Etc/UTC).
    assert abs(run["sent_at"] - now.replace(tzinfo=None)) < timedelta(minutes=1)
    assert await pg.fetchval("SELECT balance FROM companies WHERE id = $1", a.company) == 900

    # The agents: 3 successes still in the live tables, 2 moved to this month's log, 1 to
    # last month's, 1 failure moved, 1 row without a code, 2 still waiting.
    this_month, last_month = kst_month(now, 0), kst_month(now, -1)
    outcomes: list[tuple[int | None, date | None]] = [
        (6, None),
        (6, None),
        (6, None),
        (6, this_month),
        (6, this_month),
        (6, last_month),
        (8, this_month),
        (None, None),
    ]
    for row, (code, month) in zip(rows, outcomes, strict=False):
        await agent_reports(my, row, code, moved_to=month)
    waiting = rows[len(outcomes) :]

    counts = await q.campaign_result(pg, my, sent.campaign_id, now, ENV)
    assert counts == q.Counts(success=6, fail=1, pending=2, total=10)
    # Two months on, by the Node clock, this month's log table is out of the web's window.
    later = await q.campaign_result(pg, my, sent.campaign_id, now + timedelta(days=62), ENV)
    assert later.success == 3 and later.fail == 0

    # The web's sync: the run (status sending) is counted by the campaign id and written
    # to the run and the campaign; the fail is refunded; the direct pass then skips it.
    assert await q.sync_campaign_results(pg, my, a.company, now, ENV, SECRET) == 1
    for table in ("campaigns", "campaign_runs"):
        key = "id" if table == "campaigns" else "campaign_id"
        state = await pg.fetchrow(
            f"SELECT status, success_count, fail_count FROM {table} WHERE {key} = $1",
            sent.campaign_id,
        )
        assert tuple(state or ()) == ("sending", 6, 1)
    assert await pg.fetchval("SELECT balance FROM companies WHERE id = $1", a.company) == 910
    # The training row was keyed by the campaign id; the run pass looks it up by the run id.
    training = await pg.fetchrow(
        "SELECT * FROM ai_training_logs WHERE source_ref = $1",
        q.source_ref(SECRET, sent.campaign_id),
    )
    assert training is not None and training["metrics_updated_at"] is None

    for row in waiting:
        await agent_reports(my, row, 6)
    assert await q.sync_campaign_results(pg, my, a.company, now, ENV, SECRET) == 1
    state = await pg.fetchrow("SELECT * FROM campaigns WHERE id = $1", sent.campaign_id)
    assert state is not None
    assert (state["status"], state["success_count"], state["fail_count"]) == ("completed", 8, 1)
    assert state["sent_at"] == camp["sent_at"]
    # The run was still `sending`: the same failure is refunded a second time (cap only).
    assert await pg.fetchval("SELECT balance FROM companies WHERE id = $1", a.company) == 920
    assert await q.sync_campaign_results(pg, my, a.company, now, ENV, SECRET) == 0

    today = now.astimezone(KST).date()
    summary = await q.results_summary(pg, a.company, today, today)
    assert summary == q.Summary(campaigns=1, target=10, sent=10, success=8, fail=1)
    charts = await q.result_charts(pg, my, sent.campaign_id, a.company, a.user, now, ENV)
    assert (charts.success, charts.fail) == (8, 1)
    assert charts.failures_by_code == {8: 1, None: 1}
    assert charts.successes_by_carrier == {"11": 8}
    # Billing counts MySQL rows by *run* id: nothing matches a send tagged with campaigns.id.
    day = timedelta(days=1)
    assert await q.billing_message_rows(pg, my, a.company, today - day, today + day, ENV) == 0


async def test_pending_rows_time_out_after_30_minutes(
    pg: asyncpg.Connection, my: aiomysql.Connection
) -> None:
    now = datetime.now(UTC)
    a = await tenant(pg, "TIMEOUT")
    recipients = [q.Recipient(p, "안내") for p in phones(3)]
    sent = await q.direct_send(
        pg, my, a.company, a.user, "SMS", a.callback, recipients, now, ENV, q.RoundRobin(), SECRET
    )
    # Only waiting rows: nothing is written before 30 minutes have passed …
    assert (
        await q.sync_campaign_results(pg, my, a.company, now + timedelta(minutes=29), ENV, SECRET)
        == 0
    )
    assert (
        await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", sent.campaign_id)
        == "sending"
    )
    # … and after them every waiting row is a failure and the campaign is completed: by the
    # runs pass, and again by the direct pass (success_count is still 0), which this time
    # finds the training row (keyed by the campaign id) and gives it the pre-timeout fails.
    later = now + timedelta(minutes=31)
    assert await q.sync_campaign_results(pg, my, a.company, later, ENV, SECRET) == 2
    metrics = await pg.fetchrow(
        "SELECT sent_count, success_count, fail_count FROM ai_training_logs WHERE source_ref = $1",
        q.source_ref(SECRET, sent.campaign_id),
    )
    assert tuple(metrics or ()) == (3, 0, 0)
    for table, key in (("campaigns", "id"), ("campaign_runs", "campaign_id")):
        state = await pg.fetchrow(
            f"SELECT status, success_count, fail_count FROM {table} WHERE {key} = $1",
            sent.campaign_id,
        )
        assert tuple(state or ()) == ("completed", 0, 3)
    # The rows themselves still wait in the agent tables.
    assert {r["status_code"] for r in await agent_rows(my, sent.campaign_id)} == {100}


# ---- a scheduled send and the web's cancel ------------------------------------------------
async def test_scheduled_send_and_cancel_as_the_web_does_it(
    pg: asyncpg.Connection, my: aiomysql.Connection
) -> None:
    now = datetime.now(UTC)
    a = await tenant(pg, "SCHED", prepaid=True)
    at = (now + timedelta(hours=2)).replace(microsecond=0)
    recipients = [q.Recipient(p, "예약 안내") for p in phones(6)]
    sent = await q.direct_send(
        pg,
        my,
        a.company,
        a.user,
        "SMS",
        a.callback,
        recipients,
        now,
        ENV,
        q.RoundRobin(),
        SECRET,
        scheduled_at=at,
    )
    rows = await agent_rows(my, sent.campaign_id)
    assert len(rows) == 6
    # The KST wall clock of scheduled_at, as a string the server stores as given.
    assert {r["sendreq_time"] for r in rows} == {at.astimezone(KST).replace(tzinfo=None)}
    camp = await pg.fetchrow("SELECT * FROM campaigns WHERE id = $1", sent.campaign_id)
    assert camp is not None
    assert (camp["status"], camp["scheduled_at"], camp["sent_at"]) == ("scheduled", at, None)
    assert (camp["target_count"], camp["sent_count"]) == (6, 0)
    assert await pg.fetchval("SELECT count(*) FROM campaign_runs") == 0

    with pytest.raises(q.WebRefusal) as refused:
        await q.cancel_campaign(
            pg, my, sent.campaign_id, a.company, at - timedelta(minutes=10), ENV
        )
    assert refused.value.code == "TOO_LATE"

    # One row already picked up by an agent, one already delivered: the cancel deletes the
    # waiting ones, marks the picked one 9999 and leaves the success.
    await agent_reports(my, rows[0], 104)
    await agent_reports(my, rows[1], 6)
    done = await q.cancel_campaign(
        pg,
        my,
        sent.campaign_id,
        a.company,
        now,
        ENV,
        reason="고객 요청",
        cancelled_by=a.user,
        cancelled_by_type="company_user",
    )
    assert (done.deleted, done.marked, done.refunded) == (4, 1, Decimal(40))
    left = await agent_rows(my, sent.campaign_id)
    assert sorted(int(str(r["status_code"])) for r in left) == [6, 9999]
    camp = await pg.fetchrow("SELECT * FROM campaigns WHERE id = $1", sent.campaign_id)
    assert camp is not None
    assert (camp["status"], camp["success_count"], camp["fail_count"]) == ("cancelled", 0, 6)
    assert (camp["cancelled_by"], camp["cancel_reason"]) == (a.user, "고객 요청")
    assert camp["cancelled_at"] is not None
    # 60 deducted, 40 refunded.
    assert await pg.fetchval("SELECT balance FROM companies WHERE id = $1", a.company) == 980
    with pytest.raises(q.WebRefusal) as again:
        await q.cancel_campaign(pg, my, sent.campaign_id, a.company, now, ENV)
    assert again.value.code == "NOT_CANCELLABLE"

    # The scheduled list: a past-due scheduled campaign without waiting rows becomes
    # `completed` (sent_at = its scheduled_at); a future one stays scheduled.
    past = await q.create_direct_campaign(
        pg, a.company, a.user, "SMS", "x", a.callback, 5, now, scheduled_at=now - timedelta(hours=1)
    )
    future = await q.create_direct_campaign(
        pg, a.company, a.user, "SMS", "y", a.callback, 5, now, scheduled_at=at
    )
    assert await q.list_scheduled(pg, my, a.company, a.user, now, ENV) == [future]
    state = await pg.fetchrow(
        "SELECT status, sent_at, scheduled_at FROM campaigns WHERE id = $1", past
    )
    assert state is not None
    assert state["status"] == "completed" and state["sent_at"] == state["scheduled_at"]


# ---- AI sends: runs of one campaign -------------------------------------------------------
async def test_ai_runs_of_one_campaign_carry_the_campaigns_totals(
    pg: asyncpg.Connection, my: aiomysql.Connection
) -> None:
    now = datetime.now(UTC)
    a = await tenant(pg, "AI")
    for i, number in enumerate(phones(6)):
        await pg.execute(
            """INSERT INTO customers (company_id, phone, name, is_active, sms_opt_in)
               VALUES ($1, $2, $3, true, $4)""",
            a.company,
            number,
            f"고객{i}",
            i != 4,  # one customer opted out of SMS
        )
    await q.register_unsubscribe(pg, a.company, a.user, phones(6)[5], "manual")
    targets = await q.ai_send_customers(pg, a.company, a.user)
    assert targets == phones(4)
    campaign = await q.create_ai_campaign(
        pg, a.company, a.user, "봄 세일", "SMS", "봄 세일 안내", callback=a.callback
    )
    assert await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == "draft"
    recipients = [q.Recipient(p, "봄 세일 안내") for p in targets]
    rr = q.RoundRobin()

    run1, inserted = await q.ai_send(
        pg, my, campaign, a.company, a.user, recipients, now, ENV, rr, SECRET
    )
    assert inserted == 4
    assert {r["app_etc1"] for r in await agent_rows(my, campaign)} == {str(campaign)}
    with pytest.raises(q.WebRefusal) as busy:
        await q.ai_send(pg, my, campaign, a.company, a.user, recipients, now, ENV, rr, SECRET)
    assert busy.value.code == "ALREADY_SENDING"
    for row in await agent_rows(my, campaign):
        await agent_reports(my, row, 6)
    await q.sync_campaign_results(pg, my, a.company, now, ENV, SECRET)
    training = await pg.fetchrow(
        "SELECT sent_count, success_count, fail_count, spam_blocked, metrics_updated_at"
        " FROM ai_training_logs WHERE source_ref = $1",
        q.source_ref(SECRET, run1),
    )
    assert training is not None and tuple(training)[:4] == (4, 4, 0, 0)
    assert training["metrics_updated_at"] is not None

    # A second run of the completed campaign: its rows carry the same campaigns.id, so the
    # sync gives the new run the campaign's totals over both runs.
    run2, _ = await q.ai_send(pg, my, campaign, a.company, a.user, recipients, now, ENV, rr, SECRET)
    fresh = [r for r in await agent_rows(my, campaign) if r["status_code"] == 100]
    for row, code in zip(fresh, (6, 6, 6, 8), strict=True):
        await agent_reports(my, row, code)
    await q.sync_campaign_results(pg, my, a.company, now, ENV, SECRET)
    runs = await pg.fetch(
        "SELECT run_number, status, sent_count, success_count, fail_count FROM campaign_runs"
        " WHERE campaign_id = $1 ORDER BY run_number",
        campaign,
    )
    assert [tuple(r) for r in runs] == [(1, "completed", 4, 4, 0), (2, "completed", 4, 7, 1)]
    camp = await pg.fetchrow("SELECT * FROM campaigns WHERE id = $1", campaign)
    assert camp is not None
    assert (camp["status"], camp["sent_count"], camp["success_count"], camp["fail_count"]) == (
        "completed",
        8,
        7,
        1,
    )
    training2 = await pg.fetchval(
        "SELECT sent_count FROM ai_training_logs WHERE source_ref = $1", q.source_ref(SECRET, run2)
    )
    assert training2 == 8


# ---- the training logger ------------------------------------------------------------------
async def test_training_rows_are_keyed_by_hmac_and_hold_no_plaintext_identity(
    pg: asyncpg.Connection,
) -> None:
    a = await tenant(pg, "TRAIN")
    run_id = uuid.uuid4()
    text = "한줄상사 봄 세일! 10,000원 할인 010-1234-5678 https://ex.kr/a?b=1 문의 me@ex.kr"
    ref = await q.log_training_data(
        pg,
        SECRET,
        source_id=run_id,
        company_id=a.company,
        message_type="SMS",
        is_ad=True,
        final_message=text,
        final_source="edited",
        company_name="한줄상사",
        user_prompt="한줄상사 고객 010 1234 5678 에게",
    )
    expected = hmac.new(SECRET.encode(), str(run_id).encode(), hashlib.sha256).hexdigest()[:32]
    assert ref == expected and len(ref) == 32
    row = await pg.fetchrow("SELECT * FROM ai_training_logs WHERE source_ref = $1", ref)
    assert row is not None
    assert row["tenant_ref"] == q.source_ref(SECRET, a.company)
    # The amount pattern takes the space before the number with it (`₩?\s?\d…원`).
    assert row["final_message"] == "{brand} 봄 세일!{amount} 할인 {phone} {url} 문의 {email}"
    assert row["user_prompt"] == "{brand} 고객 {phone} 에게"
    assert (row["prompt_version"], row["redaction_version"]) == ("v1", "v1_regex")
    everything = " ".join(str(v) for v in row.values())
    for secret_value in (str(a.company), "01012345678", "1234-5678", "한줄상사", str(run_id)):
        assert secret_value not in everything
    assert await q.update_training_metrics(pg, q.source_ref(SECRET, uuid.uuid4()), 1, 1, 0) == 0
    assert await q.update_training_metrics(pg, ref, 10, 9, 1, spam_blocked=1) == 1


# ---- spam tests ---------------------------------------------------------------------------
async def devices(pg: asyncpg.Connection) -> dict[str, str]:
    """Three active test phones and one deactivated; carrier → phone of the active ones."""
    found = {}
    for n, carrier in enumerate(("SKT", "KT", "LGU")):
        phone = f"0107000000{n}"
        await q.register_device(pg, f"android-{carrier}", carrier, phone, f"{carrier} phone")
        found[carrier] = phone
    spare = await q.register_device(pg, "android-KT-2", "KT", "01070009999", "spare")
    await pg.execute("UPDATE spam_filter_devices SET is_active = false WHERE id = $1", spare)
    return found


async def decide(pg: asyncpg.Connection, test_id: uuid.UUID, verdicts: dict[str, str]) -> None:
    """Write verdicts as the node must (a pass is a receipt), then complete the test."""
    for carrier, verdict in verdicts.items():
        await pg.execute(
            """UPDATE spam_filter_test_results SET result = $3, received = $4,
                   received_at = CASE WHEN $4 THEN NOW() END
               WHERE test_id = $1 AND carrier = $2""",
            test_id,
            carrier,
            verdict,
            verdict == "pass",
        )
    await pg.execute(
        "UPDATE spam_filter_tests SET status = 'completed', completed_at = NOW() WHERE id = $1",
        test_id,
    )


async def results_of(pg: asyncpg.Connection, test_id: uuid.UUID) -> list[q.ResultRow]:
    rows = await pg.fetch(
        """SELECT carrier, message_type, received, received_at, result
           FROM spam_filter_test_results WHERE test_id = $1 ORDER BY carrier, message_type""",
        test_id,
    )
    return [q.ResultRow(*r) for r in rows]


async def receipt(
    pg: asyncpg.Connection, device: str, sender: str, text: str, token: str = APP_TOKEN
) -> q.Receipt:
    """The Android app reporting an SMS it received (the web's receipt route)."""
    return await q.report_receipt(
        pg,
        token=token,
        expected_token=APP_TOKEN,
        device_id=device,
        sender=sender,
        content=text,
        message_type="SMS",
    )


async def test_queued_spam_tests_and_the_webs_reading_of_verdicts(pg: asyncpg.Connection) -> None:
    a = await tenant(pg, "SPAMQ")
    phone_of = await devices(pg)
    text = "(광고) 봄 세일\n무료거부 0801112222"
    test_id = await q.enqueue_spam_test(
        pg, a.company, a.user, a.callback, "SMS", sms=text, variant_id="A", batch_id=uuid.uuid4()
    )
    test = await pg.fetchrow("SELECT * FROM spam_filter_tests WHERE id = $1", test_id)
    assert test is not None
    assert (test["status"], test["source"], test["variant_id"]) == ("queued", "auto_ai", "A")
    stripped = "".join(text.split())
    assert test["message_hash"] == hashlib.sha256(stripped.encode()).hexdigest()[:16]
    assert test["spam_check_number"] == "0801112222"
    rows = await pg.fetch("SELECT * FROM spam_filter_test_results WHERE test_id = $1", test_id)
    assert sorted((r["carrier"], r["message_type"], r["phone"]) for r in rows) == sorted(
        (c, "SMS", p) for c, p in phone_of.items()
    )
    assert all(r["received"] is False and r["result"] is None for r in rows)
    lms = await q.enqueue_spam_test(pg, a.company, a.user, a.callback, "LMS", lms="긴 안내문")
    assert {r.message_type for r in await results_of(pg, lms)} == {"LMS"}

    # KT blocked: the web's overall, its batch view, the modal and the history agree.
    await decide(pg, test_id, {"SKT": "pass", "KT": "blocked", "LGU": "pass"})
    results = await results_of(pg, test_id)
    assert q.overall_result(r.result for r in results) == "blocked"
    assert q.batch_overall("completed", (r.result for r in results)) == "blocked"
    screen = q.spam_screen("completed", results)
    assert [screen.grid[(c, "SMS")].icon for c in ("SKT", "KT", "LGU")] == ["✅", "🚫", "✅"]
    assert screen.banner == "problems" and screen.blocked == 1
    history = {h.test_id: h for h in await q.spam_history(pg, a.company)}
    assert (history[test_id].all_normal, history[test_id].blocked_label) == (False, 1)

    # A verdict the web does not know reads as a pass, under a green banner, billed.
    unknown = await q.enqueue_spam_test(pg, a.company, a.user, a.callback, "SMS", sms="두번째")
    await decide(pg, unknown, {"SKT": "pass", "KT": "pass", "LGU": "device_error"})
    results = await results_of(pg, unknown)
    assert q.overall_result(r.result for r in results) == "pass"
    assert q.batch_overall("completed", (r.result for r in results)) == "pending"
    screen = q.spam_screen("completed", results)
    assert screen.grid[("LGU", "SMS")] == q.Cell("❓", "판정 중")
    assert screen.banner == "all_received"
    history = {h.test_id: h for h in await q.spam_history(pg, a.company)}
    assert (history[unknown].all_normal, history[unknown].blocked_label) == (False, 1)
    today = datetime.now(KST).date()
    # Billed: every row with a result, device_error included (the LMS test is undecided).
    assert await q.billing_spam_units(pg, a.company, today, today) == (9, 6)

    # A timeout is a failure to the web, never a pass.
    slow = await q.enqueue_spam_test(pg, a.company, a.user, a.callback, "SMS", sms="세번째")
    await decide(pg, slow, {"SKT": "pass", "KT": "pass", "LGU": "timeout"})
    results = await results_of(pg, slow)
    assert q.overall_result(r.result for r in results) == "timeout"
    assert q.spam_screen("completed", results).banner == "problems"


async def test_manual_spam_test_the_60_second_rule_and_late_receipts(
    pg: asyncpg.Connection, my: aiomysql.Connection
) -> None:
    locked = await tenant(pg, "NOPLAN", spam_plan=False)
    phone_of = await devices(pg)
    with pytest.raises(q.WebRefusal) as refused:
        await q.create_manual_spam_test(
            pg, my, locked.company, locked.user, locked.callback, "SMS", sms="x"
        )
    assert refused.value.code == "PLAN_FEATURE_LOCKED"

    a = await tenant(pg, "SPAMM", prepaid=True)
    test_id = await q.create_manual_spam_test(
        pg, my, a.company, a.user, a.callback, "SMS", sms="봄 안내"
    )
    test = await pg.fetchrow("SELECT * FROM spam_filter_tests WHERE id = $1", test_id)
    assert test is not None and (test["status"], test["source"]) == ("active", "manual")
    # Three phones × SMS deducted (this plan does not include automatic tests).
    assert await pg.fetchval("SELECT balance FROM companies WHERE id = $1", a.company) == 970
    # The test line: SMSQ_SEND_10 (no test group), one row per phone tagged with the test.
    sent = await web.fetch_rows(
        my,
        "SELECT dest_no, msg_type, status_code, app_etc2 FROM SMSQ_SEND_10 WHERE app_etc1 = %s",
        str(test_id),
    )
    assert sorted(r["dest_no"] for r in sent) == sorted(phone_of.values())
    assert {(r["msg_type"], r["status_code"], r["app_etc2"]) for r in sent} == {("S", 100, None)}

    with pytest.raises(q.WebRefusal) as mine:
        await q.create_manual_spam_test(pg, my, a.company, a.user, a.callback, "SMS", sms="다른")
    assert mine.value.code == "TEST_IN_PROGRESS"
    colleague = await q.create_user(pg, a.company, "SPAMM-2")
    with pytest.raises(q.WebRefusal) as twin:
        await q.create_manual_spam_test(
            pg, my, a.company, colleague, "0212345678", "SMS", sms="봄  안내"
        )
    assert twin.value.code == "TWIN_IN_PROGRESS"

    created = test["created_at"]
    first = await receipt(pg, "android-SKT", "02-1234-5678", "봄 안내")
    assert first == q.Receipt(True, test_id, True)
    # KT judged blocked while the test is still active; then its receipt arrives: the web's
    # receipt route turns the verdict into a pass.
    await pg.execute(
        "UPDATE spam_filter_test_results SET result = 'blocked'"
        " WHERE test_id = $1 AND carrier = 'KT'",
        test_id,
    )
    late = await receipt(pg, "android-KT", "0212345678", "봄 안내")
    assert late.updated
    kt = next(r for r in await results_of(pg, test_id) if r.carrier == "KT")
    assert (kt.received, kt.result) == (True, "pass") and kt.received_at is not None

    view = await q.read_spam_test(pg, test_id, a.company, created + timedelta(seconds=59))
    assert view.status == "active"
    assert {r.carrier: r.result for r in view.results} == {"SKT": "pass", "KT": "pass", "LGU": None}
    # Past 60 s from created_at, the web's own read decides every undecided row: timeout.
    view = await q.read_spam_test(pg, test_id, a.company, created + timedelta(seconds=61))
    assert view.status == "completed"
    after = {r.carrier: r.result for r in await results_of(pg, test_id)}
    assert after == {"SKT": "pass", "KT": "pass", "LGU": "timeout"}
    assert q.overall_result(after.values()) == "timeout"
    # Once completed, a receipt matches nothing: the route looks at active tests only.
    ignored = await receipt(pg, "android-LGU", "0212345678", "봄 안내")
    assert ignored == q.Receipt(False)
    with pytest.raises(q.WebRefusal) as unauthorised:
        await receipt(pg, "android-KT", "0212345678", "", token="wrong")
    assert unauthorised.value.code == "UNAUTHORIZED"


# ---- callbacks and per-user unsubscribes --------------------------------------------------
async def test_callback_validity_and_unsubscribes_per_sending_user(
    pg: asyncpg.Connection, my: aiomysql.Connection
) -> None:
    now = datetime.now(UTC)
    a = await tenant(pg, "CB")
    await q.add_sender_number(pg, a.company, "010-2222-3333")
    await q.add_sender_number(pg, a.company, "010-4444-5555", is_active=False)
    assigned = await q.add_callback_number(
        pg, a.company, "031-777-8888", assignment_scope="assigned"
    )
    colleague = await q.create_user(pg, a.company, "CB-2")
    await q.assign_callback(pg, assigned, a.user)
    other = await tenant(pg, "CB-OTHER")
    await q.add_sender_number(pg, other.company, "010-6666-7777")

    for good in ("0212345678", "02-1234-5678", "010-2222-3333", "0317778888"):
        assert await q.check_callback(pg, a.company, good) == q.normalize_phone(good)
    for bad, code in (
        ("01044445555", "INVALID_SENDER_NUMBER"),  # inactive sender number
        ("01066667777", "INVALID_SENDER_NUMBER"),  # another company's
        ("1234567", "INVALID_CALLBACK_FORMAT"),
    ):
        with pytest.raises(q.WebRefusal) as refused:
            await q.check_callback(pg, a.company, bad)
        assert refused.value.code == code
    # Per-recipient callbacks also honour the assignment.
    assert "0317778888" in await q.registered_callbacks(pg, a.company, a.user)
    assert "0317778888" not in await q.registered_callbacks(pg, a.company, colleague)
    assert "0317778888" in await q.registered_callbacks(pg, a.company, None)

    # An opt-out registered by one user skips that number in that user's sends only.
    await q.register_unsubscribe(pg, a.company, a.user, "010-9000-0000", "080_ars")
    recipients = [q.Recipient(p, "안내") for p in phones(2)]
    rr = q.RoundRobin()
    mine = await q.direct_send(
        pg, my, a.company, a.user, "SMS", a.callback, recipients, now, ENV, rr, SECRET
    )
    theirs = await q.direct_send(
        pg, my, a.company, colleague, "SMS", a.callback, recipients, now, ENV, rr, SECRET
    )
    assert (mine.sent, mine.unsubscribed, theirs.sent, theirs.unsubscribed) == (1, 1, 2, 0)
    assert {r["dest_no"] for r in await agent_rows(my, mine.campaign_id)} == {"01090000001"}
    with pytest.raises(q.WebRefusal) as unknown:
        await q.direct_send(
            pg, my, a.company, a.user, "SMS", "01044445555", recipients, now, ENV, rr, SECRET
        )
    assert unknown.value.code == "INVALID_SENDER_NUMBER"
