"""The spam-test rules on their own: verdicts, overall ranking, grace, queue order, intake."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from config.model import SpamTestSection
from config.names import MessageType, message_hash, normalise_phone
from dispatch.fairness import fair_order
from dispatch.spamtests import (
    Expected,
    SlotFacts,
    SpamTestRejected,
    SpamTestSpec,
    Verdict,
    canary_flag,
    decide,
    grace_for,
    overall,
    read_due,
    receipt_delay,
    report,
)
from dispatch.spamtests.rules import distinguishable, expected_hash

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
SECTION = SpamTestSection(grace_initial_s=25, grace_min_s=6, grace_max_s=45, timeout_s=60)


SENT = 1000.0  # monotonic seconds: verdicts are timed on durations only


def facts(
    received: bool = False, code: int | None = None, seen_after_s: float | None = None
) -> SlotFacts:
    seen = SENT + seen_after_s if seen_after_s is not None else None
    return SlotFacts(SENT, received, code, seen)


def after(seconds: float) -> float:
    """Monotonic seconds `seconds` after the send."""
    return SENT + seconds


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_receipt_is_a_pass_even_if_the_modem_blipped() -> None:
    decision = decide(facts(received=True), after(1), 20, 60, watched=False)
    assert decision is not None and decision.verdict == Verdict.PASS


def test_a_failure_code_fails_at_once_and_keeps_the_code() -> None:
    decision = decide(facts(code=9008), after(0.5), 20, 60, watched=True)
    assert decision is not None and decision.verdict == Verdict.FAILED
    assert "9008" in decision.detail


def test_blocked_only_after_the_grace_and_only_when_watched() -> None:
    read = after(21)  # the storage was read completely as the grace ran out
    success = facts(code=6, seen_after_s=1)
    assert decide(success, after(20.9), 20, 60, watched=True, storage_read_at=read) is None
    blocked = decide(success, after(21), 20, 60, watched=True, storage_read_at=read)
    assert blocked is not None and blocked.verdict == Verdict.BLOCKED
    unwatched = decide(success, after(21), 20, 60, watched=False, storage_read_at=read)
    assert unwatched is not None and unwatched.verdict == Verdict.DEVICE_ERROR


def test_blocked_needs_a_storage_read_after_the_grace_else_a_device_error() -> None:
    success = facts(code=6, seen_after_s=1)
    early = after(20.5)  # read before the grace ran out: no proof of the silence after it
    assert read_due(success, after(21), 20, early)
    assert decide(success, after(21), 20, 60, True, storage_read_at=early, read_wait_s=10) is None
    assert decide(success, after(30.9), 20, 60, True, storage_read_at=None, read_wait_s=10) is None
    late = decide(success, after(31), 20, 60, True, storage_read_at=early, read_wait_s=10)
    assert late is not None and late.verdict == Verdict.DEVICE_ERROR
    assert "storage" in late.detail
    assert not read_due(success, after(22), 20, after(21.5))
    assert not read_due(success, after(20), 20, None)  # the grace is still running


def test_no_agent_result_is_a_timeout_or_a_device_error() -> None:
    assert decide(facts(), after(59), 20, 60, watched=True) is None
    timeout = decide(facts(), after(60), 20, 60, watched=True)
    assert timeout is not None and timeout.verdict == Verdict.TIMEOUT
    unwatched = decide(facts(), after(60), 20, 60, watched=False)
    assert unwatched is not None and unwatched.verdict == Verdict.DEVICE_ERROR


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (["pass", "pass", "pass"], "pass"),
        (["pass", "blocked", "failed"], "blocked"),
        (["timeout", "failed", "device_error"], "failed"),
        (["timeout", "device_error", "pass"], "device_error"),
        (["timeout", "pass", "pass"], "timeout"),
        (["pass", None, "pass"], None),
    ],
)
def test_overall_ranks_blocked_failed_device_error_timeout(
    verdicts: list[str | None], expected: str | None
) -> None:
    assert overall(verdicts) == expected


def test_grace_starts_at_the_initial_value_and_follows_observed_delays() -> None:
    assert grace_for([1.0, 2.0], SECTION) == 25
    kt = [11.0, 12.5, 13.0, 13.8, 14.2, 12.1, 14.6]
    grace = grace_for(kt, SECTION)
    assert 15.6 <= grace < 25  # above every observed receipt, below the initial guess
    fast = grace_for([1.0, 1.2, 1.5, 1.1, 0.9], SECTION)
    assert fast == 6  # the floor
    slow = grace_for([44.5] * 10, SECTION)
    assert slow == 45  # the ceiling


def test_a_late_receipt_widens_the_grace() -> None:
    samples = [2.0, 2.5, 3.0, 2.2, 2.8, 2.4]
    before = grace_for(samples, SECTION)
    after = grace_for([*samples, before + 3.0], SECTION)
    assert after > before + 3.0
    # Even before there are enough receipts for a percentile.
    assert grace_for([30.0], SECTION) == 31.0


def _queued(company: str | None, minute: int) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "company_id": company, "created_at": at(minute * 60)}


def test_queue_is_fifo_with_companies_taking_turns() -> None:
    tests = [_queued("a", 0), _queued("a", 1), _queued("a", 2), _queued("b", 3), _queued("c", 4)]
    order = [t["company_id"] for t in fair_order(tests, {}, arrival="created_at")]
    assert order == ["a", "b", "c", "a", "a"]
    # A company served a moment ago waits behind one not served for longer.
    served = {"a": at(10_000), "b": at(5_000)}
    order = [t["company_id"] for t in fair_order(tests, served, arrival="created_at")]
    assert order == ["c", "b", "a", "a", "a"]
    within = [
        t["created_at"]
        for t in fair_order(tests, {}, arrival="created_at")
        if t["company_id"] == "a"
    ]
    assert within == sorted(within)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SpamTestSpec("n", "12", sms_text="hi"), "sender number"),
        (SpamTestSpec("n", "0212345678"), "needs an SMS text"),
        (SpamTestSpec("n", "0212345678", sms_text="   "), "empty"),
        (SpamTestSpec("n", "0212345678", sms_text="가" * 46), "over 90"),
        (SpamTestSpec("n", "0212345678", lms_text="본문"), "subject"),
        (SpamTestSpec("n", "0212345678", lms_text="가" * 1001, subject="s"), "over 2000"),
        # Values every agent row of the test repeats, too long for their columns.
        (
            SpamTestSpec("n", "02-1234-5678 (대표번호 안내)", sms_text="hi"),
            "callback .* characters, over the 20 of call_back",
        ),
        (
            SpamTestSpec("n", "0212345678", sms_text="hi", company_id="c" * 51),
            "company_id is 51 characters, over the 50 of app_etc2",
        ),
        (
            SpamTestSpec("n", "0212345678", lms_text="본문", subject="제" * 201),
            "subject is 201 characters, over the 200 of title_str",
        ),
    ],
)
def test_bad_tests_are_rejected_with_a_reason(spec: SpamTestSpec, message: str) -> None:
    with pytest.raises(SpamTestRejected, match=message):
        spec.check()


def test_a_report_always_names_all_three_carriers() -> None:
    test = {
        "id": uuid.uuid4(),
        "status": "active",
        "overall": None,
        "company_id": "acme",
        "source": "manual",
        "variant_id": None,
        "batch_id": None,
        "message_content_sms": "안녕",
        "created_at": T0,
        "started_at": T0,
        "completed_at": None,
        "status_reason": None,
        "web": True,
    }
    row = {
        "carrier": "KT",
        "modem": "KT",
        "result": "pass",
        "status_code": 6,
        "receipt_delay_s": 13.21,
        "late": False,
        "late_delay_s": None,
        "late_from": None,
        "detail": None,
    }
    shown = report(test, [row])
    assert set(shown["carriers"]) == {"SKT", "KT", "LGU"}
    assert shown["carriers"]["KT"] == {
        "verdict": "pass",
        "status_code": 6,
        "receipt_delay_s": 13.21,
        "modem": "KT",
    }
    assert shown["carriers"]["SKT"]["verdict"] is None


def receipt(**fields: Any) -> dict[str, Any]:
    base = {
        "sender": "0212345678",
        "text_hash": message_hash("가을 세일 안내"),
        "kind": "sms",
        "complete": True,
        "subject": None,
        "mms_size": None,
    }
    return {**base, **fields}


def test_an_sms_matches_on_normalised_sender_and_whitespace_free_hash() -> None:
    expected = Expected.of("SMS", "+82 2-1234-5678", message_hash("가을  세일\n안내"), None, None)
    assert expected.matches(receipt())
    assert not expected.matches(receipt(sender="0299998888"))
    assert not expected.matches(receipt(text_hash=message_hash("겨울 세일 안내")))
    # A multi-part text with parts missing is never the test's text.
    assert not expected.matches(receipt(complete=False))
    assert not expected.matches(receipt(kind="mms-notification"))


def test_an_lms_matches_a_notification_with_its_subject_and_a_plausible_size() -> None:
    body = "한" * 300  # 600 bytes in EUC-KR
    expected = Expected.of("LMS", "0212345678", message_hash("정기 세일"), "정기 세일", body)
    notification = receipt(
        kind="mms-notification", text_hash=message_hash("정기 세일"), subject="정기 세일"
    )
    assert expected.matches({**notification, "mms_size": 1100})
    assert expected.matches({**notification, "mms_size": None})  # size unknown
    assert not expected.matches({**notification, "mms_size": 120})  # too small to be it
    assert not expected.matches({**notification, "subject": "다른 제목"})
    assert not expected.matches({**notification, "kind": "sms"})


def test_an_lms_matches_a_notification_without_subject_by_sender_and_stated_size() -> None:
    """The rule of docs/test-phones.md for MMSCs that blank the Subject (gammu 40.dump)."""
    body = "한" * 300  # 600 bytes in EUC-KR
    expected = Expected.of("LMS", "0212345678", message_hash("정기 세일"), "정기 세일", body)
    for subject in ("", None):
        blank = receipt(kind="mms-notification", text_hash=message_hash(""), subject=subject)
        assert expected.matches({**blank, "mms_size": 96857})
        assert not expected.matches({**blank, "mms_size": None})  # nothing to tell it by
        assert not expected.matches({**blank, "mms_size": 120})  # too small to be it
        assert not expected.matches({**blank, "mms_size": 96857, "sender": "0299998888"})
    sms_test = Expected.of("SMS", "0212345678", message_hash(""), None, None)
    assert not sms_test.matches(receipt(kind="mms-notification", text_hash=message_hash("")))


def sharing_cases() -> tuple[list[Expected], list[dict[str, Any]]]:
    """Expected receipts of tests that could meet on one phone (two senders, one of them
    written two ways; SMS texts equal but for whitespace, or different; LMS of one or
    another subject, a long or a short body), and every receipt built from their parts."""
    senders = ("0212345678", "+82 2-1234-5678", "0298765432")
    sms_texts = ("가을 세일 안내", "가을  세일\n안내", "겨울 세일 안내")
    subjects = ("정기 세일", "다른 제목")
    bodies = ("한" * 300, "짧은 본문")
    expected = [
        Expected.of(MessageType.SMS, sender, expected_hash(MessageType.SMS, text, None), None, None)
        for sender in senders
        for text in sms_texts
    ] + [
        Expected.of(
            MessageType.LMS,
            sender,
            expected_hash(MessageType.LMS, body, subject),
            subject,
            body,
        )
        for sender in senders
        for subject in subjects
        for body in bodies
    ]
    hashes = sorted({e.text_hash for e in expected} | {message_hash("")})
    sizes = [*sorted({e.min_size for e in expected} | {0, 96857}), None]
    receipts = [
        {
            "sender": sender,
            "kind": kind,
            "text_hash": text_hash,
            "subject": subject,
            "mms_size": size,
            "complete": complete,
        }
        for sender, kind, text_hash, subject, size, complete in itertools.product(
            sorted({normalise_phone(s) for s in senders}),
            ("sms", "mms-notification", "wap-push"),
            hashes,
            (None, "", *subjects),
            sizes,
            (True, False),
        )
    ]
    return expected, receipts


def test_two_expected_receipts_are_distinguishable_exactly_when_no_receipt_matches_both() -> None:
    """`distinguishable` against `Expected.matches` itself: for every pair it lets share a
    phone no receipt matches both; for every other pair some receipt does."""
    expected, receipts = sharing_cases()
    shared = confused = 0
    for a, b in itertools.product(expected, repeat=2):
        both = [r for r in receipts if a.matches(r) and b.matches(r)]
        if distinguishable(a, b):
            assert both == [], (a, b, both[:1])
            shared += 1
        else:
            assert both, (a, b)
            confused += 1
    assert shared and confused  # both kinds of pair were met


def test_tests_of_one_sender_share_a_phone_only_with_different_sms_texts() -> None:
    sms = Expected.of(MessageType.SMS, "0212345678", message_hash("가을 세일 안내"), None, None)
    other_text = Expected.of(
        MessageType.SMS, "0212345678", message_hash("겨울 세일 안내"), None, None
    )
    same_text = Expected.of(
        MessageType.SMS, "+82 2-1234-5678", message_hash("가을세일안내"), None, None
    )
    other_sender = Expected.of(
        MessageType.SMS, "0298765432", message_hash("가을 세일 안내"), None, None
    )
    lms = Expected.of(MessageType.LMS, "0212345678", message_hash("정기 세일"), "정기 세일", "본문")
    lms_other_subject = Expected.of(
        MessageType.LMS, "0212345678", message_hash("다른 제목"), "다른 제목", "본문"
    )
    assert distinguishable(sms, other_text)
    assert not distinguishable(sms, same_text)  # the same text, the sender written otherwise
    assert distinguishable(sms, other_sender)
    assert distinguishable(sms, lms)  # an SMS receipt is never an MMS notification
    # A notification with a blank subject matches either LMS by sender and size alone.
    assert not distinguishable(lms, lms_other_subject)
    assert distinguishable(
        lms, Expected.of(MessageType.LMS, "0298765432", lms.text_hash, "정기 세일", "본문")
    )


def test_a_blocked_canary_flags_a_pass_clears_and_anything_else_leaves_the_flag() -> None:
    earlier = at(-600)
    assert canary_flag(None, Verdict.BLOCKED, at(0)) == at(0)
    assert canary_flag(earlier, Verdict.BLOCKED, at(0)) == at(0)
    assert canary_flag(earlier, Verdict.PASS, at(0)) is None
    for verdict in (Verdict.FAILED, Verdict.DEVICE_ERROR, Verdict.TIMEOUT):
        assert canary_flag(earlier, verdict, at(0)) == earlier
        assert canary_flag(None, verdict, at(0)) is None


def test_a_receipt_delay_runs_from_the_insert_and_is_never_negative() -> None:
    assert receipt_delay(at(0), at(3.25)) == 3.25
    assert receipt_delay(at(5), at(3)) == 0.0  # clocks a little apart
    assert receipt_delay(None, at(3)) is None
