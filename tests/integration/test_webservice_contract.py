"""The web service's contract on a running simulated node: what the web's own readers (its
result query, its campaigns and campaign_runs screens, its training sync) see of the node's
sends, its cancel as the web does it, and its line groups (issue 16, acceptance 2-4).

The web's side is `tests/webservice/queries.py`: its own queries, not ours."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.clock import KST
from config.example import instance_databases
from simulators.harness import SimulatedNode, current_instance, instance_database, wait_for
from tests import services
from tests.integration.helpers import mysql, pg_fetch, set_node_clock
from tests.integration.test_dispatch import fast_dispatch, show, started, write_csv
from tests.webservice import (
    connect_web_mysql,
    connect_web_postgres,
    create_web_mysql,
    create_web_postgres,
)
from tests.webservice import queries as web


@pytest.fixture(params=["db-init-made", "web-made"])
def node(request: pytest.FixtureRequest, node_dir: Path) -> Iterator[SimulatedNode]:
    """A running simulated node on either kind of database: one where `db init` made the
    web's tables (a standalone node), or one the web service made first (the fixture's
    PostgreSQL schema and production's eleven agent tables), where `db init` adds only the
    node's own."""
    services.fresh_databases(*instance_databases(current_instance()))
    if request.param == "web-made":
        asyncio.run(create_web_postgres(instance_database()))
        asyncio.run(create_web_mysql(instance_database()))
    yield from started(node_dir, fast_dispatch)


def send_json(node: SimulatedNode, *args: str) -> dict[str, str]:
    import json

    out: dict[str, str] = json.loads(node.ctl("send", *args, "--json").stdout)
    return out


def rows_of_run(run_id: str) -> list[dict[str, Any]]:
    """Every agent row the node wrote for a run (its bill_id), live and log tables alike."""
    import pymysql

    conn = mysql()
    try:
        with conn.cursor() as plain:
            plain.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_%'")
            tables = [r[0] for r in plain.fetchall()]
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            union = " UNION ALL ".join(
                f"SELECT '{t}' AS tbl, app_etc1, app_etc2, bill_id, title_str, file_name1,"
                f" file_name2, file_name3, msg_type FROM `{t}` WHERE bill_id = %s"
                for t in tables
            )
            cur.execute(union, [run_id] * len(tables))
            return list(cur.fetchall())
    finally:
        conn.close()


def _db(work: Any) -> Any:
    """`work(pg, my)` on the node's databases, as the web's sessions open them."""

    async def run() -> Any:
        pg = await connect_web_postgres(instance_database())
        my = await connect_web_mysql(instance_database())
        try:
            return await work(pg, my)
        finally:
            my.close()
            await pg.close()

    return asyncio.run(run())


