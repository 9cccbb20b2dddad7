"""The web service's pure rules as tests/webservice/queries.py re-expresses them (no database).

Each case is a value the web's JavaScript gives for the same input, worked out from its source
(hoyun5295-ctrl/TargetupAI@e7c1db7a), so the daemon's tests can lean on these functions.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from config.clock import KST
from tests.webservice import queries as q


def test_table_names_follow_the_webs_validator() -> None:
    for good in (
        "SMSQ_SEND",
        "SMSQ_SEND_1",
        "SMSQ_SEND_999",
        "SMSQ_SEND_3_202611",
        " SMSQ_SEND_3\n",
        "SMSQ_SEND_1000",  # read as SMSQ_SEND + a 4-8 digit suffix
    ):
        assert q.is_valid_sms_table(good), good  # the validator trims before matching
    for bad in (
        "SMSQ_SEND_1_123456789",
        "SMSQ_SEND_1_202",
        "SMSQ_SEND_١",
        "smsq_send_1",
        "SMSQ_SEND_1;",
    ):
        assert not q.is_valid_sms_table(bad), bad


def test_bulk_fallback_drops_only_the_literal_test_and_auth_tables() -> None:
    env = q.WebEnv(sms_tables=("SMSQ_SEND_1", "SMSQ_SEND_10", "SMSQ_SEND_11", "SMSQ_SEND_12"))
    assert env.bulk_only_tables == ["SMSQ_SEND_1", "SMSQ_SEND_12"]


def test_round_robin_is_one_counter_across_sends() -> None:
    rr = q.RoundRobin()
    first = [rr.next(["A", "B", "C"]) for _ in range(4)]
    second = [rr.next(["X", "Y"]) for _ in range(3)]
    assert first == ["A", "B", "C", "A"]
    assert second == ["X", "Y", "X"]  # index 4, 5, 6 of the same counter


def test_qtmsg_types_and_kst_strings() -> None:
    assert [q.to_qtmsg_type(t) for t in ("SMS", "LMS", "MMS", "KAKAO")] == ["S", "L", "M", "M"]
    moment = datetime(2026, 4, 30, 15, 30, 5, tzinfo=UTC)
    assert q.kst_wall(moment) == "2026-05-01 00:30:05"


@pytest.mark.parametrize(
    ("base", "index", "expected"),
    [
        # 20:58 KST + 1 min: still before 21:00.
        (
            datetime(2026, 5, 4, 20, 58, 30, tzinfo=KST),
            1,
            datetime(2026, 5, 4, 20, 59, 30, tzinfo=KST),
        ),
        # 20:58 KST + 5 min = 21:03: the next day 08:00 plus the 3 minutes over, seconds kept.
        (
            datetime(2026, 5, 4, 20, 58, 30, tzinfo=KST),
            5,
            datetime(2026, 5, 5, 8, 3, 30, tzinfo=KST),
        ),
        # Across a month end.
        (datetime(2026, 5, 31, 22, 10, tzinfo=KST), 0, datetime(2026, 6, 1, 9, 10, tzinfo=KST)),
    ],
)
def test_split_sends_roll_past_21_into_the_next_morning(
    base: datetime, index: int, expected: datetime
) -> None:
    assert q.split_send_time(base, index) == expected


def test_message_hash_strips_javascript_whitespace() -> None:
    digest = hashlib.sha256("봄세일안내".encode()).hexdigest()[:16]
    assert q.message_hash("봄 세일\n\t안내") == digest
    # JavaScript's \s includes U+FEFF and U+3000; it does not include U+001F or U+0085.
    assert q.message_hash("봄\ufeff세일\u3000안내") == digest
    assert q.message_hash("봄\x1f세일안내") != digest
    assert q.message_hash(" \n ") == ""


def test_training_masks_and_features() -> None:
    text = "ACME 여름 50,000원 쿠폰! 02.123.4567 로 문의 http://a.kr/x (acme)"
    assert (
        q.mask_for_training(text, "Acme")
        == "{brand} 여름{amount} 쿠폰! {phone} 로 문의 {url} ({brand})"
    )
    features = q.message_features("안녕하세요. 방문하세요 😀")
    assert features == {
        "emoji_count": 1,
        "sentence_count": 2,
        "char_length": 15,  # JavaScript counts the emoji as two UTF-16 units
        "has_link": False,
        "has_phone_cta": False,
        "cta_type": "visit",
    }
    assert q.source_ref("k", "x") == q.source_ref("k", "x")
    assert len(q.source_ref("k", "x")) == 32


def test_the_webs_overall_verdict_rules() -> None:
    assert q.overall_result(["pass", "blocked", "failed"]) == "blocked"
    assert q.overall_result(["pass", "timeout", "failed"]) == "failed"
    assert q.overall_result(["pass", None, "timeout"]) == "timeout"
    assert q.overall_result(["pass", None, None]) == "pass"  # NULLs are ignored
    assert q.overall_result(["pass", "device_error"]) == "pass"
    assert q.batch_overall("completed", ["pass", "device_error"]) == "pending"
    assert q.batch_overall("queued", ["blocked"]) == "pending"
    assert q.batch_overall("active", [None, None]) == "pending"
    assert q.batch_overall("active", ["pass", None]) == "pass"


def test_the_modal_shows_the_first_row_of_each_cell() -> None:
    rows = [
        q.ResultRow("KT", "SMS", False, None, None),
        q.ResultRow("KT", "SMS", True, datetime.now(UTC), "pass"),  # a second row: never shown
        q.ResultRow("SKT", "SMS", True, datetime.now(UTC), "pass"),
    ]
    testing = q.spam_screen("testing", rows)
    assert testing.grid[("KT", "SMS")] == q.Cell("⏳", "확인 중...")
    assert testing.banner == "testing"
    done = q.spam_screen("completed", rows)
    assert done.grid[("KT", "SMS")] == q.Cell("❓", "판정 중")
    assert done.grid[("SKT", "SMS")].icon == "✅"
    assert ("LGU", "SMS") not in done.grid
    assert done.banner == "all_received" and done.received == 2


def test_the_nodes_message_hash_is_the_webs_whatever_the_whitespace() -> None:
    """The training row's spam_blocked and the spam tests' matching use one key with the
    web's computeMessageHash: JavaScript's \\s, not Python's str.split()."""
    from config.names import message_hash

    for text in (
        "한줄로  가을\n세일",
        "BOM\ufeff안의 문자",  # U+FEFF is JavaScript whitespace, not Python's
        "구분\x1c기호",  # U+001C splits in Python, not in JavaScript
        "다음 줄\x85문자",  # so does U+0085
        "\u3000전각 공백",
    ):
        assert message_hash(text) == q.message_hash(text), repr(text)
