"""Honest verdicts (issue 13): no clock, store or storage doubt ever becomes `blocked`.

The engine's steps on fakes (`spamtest_fakes.py`), the clocks moved by the test, no sleep:
a receipt that predates a test is not its receipt; `blocked` needs the phone's storage read
after the grace ran out; the grace runs on the monotonic clock; memory follows PostgreSQL;
log-table months are the node clock's KST months.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.spamtest import engine, restore
from tests.unit.spamtest_fakes import TEST_TABLE, SpamFakes, restarted, spam_engine

TEXT = "테스트 메시지"
PHONES = {"SKT": "01090000001", "KT": "01090000002", "LGU": "01090000003"}


async def started(f: SpamFakes, text: str = TEXT) -> uuid.UUID:
    test_id = f.book.queue(text)
    await engine.tick(f.ctx)
    assert f.book.tests[test_id]["status"] == "active"
    return test_id


async def succeeded(f: SpamFakes, text: str = TEXT) -> uuid.UUID:
    """A started test whose every row the agent reported delivered (code 6)."""
    test_id = await started(f, text)
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    await engine.tick(f.ctx)
    assert all(r["status_code"] == 6 for r in f.book.rows_of(test_id).values())
    return test_id


# ---- 3. a receipt recorded before the test existed is not its receipt ------------------------
async def test_a_receipt_recorded_before_the_test_started_is_never_its_pass(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)  # grace_initial_s = 25
    first = await succeeded(f)
    f.wall.advance(26)
    await engine.tick(f.ctx)
    assert f.book.tests[first]["overall"] == "blocked"
    # The customer re-tests the same text; the first test's text arrives late, recorded
    # just before the second test started, but attributed only after it did (recorded
    # while the engine was busy or down).
    f.wall.advance(5)
    recorded_at = f.wall()
    f.wall.advance(0.5)
    second = await started(f)
    receipt = f.book.receive("KT", TEXT, at=recorded_at)
    await engine.tick(f.ctx)
    assert f.book.verdicts(second)["KT"] is None  # still waiting for its own text
    assert f.book.receipts[receipt]["match"] == "late"
    assert f.book.receipts[receipt]["test_id"] == first
    assert f.book.rows_of(first)["KT"]["late"] is True
    # Its own text, recorded after it started, passes it.
    own = f.book.receive("KT", TEXT)
    await engine.tick(f.ctx)
    assert f.book.verdicts(second)["KT"] == "pass"
    assert f.book.rows_of(second)["KT"]["receipt_id"] == own


# ---- 4. blocked needs the storage read after the grace ----------------------------------------
async def test_blocked_waits_for_a_storage_read_after_the_grace_and_forces_one(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)  # grace_initial_s = 25
    for phone in f.phones.values():
        phone.reads_continuously = False
        phone.last_read_at = f.monotonic()  # read completely when the test starts
    test_id = await succeeded(f)
    f.wall.advance(25.5)
    await engine.tick(f.ctx)
    # The grace has run out, but nothing shows the storage was read since: no verdict
    # yet, and a read is asked for.
    assert f.book.verdicts(test_id) == {"SKT": None, "KT": None, "LGU": None}
    assert all(p.read_requests >= 1 for p in f.phones.values())
    # The read happened (after the deadline); the next pass may call it blocked.
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "blocked", "KT": "blocked", "LGU": "blocked"}


async def test_a_phone_whose_storage_cannot_be_read_after_the_grace_is_a_device_error(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    kt = f.phones["KT"]
    kt.reads_continuously, kt.reads_work = False, False
    kt.last_read_at = f.monotonic()
    test_id = await succeeded(f)
    f.wall.advance(26)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "blocked", "KT": None, "LGU": "blocked"}
    assert kt.read_requests >= 1
    f.wall.advance(5)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id)["KT"] is None  # still asking
    f.wall.advance(10)
    await engine.tick(f.ctx)
    row = f.book.rows_of(test_id)["KT"]
    assert row["result"] == "device_error"
    assert "storage" in row["detail"]
    assert f.book.tests[test_id]["overall"] == "blocked"  # SKT and LGU were proven


# ---- 5. the grace runs on the monotonic clock ------------------------------------------------
async def test_a_forward_clock_step_does_not_end_the_grace(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)  # grace_initial_s = 25, timeout_s = 60
    test_id = await succeeded(f)
    unsent = f.book.queue("두번째", company_id="other")
    f.wall.advance(2)
    f.wall.step(3600)  # NTP steps the system clock an hour ahead
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": None, "KT": None, "LGU": None}
    f.book.receive("SKT", TEXT)
    f.wall.advance(22)  # 24 s since the success
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "pass", "KT": None, "LGU": None}
    f.wall.step(-7200)  # and back, two hours behind
    f.wall.advance(1.5)  # 25.5 s since the success
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "pass", "KT": "blocked", "LGU": "blocked"}
    assert f.book.tests[unsent]["status"] == "active"


async def test_a_clock_step_neither_times_out_nor_device_errors_a_test_waiting_for_its_agent(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)  # timeout_s = 60
    test_id = await started(f)
    f.wall.advance(1)
    f.wall.step(3600)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": None, "KT": None, "LGU": None}
    f.wall.advance(59.5)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "timeout", "KT": "timeout", "LGU": "timeout"}


# ---- 6. memory follows the database ----------------------------------------------------------
async def test_a_receipt_whose_commit_failed_is_attributed_again_not_unmatched(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    test_id = await succeeded(f)
    f.wall.advance(2)
    receipt = f.book.receive("KT", TEXT)
    f.book.fail_next.add("record_receipt")
    with pytest.raises(ConnectionResetError):
        await engine.tick(f.ctx)
    assert f.book.verdicts(test_id)["KT"] is None
    await engine.tick(f.ctx)
    assert f.book.receipts[receipt]["match"] == "test"
    assert f.book.verdicts(test_id)["KT"] == "pass"
    assert f.book.rows_of(test_id)["KT"]["receipt_id"] == receipt
    f.book.receive("SKT", TEXT)
    f.book.receive("LGU", TEXT)
    await engine.tick(f.ctx)
    assert f.book.tests[test_id]["overall"] == "pass"


async def test_an_agent_code_and_a_sent_row_whose_commit_failed_are_recorded_again(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    test_id = f.book.queue(TEXT)
    f.book.fail_next.add("record_sent")
    with pytest.raises(ConnectionResetError):
        await engine.tick(f.ctx)
    assert f.tables.inserted == 3
    await engine.tick(f.ctx)
    assert f.tables.inserted == 3  # not sent twice
    assert all(r["sms_msgkey"] is not None for r in f.book.rows_of(test_id).values())
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    f.book.fail_next.add("record_agent_codes")
    with pytest.raises(ConnectionResetError):
        await engine.tick(f.ctx)
    await engine.tick(f.ctx)
    rows = f.book.rows_of(test_id)
    assert all(r["status_code"] == 6 and r["success_seen_at"] is not None for r in rows.values())


async def test_a_verdict_whose_commit_failed_is_decided_again(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)
    test_id = await succeeded(f)
    f.wall.advance(26)
    f.book.fail_next.add("record_verdicts")
    with pytest.raises(ConnectionResetError):
        await engine.tick(f.ctx)
    assert f.book.tests[test_id]["status"] == "active"
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "blocked", "KT": "blocked", "LGU": "blocked"}
    assert f.book.tests[test_id]["overall"] == "blocked"


# ---- 7. log-table months are the node clock's KST months --------------------------------------
async def test_at_half_past_midnight_kst_on_the_first_the_new_months_log_table_is_read(
    tmp_path: Path,
) -> None:
    """00:30 KST on 1 December is 15:30 UTC on 30 November: the agent moved the finished
    row into SMSQ_SEND_10_202612; its code is read from there, and after a restart the
    row is found there, not sent again."""
    f = spam_engine(tmp_path)
    f.clock.moment = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)
    test_id = await started(f)
    log_table = f"{TEST_TABLE}_202612"
    f.tables.log_tables |= {log_table, f"{TEST_TABLE}_202611"}
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    f.tables.rows[log_table] = f.tables.rows.pop(TEST_TABLE)
    for row in f.tables.rows[log_table]:
        row["rsv1"] = "5"
    await engine.tick(f.ctx)
    assert all(r["status_code"] == 6 for r in f.book.rows_of(test_id).values())
    # A restart in the crash window: the seqnos never reached PostgreSQL.
    for row in f.book.rows_of(test_id).values():
        row["sms_msgkey"] = None
    f.clock.moment += timedelta(minutes=1)
    ctx = restarted(f)
    await restore.restore(ctx)
    inserted = f.tables.inserted
    await engine.tick(ctx)
    assert f.tables.inserted == inserted
    assert all(r["sms_msgkey"] is not None for r in f.book.rows_of(test_id).values())
