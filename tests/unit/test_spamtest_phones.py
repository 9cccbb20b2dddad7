"""The spam-test engine's phone pool (tests sharing a phone: docs/test-phones.md,
"Sharing a phone"), restore after a restart, cancel and canaries, in process: the
engine's steps on fakes (`spamtest_fakes.py`), the clocks moved by the test, no sleep."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.modems import ModemState
from daemon.spamtest import engine, phones, restore
from dispatch.guards import byte_length
from tests.unit.spamtest_fakes import CALLBACK, TEST_TABLE, SpamFakes, restarted, spam_engine

TEXT = "테스트 메시지"
PHONES = {"SKT": "01090000001", "KT": "01090000002", "LGU": "01090000003"}
# The batch bench/spamtest.py submits: three companies × variants A/B/C, one callback.
VARIANTS = {
    "A": "{co} 가을 신상품 안내: 오늘만 특별 혜택",
    "B": "{co} 회원님께 드리는 감사 쿠폰 소식",
    "C": "{co} 매장 리뉴얼 오픈 행사 초대",
}
LMS_BODY = "한" * 300  # 600 bytes in EUC-KR


def queue_lms(f: SpamFakes, subject: str, callback: str = CALLBACK, **fields: object) -> uuid.UUID:
    return f.book.queue(
        "",
        message_content_sms=None,
        message_content_lms=LMS_BODY,
        message_subject=subject,
        callback_number=callback,
        **fields,
    )


async def test_nine_tests_of_distinct_texts_share_one_phone_per_carrier_and_get_their_own_receipts(
    tmp_path: Path,
) -> None:
    """The bench's batch: every test starts in the first pass, on the one phone of each
    carrier, and each receipt passes its own test only."""
    f = spam_engine(tmp_path)
    batch = {
        (co, v): f.book.queue(text.format(co=co), company_id=co, variant_id=v)
        for co in ("c1", "c2", "c3")
        for v, text in VARIANTS.items()
    }
    await engine.tick(f.ctx)
    assert all(f.book.tests[t]["status"] == "active" for t in batch.values())
    assert f.ctx.queue_view == []
    assert f.ctx.busy == {label: set(batch.values()) for label in PHONES}
    for test_id in batch.values():
        assert {r["dest_no"] for r in f.tables.of(test_id)} == set(PHONES.values())
        # The receipts plan() judged sharing on are the started slots' own.
        test = f.ctx.active[test_id]
        assert phones.expected_receipts(test) == [s.expected for s in test.slots][:1]
    snap = {p["modem"]: p["busy_with"] for p in engine.view.snapshot(f.ctx)["phones"]}
    started = [str(t) for t in f.ctx.active]  # in the queue's fair order
    assert sorted(started) == sorted(str(t) for t in batch.values())
    assert snap == dict.fromkeys(PHONES, started)
    # A restart rebuilds the shared phones from the result rows.
    again = restarted(f)
    await restore.restore(again)
    assert again.busy == f.ctx.busy
    # The receipts come in any order; each goes to the test whose text it is.
    receipts = {
        f.book.receive(label, VARIANTS[v].format(co=co)): (batch[co, v], label)
        for label in ("LGU", "SKT", "KT")
        for (co, v) in reversed(list(batch))
    }
    await engine.tick(f.ctx)
    for receipt, (test_id, label) in receipts.items():
        assert f.book.receipts[receipt]["match"] == "test"
        assert f.book.receipts[receipt]["test_id"] == test_id
        assert f.book.rows_of(test_id)[label]["receipt_id"] == receipt
    assert all(f.book.tests[t]["overall"] == "pass" for t in batch.values())
    assert f.ctx.busy == {} and set(f.ctx.freed_at) == set(PHONES)


async def test_the_same_text_takes_another_phone_of_the_carrier_when_there_is_one(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path, extra_phones=[("SKT-2", "SKT", "01090000004")])
    first = f.book.queue(TEXT)
    await engine.tick(f.ctx)
    f.tables.report(first, PHONES["SKT"], 6)
    for label in ("KT", "LGU"):
        f.book.receive(label, TEXT)
    await engine.tick(f.ctx)
    assert f.book.verdicts(first) == {"SKT": None, "KT": "pass", "LGU": "pass"}
    # SKT still waits for the same text: the second takes SKT-2 (and the freed KT, LGU).
    second = f.book.queue(TEXT, company_id="other")
    await engine.tick(f.ctx)
    assert f.book.tests[second]["status"] == "active"
    assert {c: r["modem"] for c, r in f.book.rows_of(second).items()} == {
        "SKT": "SKT-2",
        "KT": "KT",
        "LGU": "LGU",
    }
    assert f.ctx.busy == {"SKT": {first}, "SKT-2": {second}, "KT": {second}, "LGU": {second}}
    # A free phone goes before a shared one: a third text takes the freed SKT after the
    # first passes there, though SKT-2 could be shared.
    f.book.receive("SKT", TEXT)
    await engine.tick(f.ctx)
    third = f.book.queue("세번째 메시지", company_id="third")
    await engine.tick(f.ctx)
    assert f.book.rows_of(third)["SKT"]["modem"] == "SKT"
    assert f.ctx.busy["KT"] == {second, third}


async def test_among_shared_phones_the_one_with_fewest_undecided_slots_goes_first(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path, extra_phones=[("SKT-2", "SKT", "01090000004")])
    both = f.book.queue(TEXT, message_content_lms=LMS_BODY, message_subject="제목")
    await engine.tick(f.ctx)
    sms = f.book.queue("두번째 메시지", company_id="other")
    await engine.tick(f.ctx)
    assert f.book.rows_of(both)["SKT"]["modem"] == "SKT"  # an SMS and an LMS slot
    assert f.book.rows_of(sms)["SKT"]["modem"] == "SKT-2"  # free goes first
    third = f.book.queue("세번째 메시지", company_id="third")
    await engine.tick(f.ctx)
    assert f.book.rows_of(third)["SKT"]["modem"] == "SKT-2"  # one undecided slot, not two
    assert f.ctx.busy == {
        "SKT": {both},
        "SKT-2": {sms, third},
        "KT": {both, sms, third},
        "LGU": {both, sms, third},
    }


async def test_a_test_of_the_same_text_waits_only_for_the_earlier_slot_on_its_phone(
    tmp_path: Path,
) -> None:
    """A test pinned to SKT with the first's text starts once the first's SKT slot is
    decided, while the first still waits elsewhere; its own receipt then passes it
    rather than making another late receipt of the first."""
    f = spam_engine(tmp_path)  # grace_initial_s = 25, timeout_s = 60
    first = f.book.queue(TEXT)
    pinned = f.book.queue(TEXT, target_modem="SKT", company_id="other")
    other_text = f.book.queue("다른 메시지", target_modem="SKT", company_id="third")
    await engine.tick(f.ctx)
    assert f.book.tests[pinned]["status"] == "queued"
    assert f.book.tests[other_text]["status"] == "active"  # shares SKT with the first
    assert f.ctx.busy["SKT"] == {first, other_text}
    f.tables.report(first, PHONES["SKT"], 6)  # KT and LGU: no agent result yet
    await engine.tick(f.ctx)
    f.wall.advance(26)
    await engine.tick(f.ctx)
    assert f.book.verdicts(first) == {"SKT": "blocked", "KT": None, "LGU": None}
    assert f.book.tests[pinned]["status"] == "active"
    assert f.ctx.busy["SKT"] == {pinned, other_text}
    own = f.book.receive("SKT", TEXT)
    await engine.tick(f.ctx)
    assert f.book.receipts[own]["test_id"] == pinned
    assert f.book.verdicts(pinned) == {"SKT": "pass"}
    assert not f.book.rows_of(first)["SKT"]["late"]


async def test_two_lms_of_one_sender_do_not_share_a_phone(tmp_path: Path) -> None:
    """A notification with a blank subject matches either by sender and size alone."""
    f = spam_engine(tmp_path)
    first = queue_lms(f, "정기 세일")
    second = queue_lms(f, "다른 제목", company_id="other")
    elsewhere = queue_lms(f, "정기 세일", callback="0298765432", company_id="third")
    sms = f.book.queue(TEXT, company_id="fourth")
    await engine.tick(f.ctx)
    assert f.book.tests[second]["status"] == "queued"
    # Another sender's LMS, and an SMS of the same sender, share the phones.
    assert f.ctx.busy == {label: {first, elsewhere, sms} for label in PHONES}
    blank = {label: f.book.receive_mms(label, "", 96857) for label in PHONES}
    await engine.tick(f.ctx)
    assert {f.book.receipts[r]["test_id"] for r in blank.values()} == {first}
    assert f.book.tests[first]["overall"] == "pass"
    assert f.book.tests[second]["status"] == "active"
    for label in PHONES:
        f.book.receive_mms(label, "다른 제목", byte_length(LMS_BODY))
    await engine.tick(f.ctx)
    assert f.book.tests[second]["overall"] == "pass"
    assert f.book.verdicts(elsewhere) == dict.fromkeys(PHONES)


async def test_a_receipt_for_one_test_never_passes_another_on_a_shared_phone(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)  # grace_initial_s = 25
    one = f.book.queue("첫째 회사 안내")
    f.wall.advance(1)
    before = f.wall()
    f.wall.advance(1)
    two = f.book.queue("둘째 회사 안내", company_id="other")
    await engine.tick(f.ctx)
    assert f.ctx.busy == {label: {one, two} for label in PHONES}
    for test_id in (one, two):
        for phone in PHONES.values():
            f.tables.report(test_id, phone, 6)
    await engine.tick(f.ctx)
    mine = f.book.receive("SKT", "첫째 회사 안내")
    stranger = f.book.receive("SKT", "셋째 회사 안내")
    early = f.book.receive("KT", "둘째 회사 안내", at=before)  # before either started
    await engine.tick(f.ctx)
    assert f.book.receipts[mine]["test_id"] == one
    assert [f.book.receipts[r]["match"] for r in (stranger, early)] == ["unmatched"] * 2
    assert f.book.verdicts(two) == dict.fromkeys(PHONES)
    # The first's text again is not the second's pass, nor a second pass of the first.
    again = f.book.receive("SKT", "첫째 회사 안내")
    await engine.tick(f.ctx)
    assert f.book.receipts[again]["match"] == "unmatched"
    f.wall.advance(26)
    await engine.tick(f.ctx)
    assert f.book.verdicts(one) == {"SKT": "pass", "KT": "blocked", "LGU": "blocked"}
    assert f.book.verdicts(two) == dict.fromkeys(PHONES, "blocked")
    # After the verdicts: the first's text on KT is late for the first, never the second's.
    late = f.book.receive("KT", "첫째 회사 안내")
    await engine.tick(f.ctx)
    assert (f.book.receipts[late]["match"], f.book.receipts[late]["test_id"]) == ("late", one)
    assert not f.book.rows_of(two)["KT"]["late"]


async def test_cancelling_one_of_two_tests_sharing_a_phone_leaves_it_busy_with_the_other(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    one = f.book.queue("첫째 회사 안내")
    two = f.book.queue("둘째 회사 안내", company_id="other")
    await engine.tick(f.ctx)
    lock = asyncio.Lock()
    await engine.cancel(f.ctx, lock, one)
    assert f.ctx.busy == {label: {two} for label in PHONES}
    assert f.ctx.freed_at == {}
    await engine.cancel(f.ctx, lock, two)
    assert f.ctx.busy == {} and set(f.ctx.freed_at) == set(PHONES)


async def test_two_tests_of_the_same_callback_and_text_do_not_share_a_phone(
    tmp_path: Path,
) -> None:
    """A receipt of that text could be either's: the second waits until the first's
    slots on the phones it needs are decided, then starts."""
    f = spam_engine(tmp_path)
    first = f.book.queue(TEXT)
    second = f.book.queue(TEXT, company_id="other")
    await engine.tick(f.ctx)
    assert f.book.tests[first]["status"] == "active"
    assert f.book.tests[second]["status"] == "queued"
    assert [q["test_id"] for q in f.ctx.queue_view] == [str(second)]
    assert f.ctx.queue_view[0]["position"] == 1
    assert f.ctx.busy == {label: {first} for label in PHONES}
    # Two carriers decided free their phones, but LGU still waits for the same text.
    f.book.receive("SKT", TEXT)
    f.book.receive("KT", TEXT)
    await engine.tick(f.ctx)
    assert set(f.ctx.busy) == {"LGU"}
    assert f.book.tests[second]["status"] == "queued"
    f.book.receive("LGU", TEXT)
    await engine.tick(f.ctx)
    assert f.book.tests[first]["overall"] == "pass"
    assert f.book.tests[second]["status"] == "active"
    assert f.ctx.queue_view == []
    assert {r["dest_no"] for r in f.tables.of(second)} == set(PHONES.values())
    # The text again, now on the second's phones: the second's, not a late one of the first.
    own = [f.book.receive(label, TEXT) for label in PHONES]
    await engine.tick(f.ctx)
    assert [f.book.receipts[r]["test_id"] for r in own] == [second] * 3
    assert f.book.tests[second]["overall"] == "pass"


async def test_a_carriers_longest_free_phone_goes_first(tmp_path: Path) -> None:
    f = spam_engine(tmp_path, extra_phones=[("SKT-2", "SKT", "01090000004")])

    async def one_test(text: str) -> str:
        test_id = f.book.queue(text)
        await engine.tick(f.ctx)
        skt = f.book.rows_of(test_id)["SKT"]["modem"]
        for label in (skt, "KT", "LGU"):
            f.book.receive(label, text)
        f.wall.advance(1)
        await engine.tick(f.ctx)
        assert f.book.tests[test_id]["overall"] == "pass"
        return str(skt)

    # Neither was used yet: the first configured; then the one never used; then the one
    # freed longest ago.
    assert [await one_test(f"메시지 {i}") for i in range(4)] == ["SKT", "SKT-2", "SKT", "SKT-2"]
    # A flagged phone is left out (of every test but its own canary).
    f.ctx.flagged["SKT"] = f.wall()
    assert await one_test("메시지 4") == "SKT-2"
    assert await one_test("메시지 5") == "SKT-2"


async def test_an_unready_phone_is_a_device_error_at_once_and_one_still_opening_is_waited_for(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    lgu = f.phones["LGU"]
    lgu.status.state, lgu.status.reason = ModemState.OPENING, "opening /dev/ttyUSB2"
    lgu.settled = False
    test_id = f.book.queue(TEXT)
    await engine.tick(f.ctx)
    assert f.book.tests[test_id]["status"] == "queued"  # worth waiting for
    f.monotonic.value += 30.5  # past the start-up wait
    lgu.unplug()
    lgu.settled = True
    await engine.tick(f.ctx)
    assert f.book.tests[test_id]["status"] == "active"
    row = f.book.rows_of(test_id)["LGU"]
    assert row["result"] == "device_error"
    assert row["detail"] == "LGU: absent (unplugged)"
    assert row["modem"] is None and row["sms_table"] is None
    # Nothing was sent to the phone that is not there, and it is not held.
    assert {r["dest_no"] for r in f.tables.of(test_id)} == {PHONES["SKT"], PHONES["KT"]}
    assert "LGU" not in f.ctx.busy


async def test_a_restart_restores_the_test_and_adopts_a_row_written_before_the_crash(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    test_id = f.book.queue(TEXT)
    await engine.tick(f.ctx)
    f.tables.report(test_id, PHONES["SKT"], 6)
    await engine.tick(f.ctx)
    # The crash window: KT's row is in MySQL, but its seqno never reached PostgreSQL.
    kt = f.book.rows_of(test_id)["KT"]
    seqno, kt["sms_msgkey"] = kt["sms_msgkey"], None
    ctx = restarted(f)
    await restore.restore(ctx)
    assert list(ctx.active) == [test_id]
    assert ctx.busy == {label: {test_id} for label in PHONES}
    slots = {s.carrier: s for s in ctx.active[test_id].slots}
    assert slots["SKT"].agent_code == 6 and slots["SKT"].success_seen_at is not None
    inserted = f.tables.inserted
    await engine.tick(ctx)
    assert f.tables.inserted == inserted  # nothing sent again
    assert f.book.rows_of(test_id)["KT"]["sms_msgkey"] == seqno
    f.book.receive("KT", TEXT)
    await engine.tick(ctx)
    assert f.book.verdicts(test_id)["KT"] == "pass"


async def test_a_row_in_the_node_clocks_new_month_is_found_after_a_restart(
    tmp_path: Path,
) -> None:
    """00:00:30 KST on 1 December is still 30 November in UTC (and the real clock may be
    anywhere): the agent moved the row into the node clock's month, December."""
    f = spam_engine(tmp_path)
    test_id = f.book.queue(TEXT)
    await engine.tick(f.ctx)
    f.clock.moment = datetime(2026, 11, 30, 15, 0, 30, tzinfo=UTC)
    log_table = f"{TEST_TABLE}_202612"
    f.tables.rows[log_table] = f.tables.rows.pop(TEST_TABLE)
    f.tables.log_tables |= {log_table, f"{TEST_TABLE}_202611"}
    for row in f.book.rows_of(test_id).values():
        row["sms_msgkey"] = None
    ctx = restarted(f)
    await restore.restore(ctx)
    inserted = f.tables.inserted
    await engine.tick(ctx)
    assert f.tables.inserted == inserted
    assert all(r["sms_msgkey"] is not None for r in f.book.rows_of(test_id).values())