def test_a_direct_send_reads_in_the_webs_tables_as_the_web_would_have_written_it(
    node: SimulatedNode,
) -> None:
    """Acceptance 2: 2,000 recipients, 20 of them skipped by the node's guards."""
    numbers = [f"0107{i:07d}" for i in range(1980)]
    rows = [(n, f"한줄로 안내 {i}") for i, n in enumerate(numbers)]
    rows += [("0212345678", "유선 번호")] * 10 + [(numbers[0], "중복")] * 10
    csv = write_csv(node.dir / "direct.csv", rows)

    async def company_with_a_spam_test(pg: Any, _my: Any) -> None:
        # The company, its callback, and its latest spam test of the campaign's text, which
        # the web's worker completed with KT blocking it (the training row's spam_blocked).
        company = await web.create_company(pg, "직접 회사", "direct-co")
        await web.add_callback_number(pg, company, "02-1234-5678")
        test = await pg.fetchval(
            """INSERT INTO spam_filter_tests (company_id, callback_number, message_content_sms,
                   message_hash, status, completed_at)
               VALUES ($1, '0212345678', $2, $3, 'completed', now()) RETURNING id""",
            company,
            "한줄로 안내 0",
            web.message_hash("한줄로  안내 0"),  # the web's hash ignores the whitespace
        )
        for carrier, result in (("SKT", "pass"), ("KT", "blocked"), ("LGU", "pass")):
            await pg.execute(
                """INSERT INTO spam_filter_test_results (test_id, carrier, message_type, result)
                   VALUES ($1, $2, 'SMS', $3)""",
                test,
                carrier,
                result,
            )

    _db(company_with_a_spam_test)
    sent = send_json(node, "--company", "direct-co", "--callback", "0212345678", "--csv", str(csv))
    run_id, campaign_id = sent["run_id"], sent["campaign_id"]
    assert run_id != campaign_id
    secret = node.status_config()["dispatch"]["training_secret"]

    async def log_training(pg: Any, _my: Any) -> str:
        # The web's logger inserts the send's row right after queueing it, keyed (for a
        # direct send) by the HMAC of the campaign id.
        company = await pg.fetchval(
            "SELECT company_id FROM campaigns WHERE id = $1::uuid", campaign_id
        )
        return await web.log_training_data(
            pg,
            secret,
            source_id=uuid.UUID(campaign_id),
            company_id=company,
            message_type="SMS",
            is_ad=False,
            final_message="한줄로 안내",
            final_source="manual",
        )

    ref = _db(log_training)
    assert ref == hmac.new(secret.encode(), campaign_id.encode(), hashlib.sha256).hexdigest()[:32]
    info = wait_for(
        lambda: (i := show(node, run_id))["status"] == "completed" and i, 120, "completed"
    )
    assert info == show(node, campaign_id)  # run show takes either id
    assert info["skipped"] == {"invalid_number": 10, "duplicate": 10}

    agent_rows = rows_of_run(run_id)
    assert len(agent_rows) == 1980
    assert {r["app_etc1"] for r in agent_rows} == {campaign_id}
    company = pg_fetch("SELECT company_id::text FROM campaigns WHERE id = $1::uuid", campaign_id)
    assert {r["app_etc2"] for r in agent_rows} == {company[0][0]}
    assert {
        (r["title_str"], r["file_name1"], r["file_name2"], r["file_name3"]) for r in agent_rows
    } == {("", "", "", "")}

    async def read(pg: Any, my: Any) -> tuple[Any, ...]:
        counts = await web.campaign_result(
            pg, my, uuid.UUID(campaign_id), datetime.now(UTC), web.WebEnv()
        )
        campaign = await pg.fetchrow("SELECT * FROM campaigns WHERE id = $1::uuid", campaign_id)
        run = await pg.fetchrow("SELECT * FROM campaign_runs WHERE id = $1::uuid", run_id)
        training = await pg.fetchrow("SELECT * FROM ai_training_logs WHERE source_ref = $1", ref)
        return counts, campaign, run, training

    counts, campaign, run, training = _db(read)
    assert counts.success + counts.fail == 1980 and counts.pending == 0
    assert counts.success == info["success"] and counts.fail == info["fail"]
    for row in (campaign, run):
        assert row["status"] == "completed"
        assert (row["sent_count"], row["success_count"], row["fail_count"]) == (
            1980,
            counts.success,
            counts.fail,
        )
        assert row["target_count"] == 2000 and row["sent_at"] is not None
    assert campaign["send_type"] == "direct" and campaign["campaign_name"].startswith("직접발송 ")
    assert run["campaign_id"] == campaign["id"] and run["run_number"] == 1
    # campaign_runs.sent_at is a `timestamp` holding the UTC wall clock; campaigns' is absolute.
    assert abs(run["sent_at"].replace(tzinfo=UTC) - campaign["sent_at"]) < timedelta(minutes=1)
    assert (training["sent_count"], training["success_count"], training["fail_count"]) == (
        counts.success + counts.fail,
        counts.success,
        counts.fail,
    )
    assert training["spam_blocked"] == 1 and training["metrics_updated_at"] is not None
    assert company[0][0] not in str(dict(training))  # no plaintext id there

    # The web's own result sync, run now as a browser would, finds nothing to change.
    async def web_sync(pg: Any, my: Any) -> Any:
        await web.sync_campaign_results(
            pg, my, campaign["company_id"], datetime.now(UTC), web.WebEnv(), secret
        )
        return await pg.fetchrow("SELECT * FROM campaigns WHERE id = $1::uuid", campaign_id)

    again = _db(web_sync)
    assert (again["status"], again["success_count"], again["fail_count"]) == (
        "completed",
        counts.success,
        counts.fail,
    )


