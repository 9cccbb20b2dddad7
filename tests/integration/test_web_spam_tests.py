"""Spam tests through the web service's tables on a running simulated node (issue 17): tests
created the way the web's queue creates them, read back the way the web's screens and its
overall rule read them (`tests/webservice/queries.py`: the web's own queries, not ours),
every row decided within the web's 60 s window."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from config.example import instance_databases
from simulators.harness import SimulatedNode, current_instance, instance_database, wait_for
from tests import services
from tests.config_edits import overrides
from tests.integration.test_spam_tests import fast_spam, start
from tests.webservice import connect_web_postgres, create_web_mysql, create_web_postgres
from tests.webservice import queries as web

T = TypeVar("T")
CALLBACK = "0212345678"
BLOCKED_WORD = "무료"
WINDOW_S = web.SPAM_TEST_TIMEOUT_S


def pg(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`work` on the node's PostgreSQL database, as the web's pool connects to it."""

    async def run() -> T:
        conn = await connect_web_postgres(instance_database())
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(params=["db-init-made", "web-made"])
def node(request: pytest.FixtureRequest, node_dir: Path) -> Iterator[SimulatedNode]:
    """A running node on either kind of database (`db init` made the web's tables, or the
    web service made them first)."""
    services.fresh_databases(*instance_databases(current_instance()))
    if request.param == "web-made":
        asyncio.run(create_web_postgres(instance_database()))
        asyncio.run(create_web_mysql(instance_database()))
    sim = start(node_dir)
    try:
        yield sim
    finally:
        sim.close()


def devices_registered(node: SimulatedNode, count: int = 3) -> None:
    """The node's phones are the web's active devices (the web creates their rows)."""
    wait_for(
        lambda: (
            len(pg(lambda c: c.fetch("SELECT 1 FROM spam_filter_devices WHERE is_active"))) >= count
        ),
        30,
        "the node's phones in spam_filter_devices",
    )


async def company_and_user(conn: asyncpg.Connection, code: str) -> tuple[uuid.UUID, uuid.UUID]:
    code = f"{code}-{uuid.uuid4().hex[:6]}"  # companies.company_code is unique, varchar(20)
    company = await web.create_company(conn, f"{code} 상사", code)
    user = await web.create_user(conn, company, f"{code}-user")
    return company, user


def enqueue(
    company: uuid.UUID,
    user: uuid.UUID,
    text: str,
    variant: str | None = None,
    batch: uuid.UUID | None = None,
) -> uuid.UUID:
    """`enqueueSpamTest` as the web's AI route calls it (a queued test, a row per device)."""
    return pg(
        lambda c: web.enqueue_spam_test(
            c, company, user, CALLBACK, "SMS", sms=text, variant_id=variant, batch_id=batch
        )
    )


def web_completed(test_id: uuid.UUID, timeout_s: float = WINDOW_S + 15) -> None:
    wait_for(
        lambda: (
            pg(lambda c: c.fetchval("SELECT status FROM spam_filter_tests WHERE id = $1", test_id))
            == "completed"
        ),
        timeout_s,
        f"the web's test {test_id} to be completed",
        interval_s=0.25,
    )