async def test_cancel_pulls_back_what_no_agent_took_and_frees_the_phones(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    test_id = f.book.queue(TEXT)
    queued = f.book.queue(TEXT)  # the same text: it waits for the phones
    await engine.tick(f.ctx)
    for row in f.tables.of(test_id):
        if row["dest_no"] == PHONES["SKT"]:
            row["rsv1"] = "2"  # the agent took it
    lock = asyncio.Lock()
    answer = await engine.cancel(f.ctx, lock, test_id)
    assert answer == {
        "test_id": str(test_id),
        "status": "cancelled",
        "stopped": 2,
        "already_sent": 1,
    }
    assert [r["dest_no"] for r in f.tables.of(test_id)] == [PHONES["SKT"]]
    assert f.ctx.busy == {} and test_id not in f.ctx.active
    assert f.book.tests[test_id]["status"] == "cancelled"
    assert f.ctx.wake.is_set()
    # Cancelled again: nothing more is done.
    assert await engine.cancel(f.ctx, lock, test_id) == {
        "test_id": str(test_id),
        "status": "cancelled",
        "stopped": 0,
    }
    # A queued test is cancelled without touching the agent tables; the queue moves on.
    assert (await engine.cancel(f.ctx, lock, queued))["stopped"] == 0
    with pytest.raises(KeyError):
        await engine.cancel(f.ctx, lock, uuid.uuid4())
    nxt = f.book.queue("다음 메시지")
    await engine.tick(f.ctx)
    assert f.book.tests[nxt]["status"] == "active"


async def test_a_missed_canary_flags_the_phone_until_it_passes_one_again(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path, canary_interval_s=600, canary_callback=CALLBACK)
    await engine.tick(f.ctx)
    canaries = {t["target_modem"]: t["id"] for t in f.book.tests.values()}
    assert set(canaries) == set(PHONES)
    await engine.tick(f.ctx)  # one pinned to each phone: all three run at once
    assert all(f.book.tests[c]["status"] == "active" for c in canaries.values())
    for label, canary in canaries.items():
        f.tables.report(canary, PHONES[label], 6)
    await engine.tick(f.ctx)
    text = f.book.tests[canaries["SKT"]]["message_content_sms"]
    f.book.receive("SKT", text)
    f.wall.advance(26)
    await engine.tick(f.ctx)
    assert {m: f.book.tests[c]["overall"] for m, c in canaries.items()} == {
        "SKT": "pass",
        "KT": "blocked",
        "LGU": "blocked",
    }
    assert set(f.ctx.flagged) == {"KT", "LGU"}
    phones = {p["modem"]: p for p in engine.view.snapshot(f.ctx)["phones"]}
    assert phones["KT"]["flagged"] and not phones["SKT"]["flagged"]
    # A restart keeps the flags: they are the phones' last canaries.
    again = restarted(f)
    await restore.restore(again)
    assert set(again.flagged) == {"KT", "LGU"}
    assert again.last_canary["SKT"]["verdict"] == "pass"
    # No new canary before the interval; a manual test leaves the flagged phones out.
    test_id = f.book.queue(TEXT)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": None, "KT": "device_error", "LGU": "device_error"}
    assert "missed its canary" in f.book.rows_of(test_id)["KT"]["detail"]
    assert len([t for t in f.book.tests.values() if t["source"] == "canary"]) == 3
    f.book.receive("SKT", TEXT)
    await engine.tick(f.ctx)
    # The interval has passed: KT's next canary passes and clears its flag; LGU's fails
    # with a code, which says nothing about its filter, and it stays flagged.
    f.monotonic.value += 600
    await engine.tick(f.ctx)
    await engine.tick(f.ctx)
    second = {
        t["target_modem"]: t["id"]
        for t in f.book.tests.values()
        if t["source"] == "canary" and t["status"] == "active"
    }
    assert set(second) == set(PHONES)
    f.tables.report(second["LGU"], PHONES["LGU"], 9008)
    f.book.receive("KT", f.book.tests[second["KT"]]["message_content_sms"])
    f.book.receive("SKT", f.book.tests[second["SKT"]]["message_content_sms"])
    await engine.tick(f.ctx)
    assert set(f.ctx.flagged) == {"LGU"}
