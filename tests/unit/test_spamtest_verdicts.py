"""The spam-test engine's verdict timing and receipt attribution, in process: the engine's
steps on fakes (`spamtest_fakes.py`), the clocks moved by the test, no sleep."""

from __future__ import annotations

import uuid
from pathlib import Path

from daemon.spamtest import engine, restore
from dispatch.runs import source_ref
from tests.unit.spamtest_fakes import SpamFakes, restarted, spam_engine

TEXT = "테스트 메시지"
PHONES = {"SKT": "01090000001", "KT": "01090000002", "LGU": "01090000003"}


async def started(f: SpamFakes, **fields: object) -> uuid.UUID:
    """A queued test, started and sent by one pass."""
    test_id = f.book.queue(TEXT, **fields)
    await engine.tick(f.ctx)
    assert f.book.tests[test_id]["status"] == "active"
    assert len(f.tables.of(test_id)) == 3
    return test_id


async def test_a_receipt_passes_at_once_and_silence_is_blocked_only_after_the_grace(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)  # grace_initial_s = 25
    test_id = await started(f)
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    await engine.tick(f.ctx)
    seen = f.book.rows_of(test_id)["KT"]["success_seen_at"]
    assert seen == f.wall()
    f.wall.advance(3)
    f.book.receive("SKT", TEXT)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "pass", "KT": None, "LGU": None}
    assert f.book.rows_of(test_id)["SKT"]["receipt_delay_s"] == 3.0
    assert "SKT" not in f.ctx.busy and f.ctx.busy["KT"] == {test_id}
    f.wall.advance(21.9)  # 24.9 s after the success: still within the grace
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "pass", "KT": None, "LGU": None}
    f.wall.advance(0.2)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "pass", "KT": "blocked", "LGU": "blocked"}
    assert f.book.tests[test_id]["status"] == "completed"
    assert f.book.tests[test_id]["overall"] == "blocked"
    assert f.ctx.busy == {} and f.ctx.active == {}
    assert f.ctx.recent[0]["overall"] == "blocked"


async def test_a_failure_code_fails_silence_times_out_and_an_unwatched_phone_is_no_evidence(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)  # timeout_s = 60
    test_id = await started(f)
    sent_mono = f.monotonic()  # the rows were inserted at this monotonic time
    f.tables.report(test_id, PHONES["SKT"], 9008)
    f.tables.report(test_id, PHONES["LGU"], 6)
    f.phones["LGU"].watched = False  # its modem dropped out for a moment since the send
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "failed", "KT": None, "LGU": None}
    assert f.book.rows_of(test_id)["SKT"]["detail"] == "agent reported 9008"
    f.wall.advance(59)
    await engine.tick(f.ctx)
    # LGU's grace has passed without a receipt, but its phone was not watched throughout.
    assert f.book.verdicts(test_id) == {"SKT": "failed", "KT": None, "LGU": "device_error"}
    f.wall.advance(1.5)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id)["KT"] == "timeout"
    # failed ranks before device_error and timeout
    assert f.book.tests[test_id]["overall"] == "failed"
    # Timing runs from the insert, and the phone's watch is asked about that moment.
    assert f.phones["KT"].watched_from[-1] == sent_mono