@pytest.mark.parametrize("how", ["web", "web-then-kill-9", "run-cancel"])
def test_a_scheduled_campaign_cancelled_the_way_the_web_cancels_it_is_never_sent(
    node: SimulatedNode, how: str
) -> None:
    """Acceptance 3: the web's cancel (its statuses, its DELETE of waiting rows) of a campaign
    scheduled an hour ahead; then the node's clock passes that hour. `web-then-kill-9`: the
    daemon dies by kill -9 right after the cancel and starts again. `run-cancel`: the
    operator's `hanjulloctl run cancel` instead, which leaves the web's rows as the web's
    own cancel would."""
    at = datetime.now(KST) + timedelta(hours=1)
    csv = write_csv(node.dir / "later.csv", [(f"0108{i:07d}", "예약 안내") for i in range(200)])
    sent = send_json(
        node,
        "--company",
        "sched-co",
        "--callback",
        "0212345678",
        "--csv",
        str(csv),
        "--at",
        at.isoformat(),
    )
    run_id, campaign_id = sent["run_id"], sent["campaign_id"]
    assert pg_fetch("SELECT status FROM campaigns WHERE id = $1::uuid", campaign_id) == [
        ("scheduled",)
    ]

    async def cancel(pg: Any, my: Any) -> Any:
        company = await pg.fetchval(
            "SELECT company_id FROM campaigns WHERE id = $1::uuid", campaign_id
        )
        return await web.cancel_campaign(
            pg, my, uuid.UUID(campaign_id), company, datetime.now(UTC), web.WebEnv()
        )

    if how == "run-cancel":
        node.ctl("run", "cancel", run_id)
    else:
        _db(cancel)
    if how == "web-then-kill-9":
        node.stop_daemon(signal.SIGKILL)
    set_node_clock(node, at + timedelta(minutes=5))  # the campaign's time has come
    if how == "web-then-kill-9":
        node.start_daemon()
    try:
        info = wait_for(
            lambda: (i := show(node, run_id))["status"] == "cancelled" and i, 30, "cancelled"
        )
        if how != "run-cancel":
            assert info["reason"] == "cancelled by the web service"
        # Several passes later still nothing: no row was ever written for it.
        time.sleep(2)
        assert rows_of_run(run_id) == [] and info["inserted"] == 0
    finally:
        node.sim_ctl("clock", "reset")
    campaign = pg_fetch(
        "SELECT status, success_count, fail_count, cancelled_at IS NOT NULL FROM campaigns"
        " WHERE id = $1::uuid",
        campaign_id,
    )
    run = pg_fetch(
        "SELECT status, success_count, fail_count FROM campaign_runs WHERE id = $1::uuid", run_id
    )
    # As the web's cancel leaves them (campaign-lifecycle.ts:126-148): success 0, every
    # target failed, cancelled_at set.
    assert campaign == [("cancelled", 0, 200, True)] and run == [("cancelled", 0, 200)]


def test_a_campaign_the_web_reschedules_before_it_starts_moves_its_run(
    node: SimulatedNode,
) -> None:
    at = datetime.now(KST) + timedelta(hours=1)
    later = at + timedelta(hours=2)
    csv = write_csv(node.dir / "moved.csv", [(f"0105{i:07d}", "변경 안내") for i in range(30)])
    sent = send_json(
        node, "--company", "moved-co", "--callback", "0212345678", "--csv", str(csv),
        "--at", at.isoformat(),
    )  # fmt: skip
    run_id, campaign_id = sent["run_id"], sent["campaign_id"]
    # The web's reschedule of the campaign (routes/campaigns.ts:2123).
    pg_fetch(
        "UPDATE campaigns SET scheduled_at = $2, updated_at = NOW() WHERE id = $1::uuid",
        campaign_id,
        later,
    )
    wait_for(
        lambda: show(node, run_id)["scheduled_at"] == later.astimezone(UTC).isoformat(),
        15,
        "the run to follow the campaign's new time",
    )
    try:
        set_node_clock(node, at + timedelta(minutes=5))  # the old time has passed
        time.sleep(2)
        assert show(node, run_id)["status"] == "queued" and rows_of_run(run_id) == []
        set_node_clock(node, later + timedelta(minutes=5))
        info = wait_for(
            lambda: (i := show(node, run_id))["status"] == "completed" and i, 60, "completed"
        )
        assert info["inserted"] == 30
    finally:
        node.sim_ctl("clock", "reset")