def web_rows(test_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = pg(
        lambda c: c.fetch(
            """SELECT carrier, message_type, received, received_at, result
               FROM spam_filter_test_results WHERE test_id = $1 ORDER BY carrier""",
            test_id,
        )
    )
    return {r["carrier"]: dict(r) for r in rows}


def decided_within_window(test_id: uuid.UUID) -> dict[str, float]:
    """Seconds from the web's created_at to each carrier's decision (the node's record),
    in PostgreSQL's own time."""
    rows = pg(
        lambda c: c.fetch(
            """SELECT r.carrier, extract(epoch FROM r.decided_at - t.created_at)::float8 AS s
               FROM hanjullo.spam_test_results r JOIN spam_filter_tests t ON t.id = r.test_id
               WHERE r.test_id = $1""",
            test_id,
        )
    )
    return {r["carrier"]: r["s"] for r in rows}


def the_web_reads(test_id: uuid.UUID, company: uuid.UUID) -> web.SpamTestView:
    """GET /tests/:id long after the window: the web's own 60 s rule finds nothing left."""

    async def read(conn: asyncpg.Connection) -> web.SpamTestView:
        created: datetime = await conn.fetchval(
            "SELECT created_at FROM spam_filter_tests WHERE id = $1", test_id
        )
        return await web.read_spam_test(conn, test_id, company, created + timedelta(seconds=90))

    return pg(read)


def show(node: SimulatedNode, test_id: uuid.UUID) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(node.ctl("spam-test", "show", str(test_id), "--json").stdout)
    return out


def test_a_test_the_webs_queue_creates_reads_blocked_on_kt_as_the_web_reads_it(
    node: SimulatedNode,
) -> None:
    node.sim_ctl("rules", "KT", "--block-keyword", BLOCKED_WORD)
    devices_registered(node)
    company, user = pg(lambda c: company_and_user(c, "web17"))
    test_id = enqueue(company, user, f"한줄로 {BLOCKED_WORD} 체험 안내")
    web_completed(test_id)
    rows = web_rows(test_id)
    assert {c: r["result"] for c, r in rows.items()} == {
        "SKT": "pass",
        "KT": "blocked",
        "LGU": "pass",
    }
    assert rows["SKT"]["received"] and rows["SKT"]["received_at"] is not None
    assert not rows["KT"]["received"] and rows["KT"]["received_at"] is None
    assert web.overall_result(r["result"] for r in rows.values()) == "blocked"
    assert max(decided_within_window(test_id).values()) < WINDOW_S
    view = the_web_reads(test_id, company)
    assert view.status == "completed" and view.completed_at is not None
    assert [r.result for r in view.results] == ["blocked", "pass", "pass"]  # KT, LGU, SKT
    screen = web.spam_screen(view.status, list(view.results))
    assert screen.grid[("KT", "SMS")].icon == "🚫" and screen.banner == "problems"
    # The node's own record of the same test, under the same id.
    report = show(node, test_id)
    assert report["web"] is True and report["overall"] == "blocked"

    # The web's manual route makes its test `active` at once (its own send and polling are
    # what the node replaces: docs/spam-tests.md); the node runs that one too.
    async def manual(conn: asyncpg.Connection) -> uuid.UUID:
        plan = await web.create_plan(conn, f"p-{uuid.uuid4().hex[:8]}", auto_spam_test_enabled=True)
        await conn.execute("UPDATE companies SET plan_id = $1 WHERE id = $2", plan, company)
        return await web.create_manual_spam_test(
            conn, None, company, user, CALLBACK, "SMS", sms="가을 정기 세일 안내"
        )

    manual_id = pg(manual)
    web_completed(manual_id)
    assert {c: r["result"] for c, r in web_rows(manual_id).items()} == dict.fromkeys(
        ("KT", "LGU", "SKT"), "pass"
    )
    assert all(r["received"] for r in web_rows(manual_id).values())
    assert max(decided_within_window(manual_id).values()) < WINDOW_S


@pytest.mark.parametrize("web_knows", [False, True], ids=["web-vocabulary", "web-device-error"])
def test_an_unplugged_modem_reads_timeout_in_the_web_and_device_error_in_the_node(
    node_dir: Path, web_knows: bool
) -> None:
    """`device_error` is written as `timeout` for a web service that does not know it;
    `spam_tests.web_device_error` writes it as it is."""
    node = start(node_dir, overrides(fast_spam, {"spam_tests": {"web_device_error": web_knows}}))
    try:
        devices_registered(node)
        company, user = pg(lambda c: company_and_user(c, "unplug17"))
        node.sim_ctl("modem", "LGU", "unplug")
        wait_for(
            lambda: {m["name"]: m["state"] for m in node.status()["modems"]}["LGU"] != "ready",
            20,
            "LGU not ready",
        )
        # The phone stays an active device: the web still creates its carrier's row.
        devices_registered(node)
        test_id = enqueue(company, user, "가을 신상품 안내")
        web_completed(test_id)
        rows = web_rows(test_id)
        lgu = "device_error" if web_knows else "timeout"
        assert rows["LGU"]["result"] == lgu and not rows["LGU"]["received"]
        assert rows["SKT"]["result"] == rows["KT"]["result"] == "pass"
        if not web_knows:  # the web's overall rule: never a pass
            assert web.overall_result(r["result"] for r in rows.values()) == "timeout"
        report = show(node, test_id)
        assert report["carriers"]["LGU"]["verdict"] == "device_error"
        assert "LGU" in report["carriers"]["LGU"]["detail"]
        text = node.ctl("spam-test", "show", str(test_id)).stdout
        assert "device_error" in text
    finally:
        node.close()


def test_nine_tests_created_at_once_are_all_decided_within_the_window_and_right(
    node_dir: Path,
) -> None:
    """Three companies × variants A/B/C, as bench/spamtest.py submits them, on one phone
    per carrier with a 15 s grace: queued one test per phone they could not all finish in
    60 s; sharing the phones they do, each receipt attributed to its own test."""
    node = start(node_dir, overrides(fast_spam, {"spam_tests": {"grace_initial_s": 15.0}}))
    try:
        node.sim_ctl("rules", "KT", "--block-keyword", BLOCKED_WORD)
        devices_registered(node)
        texts = {
            "A": "{co} 가을 신상품 {w}안내: 오늘만 특별 혜택",
            "B": "{co} 회원님께 {w}드리는 감사 쿠폰 소식",
            "C": "{co} 매장 리뉴얼 {w}오픈 행사 초대",
        }
        people = [pg(lambda c, n=n: company_and_user(c, f"batch17-{n}")) for n in range(3)]
        expected: dict[uuid.UUID, dict[str, str]] = {}

        async def create(conn: asyncpg.Connection) -> None:
            for n, (company, user) in enumerate(people):
                batch = uuid.uuid4()
                for i, (variant, text) in enumerate(texts.items()):
                    blocked = i == n  # company 1's A, company 2's B, company 3's C
                    body = text.format(co=f"회사{n}", w=f"{BLOCKED_WORD} " if blocked else "")
                    test_id = await web.enqueue_spam_test(
                        conn,
                        company,
                        user,
                        CALLBACK,
                        "SMS",
                        sms=body,
                        variant_id=variant,
                        batch_id=batch,
                    )
                    expected[test_id] = {
                        "SKT": "pass",
                        "KT": "blocked" if blocked else "pass",
                        "LGU": "pass",
                    }

        pg(create)
        for test_id in expected:
            web_completed(test_id)
        for test_id, truth in expected.items():
            assert {c: r["result"] for c, r in web_rows(test_id).items()} == truth
            assert max(decided_within_window(test_id).values()) < WINDOW_S, test_id
    finally:
        node.close()


def test_a_receipt_after_blocked_turns_the_webs_row_into_a_pass(node_dir: Path) -> None:
    node = start(node_dir, overrides(fast_spam, {"spam_tests": {"grace_initial_s": 2.0}}))
    try:
        node.sim_ctl("network", "KT", "--latency", "4.0", "4.2")
        devices_registered(node)
        company, user = pg(lambda c: company_and_user(c, "late17"))
        test_id = enqueue(company, user, "늦게 도착하는 안내")
        web_completed(test_id)
        assert web_rows(test_id)["KT"]["result"] == "blocked"  # a 2 s grace, a 4 s carrier
        wait_for(lambda: web_rows(test_id)["KT"]["received"], 20, "the late KT receipt")
        row = web_rows(test_id)["KT"]
        assert row["result"] == "pass" and row["received_at"] is not None
        kt = show(node, test_id)["carriers"]["KT"]
        assert kt["verdict"] == "pass" and kt["late"] is True and kt["late_from"] == "blocked"
        text = node.ctl("spam-test", "show", str(test_id)).stdout
        assert "LATE receipt (judged blocked before it came)" in text

        # Cancelled by the operator while KT waits: the web knows no cancelled test, and an
        # undecided row left NULL would read as a pass in its overall rule.
        cancelled = enqueue(company, user, "취소될 안내")
        wait_for(
            lambda: (
                pg(
                    lambda c: c.fetchval(
                        "SELECT status FROM hanjullo.spam_tests WHERE id = $1", cancelled
                    )
                )
                == "active"
            ),
            20,
            "the node to start the test",
            interval_s=0.1,
        )
        node.ctl("spam-test", "cancel", str(cancelled))
        web_completed(cancelled, 10)
        rows = web_rows(cancelled)
        assert all(r["result"] is not None for r in rows.values()), rows
        assert not rows["KT"]["received"] and rows["KT"]["result"] == "timeout"
        assert web.overall_result(r["result"] for r in rows.values()) == "timeout"
    finally:
        node.close()