async def test_only_a_receipt_matching_the_test_holding_the_phone_passes_it(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    test_id = await started(f)
    other_text = f.book.receive("SKT", "다른 메시지")
    other_sender = f.book.receive("SKT", TEXT, sender="0298765432")
    wrong_phone = f.book.receive("KT", "다른 메시지")
    right = f.book.receive("KT", TEXT)
    await engine.tick(f.ctx)
    assert [f.book.receipts[r]["match"] for r in (other_text, other_sender, wrong_phone)] == [
        "unmatched"
    ] * 3
    assert f.book.receipts[right]["match"] == "test"
    assert f.book.receipts[right]["test_id"] == test_id
    assert f.book.verdicts(test_id) == {"SKT": None, "KT": "pass", "LGU": None}
    assert f.book.rows_of(test_id)["KT"]["receipt_id"] == right
    # The same text again is not a second pass.
    again = f.book.receive("KT", TEXT)
    await engine.tick(f.ctx)
    assert f.book.receipts[again]["match"] == "unmatched"


async def test_a_receipt_after_its_verdict_passes_marked_late_and_widens_the_grace(
    tmp_path: Path,
) -> None:
    """As the web's own receipt route does: a receipt turns a judged carrier into pass
    (WEBSERVICE.md §4); the node keeps what it had been judged."""
    f = spam_engine(tmp_path)
    test_id = await started(f)
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    await engine.tick(f.ctx)
    f.wall.advance(26)
    await engine.tick(f.ctx)
    assert f.book.tests[test_id]["overall"] == "blocked"
    assert f.ctx.grace("KT") == 25.0
    f.wall.advance(14)  # 40 s after the success
    late = f.book.receive("KT", TEXT)
    await engine.tick(f.ctx)
    row = f.book.rows_of(test_id)["KT"]
    assert row["result"] == "pass" and row["late"] and row["late_receipt_id"] == late
    assert row["late_from"] == "blocked" and row["received"] and row["received_at"]
    assert f.book.receipts[late]["match"] == "late"
    assert f.book.tests[test_id]["overall"] == "blocked"  # SKT and LGU still are
    assert f.ctx.grace("KT") == 41.0  # the slowest receipt seen plus one second
    assert f.ctx.grace("LGU") == 25.0
    shown = f.ctx.recent[0]["carriers"]["KT"]
    assert shown["late"] is True and shown["verdict"] == "pass"
    assert shown["late_from"] == "blocked"
    # A restart rebuilds the grace from the store: the late receipt still counts.
    again = restarted(f)
    await restore.restore(again)
    assert again.grace("KT") == 41.0


async def test_a_late_receipt_of_a_test_no_longer_in_memory_is_found_in_the_store(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    test_id = await started(f)
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    await engine.tick(f.ctx)
    f.wall.advance(26)
    await engine.tick(f.ctx)
    f.ctx.active.clear()  # a restart since
    late = f.book.receive("LGU", TEXT)
    await engine.tick(f.ctx)
    assert f.book.rows_of(test_id)["LGU"]["late"] is True
    assert f.book.receipts[late]["match"] == "late"


async def test_the_blocked_carriers_of_a_runs_test_go_to_its_training_row(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    run_id = uuid.uuid4()
    test_id = await started(f, run_id=run_id)
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    await engine.tick(f.ctx)
    f.book.receive("SKT", TEXT)
    f.wall.advance(26)
    await engine.tick(f.ctx)
    secret = f.ctx.runtime.config.dispatch.training_secret.get_secret_value()
    assert f.book.training == {source_ref(secret, run_id): {"spam_blocked": 2}}
    assert "acme" not in str(f.book.training)  # no plaintext company id
    # A test of no run leaves the training rows alone.
    other = await started(f)
    for phone in PHONES.values():
        f.tables.report(other, phone, 6)
        f.book.receive(next(c for c, p in PHONES.items() if p == phone), TEXT)
    await engine.tick(f.ctx)
    assert f.book.tests[other]["overall"] == "pass"
    assert len(f.book.training) == 1
    # The run's next test of its text, which nothing blocked, replaces the count with 0.
    again = await started(f, run_id=run_id)
    for phone in PHONES.values():
        f.tables.report(again, phone, 6)
        f.book.receive(next(c for c, p in PHONES.items() if p == phone), TEXT)
    await engine.tick(f.ctx)
    assert f.book.training == {source_ref(secret, run_id): {"spam_blocked": 0}}


async def test_the_status_shows_what_each_carrier_waits_for(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)
    test_id = await started(f)
    waiting = f.book.queue(TEXT, company_id="other")  # the same text: it cannot share
    f.tables.report(test_id, PHONES["KT"], 6)
    await engine.tick(f.ctx)
    f.wall.advance(3)
    f.book.receive("SKT", TEXT)
    await engine.tick(f.ctx)
    f.wall.advance(4)
    snap = engine.view.snapshot(f.ctx)
    [active] = snap["active"]
    assert active["test_id"] == str(test_id) and active["status"] == "active"
    assert active["carriers"]["SKT"] == {
        "verdict": "pass",
        "modem": "SKT",
        "status_code": None,
        "receipt_delay_s": 3.001,  # the queue's insert below took a millisecond
    }
    assert active["elapsed_s"] == 7.0
    assert active["carriers"]["KT"]["waiting_for"] == "receipt (blocked in 18.0s)"
    assert active["carriers"]["LGU"]["waiting_for"] == "agent result"
    assert [q["test_id"] for q in snap["queue"]] == [str(waiting)]
    assert snap["queue"][0]["waiting_s"] == 3.0  # as of the last pass
    assert snap["grace_s"] == {"SKT": 25.0, "KT": 25.0, "LGU": 25.0}
    assert {p["modem"]: p["busy_with"] for p in snap["phones"]} == {
        "SKT": [],
        "KT": [str(test_id)],
        "LGU": [str(test_id)],
    }