def test_two_runs_of_one_campaign_each_carry_their_own_counts_and_the_campaign_their_sum(
    node: SimulatedNode,
) -> None:
    """An AI campaign sent twice (two campaign_runs rows, run_number 1 and 2): each run row
    carries its own run's counts, the campaign row their sum, which is what the web's result
    query counts by app_etc1 over both runs' rows."""
    from dispatch.runs import Recipient, RunSpec, create_run

    config = node.status_config()

    async def hand_over(pg: Any, _my: Any) -> tuple[uuid.UUID, list[uuid.UUID]]:
        company = await web.create_company(pg, "AI 회사", f"ai{uuid.uuid4().hex[:8]}")
        user = await web.create_user(pg, company, f"ai-{uuid.uuid4().hex[:6]}")
        await web.add_callback_number(pg, company, "0212345678")
        campaign = await web.create_ai_campaign(
            pg, company, user, "AI 캠페인", "SMS", "AI 안내", callback="0212345678"
        )
        runs = []
        for number, count in ((1, 30), (2, 20)):
            run_id = await pg.fetchval(
                """INSERT INTO campaign_runs (campaign_id, run_number, target_count, status)
                   VALUES ($1, $2, $3, 'sending') RETURNING id""",
                campaign,
                number,
                count,
            )
            spec = RunSpec(
                node_id=config["node"]["id"],
                company_id=str(company),
                user_id=str(user),
                callback="0212345678",
                campaign_id=campaign,
            )
            recipients = [Recipient(f"0106{number}{i:06d}", "AI 안내") for i in range(count)]
            await create_run(pg, spec, recipients, run_id=run_id)
            runs.append(run_id)
        return campaign, runs

    campaign, runs = _db(hand_over)
    for run_id in runs:
        wait_for(lambda r=run_id: show(node, str(r))["status"] == "completed", 60, "both completed")

    async def read(pg: Any, my: Any) -> tuple[Any, ...]:
        counts = await web.campaign_result(pg, my, campaign, datetime.now(UTC), web.WebEnv())
        rows = await pg.fetch(
            "SELECT run_number, sent_count, success_count, fail_count, status FROM campaign_runs"
            " WHERE campaign_id = $1 ORDER BY run_number",
            campaign,
        )
        total = await pg.fetchrow(
            "SELECT sent_count, success_count, fail_count, status FROM campaigns WHERE id = $1",
            campaign,
        )
        return counts, rows, total

    counts, rows, total = _db(read)
    infos = [show(node, str(r)) for r in runs]
    assert [tuple(r) for r in rows] == [
        (1, 30, infos[0]["success"], infos[0]["fail"], "completed"),
        (2, 20, infos[1]["success"], infos[1]["fail"], "completed"),
    ]
    assert tuple(total) == (50, counts.success, counts.fail, "completed")
    assert counts.success + counts.fail == 50 and counts.pending == 0


def test_line_groups_and_sender_numbers_are_the_webs(node: SimulatedNode) -> None:
    """Acceptance 4: the user's group before the company's, a group this node lacks makes the
    run wait, and a callback the company never registered is rejected before sending."""

    async def setup(pg: Any, _my: Any) -> dict[str, str]:
        company = await web.create_company(pg, "라인 회사", f"lg{uuid.uuid4().hex[:8]}")
        kim = await web.create_user(pg, company, f"kim-{uuid.uuid4().hex[:6]}")
        lee = await web.create_user(pg, company, f"lee-{uuid.uuid4().hex[:6]}")
        park = await web.create_user(pg, company, f"park-{uuid.uuid4().hex[:6]}")
        await web.add_callback_number(pg, company, "02-1234-5678")
        groups = {
            name: await pg.fetchval("SELECT id FROM sms_line_groups WHERE group_name = $1", name)
            for name in ("bulk-2", "bulk-3")
        }
        foreign = await web.create_line_group(
            pg, "다른 서버", "bulk", ["SMSQ_SEND_12", "SMSQ_SEND_13"]
        )
        await web.assign_company_group(pg, company, groups["bulk-2"])
        await web.assign_user_group(pg, kim, groups["bulk-3"])
        await web.assign_user_group(pg, park, foreign)
        return {"company": str(company), "kim": str(kim), "lee": str(lee), "park": str(park)}

    ids = _db(setup)
    csv = write_csv(node.dir / "g.csv", [(f"0109{i:07d}", "그룹 안내") for i in range(50)])

    def run_of(user: str, callback: str = "0212345678") -> str:
        out = send_json(
            node,
            "--company",
            ids["company"],
            "--user",
            ids[user],
            "--callback",
            callback,
            "--csv",
            str(csv),
        )
        return out["run_id"]

    kims, lees, parks = run_of("kim"), run_of("lee"), run_of("park")
    unregistered = run_of("lee", callback="0298765432")
    for run_id, group in ((kims, "bulk-3"), (lees, "bulk-2")):
        info = wait_for(
            lambda r=run_id: (i := show(node, r))["status"] == "completed" and i, 60, "completed"
        )
        assert info["line_group"] == group
    waiting = wait_for(
        lambda: (i := show(node, parks))["reason"] and i, 30, "the foreign group's reason"
    )
    assert waiting["status"] == "queued" and waiting["line_group"] is None
    assert "'다른 서버'" in str(waiting["reason"]) and "SMSQ_SEND_12" in str(waiting["reason"])
    rejected = wait_for(
        lambda: (i := show(node, unregistered))["status"] == "rejected" and i, 30, "rejected"
    )
    assert "0298765432" in str(rejected["reason"]) and rejected["inserted"] == 0
    assert rows_of_run(unregistered) == [] and rows_of_run(parks) == []
    failed = pg_fetch(
        "SELECT k.status FROM campaigns k JOIN hanjullo.runs r ON r.campaign_id = k.id"
        " WHERE r.id = $1::uuid",
        unregistered,
    )
    assert failed == [("failed",)]  # the web's word for a rejected run
