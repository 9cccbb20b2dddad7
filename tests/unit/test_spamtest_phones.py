"""The spam-test engine's phone pool, restore after a restart, cancel and canaries, in
process: the engine's steps on fakes (`spamtest_fakes.py`), the clocks moved by the test,
no sleep."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.modems import ModemState
from daemon.spamtest import engine, restore
from tests.unit.spamtest_fakes import CALLBACK, TEST_TABLE, restarted, spam_engine

TEXT = "테스트 메시지"
PHONES = {"SKT": "01090000001", "KT": "01090000002", "LGU": "01090000003"}


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
