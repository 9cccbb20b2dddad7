"""The one log-table month rule of the node (docs/clock.md): which monthly log tables can
hold a row, given when it was handed to an agent and now, both by the node clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from config.clock import KST
from dispatch.agent_tables import AGENT_CLOCK_SKEW, log_months, log_tables_between


def kst(*args: int) -> datetime:
    return datetime(*args, tzinfo=KST)  # type: ignore[misc]


def test_a_row_sent_before_midnight_is_found_in_the_next_months_table() -> None:
    sent = kst(2026, 11, 30, 23, 59, 50)
    assert log_months(sent, kst(2026, 12, 1, 0, 0, 20)) == [date(2026, 11, 1), date(2026, 12, 1)]


def test_the_month_is_the_kst_month_not_the_utc_one() -> None:
    # 00:30 KST on the 1st is still the last day of the previous month in UTC.
    moment = kst(2027, 1, 1, 0, 30)
    assert moment.astimezone(UTC).date() == date(2026, 12, 31)
    assert log_months(moment, moment) == [date(2027, 1, 1)]
    assert log_tables_between(["SMSQ_SEND_10"], moment, moment) == ["SMSQ_SEND_10_202701"]


def test_the_year_boundary() -> None:
    assert log_months(kst(2026, 12, 31, 23, 59, 59), kst(2027, 1, 1, 0, 0, 1)) == [
        date(2026, 12, 1),
        date(2027, 1, 1),
    ]


def test_a_clock_stepped_back_still_finds_what_was_moved_before_the_step() -> None:
    assert log_months(kst(2026, 12, 1, 0, 5), kst(2026, 11, 27, 12, 0)) == [
        date(2026, 11, 1),
        date(2026, 12, 1),
    ]


def test_an_agent_clock_a_little_ahead_or_behind_is_covered() -> None:
    edge = kst(2026, 12, 1)
    just_before = edge - AGENT_CLOCK_SKEW + timedelta(seconds=1)
    assert log_months(just_before, just_before) == [date(2026, 11, 1), date(2026, 12, 1)]
    just_after = edge + AGENT_CLOCK_SKEW - timedelta(seconds=1)
    assert log_months(just_after, just_after) == [date(2026, 11, 1), date(2026, 12, 1)]
    midday = kst(2026, 11, 15, 12)
    assert log_months(midday, midday) == [date(2026, 11, 1)]


def test_a_long_run_covers_every_month_between() -> None:
    months = log_months(kst(2026, 10, 31, 12), kst(2027, 2, 1, 12))
    assert months == [date(2026, m, 1) for m in (10, 11, 12)] + [
        date(2027, 1, 1),
        date(2027, 2, 1),
    ]
    tables = log_tables_between(["SMSQ_SEND_1", "SMSQ_SEND_2"], kst(2026, 11, 2), kst(2026, 12, 2))
    assert tables == [
        "SMSQ_SEND_1_202611",
        "SMSQ_SEND_1_202612",
        "SMSQ_SEND_2_202611",
        "SMSQ_SEND_2_202612",
    ]
