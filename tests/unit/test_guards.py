"""Korean sending rules, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.clock import KST
from dispatch.guards import (
    MessageType,
    RunRejected,
    SkipReason,
    byte_length,
    check_ad_run,
    check_recipient,
    in_ad_window,
    next_ad_window_edge,
    next_ad_window_start,
)


def test_byte_length_counts_hangul_as_two() -> None:
    assert byte_length("abc") == 3
    assert byte_length("한줄로") == 6
    assert byte_length("😀") == 2  # not in CP949: counted as two bytes, never dropped


@pytest.mark.parametrize(
    ("phone", "text", "kind", "attachments", "opted", "reason"),
    [
        ("0212345678", "hi", MessageType.SMS, None, False, SkipReason.INVALID_NUMBER),
        ("010-1234-5678", "hi", MessageType.SMS, None, True, SkipReason.OPTED_OUT),
        ("01012345678", "가" * 46, MessageType.SMS, None, False, SkipReason.TOO_LONG),
        ("01012345678", "가" * 45, MessageType.SMS, None, False, None),
        ("01012345678", "가" * 1001, MessageType.LMS, None, False, SkipReason.TOO_LONG),
        ("01012345678", "사진", MessageType.MMS, ["a.png"], False, SkipReason.MMS_WITHOUT_IMAGE),
        ("01012345678", "사진", MessageType.MMS, ["a.JPG"], False, None),
    ],
)
def test_recipient_guards(
    phone: str,
    text: str,
    kind: MessageType,
    attachments: list[str] | None,
    opted: bool,
    reason: SkipReason | None,
) -> None:
    verdict = check_recipient(phone, text, None, attachments, kind, opted)
    assert verdict.skip == reason


def test_normalised_number_is_kept() -> None:
    assert (
        check_recipient("+82 10-1234-5678", "hi", None, None, MessageType.SMS, False).phone_norm
        == "01012345678"
    )


def test_ad_form_rules() -> None:
    check_ad_run(True, "(광고) 세일 무료거부 080-123-4567")
    check_ad_run(False, "세일")
    with pytest.raises(RunRejected, match="광고"):
        check_ad_run(True, "세일 무료거부 0801234567")
    with pytest.raises(RunRejected, match="080"):
        check_ad_run(True, "(광고) 세일")


def test_ad_window() -> None:
    assert in_ad_window(datetime(2026, 11, 27, 8, 0, tzinfo=KST))
    assert in_ad_window(datetime(2026, 11, 27, 20, 59, tzinfo=KST))
    assert not in_ad_window(datetime(2026, 11, 27, 21, 0, tzinfo=KST))
    assert not in_ad_window(datetime(2026, 11, 27, 7, 59, tzinfo=KST))
    assert next_ad_window_start(datetime(2026, 11, 27, 22, 0, tzinfo=KST)) == datetime(
        2026, 11, 28, 8, 0, tzinfo=KST
    )
    assert next_ad_window_start(datetime(2026, 11, 27, 3, 0, tzinfo=KST)) == datetime(
        2026, 11, 27, 8, 0, tzinfo=KST
    )


TICK = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("moment", "allowed"),
    [
        (datetime(2026, 11, 27, 20, 59, 59, tzinfo=KST), True),
        (datetime(2026, 11, 27, 21, 0, 0, tzinfo=KST) - TICK, True),
        (datetime(2026, 11, 27, 21, 0, 0, tzinfo=KST), False),
        (datetime(2026, 11, 28, 7, 59, 59, tzinfo=KST), False),
        (datetime(2026, 11, 28, 8, 0, 0, tzinfo=KST) - TICK, False),
        (datetime(2026, 11, 28, 8, 0, 0, tzinfo=KST), True),
        # The same instants written in UTC: the window is KST whatever the zone given.
        (datetime(2026, 11, 27, 11, 59, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC), False),
        (datetime(2026, 11, 27, 22, 59, 59, tzinfo=UTC), False),
        (datetime(2026, 11, 27, 23, 0, 0, tzinfo=UTC), True),
    ],
)
def test_night_hold_boundaries(moment: datetime, allowed: bool) -> None:
    assert in_ad_window(moment) is allowed


@pytest.mark.parametrize(
    ("moment", "edge"),
    [
        (datetime(2026, 11, 27, 20, 59, 59, tzinfo=KST), datetime(2026, 11, 27, 21, tzinfo=KST)),
        (datetime(2026, 11, 27, 21, 0, 0, tzinfo=KST), datetime(2026, 11, 28, 8, tzinfo=KST)),
        (datetime(2026, 11, 28, 7, 59, 59, tzinfo=KST), datetime(2026, 11, 28, 8, tzinfo=KST)),
        (datetime(2026, 11, 28, 8, 0, 0, tzinfo=KST), datetime(2026, 11, 28, 21, tzinfo=KST)),
        (datetime(2026, 11, 30, 23, 0, tzinfo=KST), datetime(2026, 12, 1, 8, tzinfo=KST)),
    ],
)
def test_the_dispatcher_wakes_at_the_next_window_edge(moment: datetime, edge: datetime) -> None:
    assert next_ad_window_edge(moment) == edge
    assert in_ad_window(edge - TICK) is not in_ad_window(edge)


def test_a_subject_longer_than_title_str_is_skipped_and_200_characters_pass() -> None:
    from dispatch.agent_tables import VARCHAR_WIDTHS

    assert VARCHAR_WIDTHS["title_str"] == 200
    ok = check_recipient("01012345678", "본문", "가" * 200, None, MessageType.LMS, False)
    assert ok.skip is None
    long = check_recipient("01012345678", "본문", "가" * 201, None, MessageType.LMS, False)
    assert long.skip == SkipReason.SUBJECT_TOO_LONG


def test_run_fields_too_long_for_their_agent_columns_are_named_with_the_fix() -> None:
    from dispatch.guards import run_field_problems

    assert run_field_problems("acme", "02-1234-5678", "제목") == []
    found = run_field_problems("c" * 51, "0212345678" + " " * 11, "s" * 201)
    assert len(found) == 3, found
    company, callback, subject = found
    assert company.startswith("company_id is 51 characters, over the 50 of app_etc2")
    assert callback.startswith("callback '0212345678           ' is 21 characters, over the 20")
    assert "fix: write the number alone" in callback
    assert subject.startswith("subject is 201 characters, over the 200 of title_str")
    assert all("fix:" in p for p in found)


async def test_create_run_refuses_over_long_run_fields_before_storing_anything() -> None:
    from dispatch.runs import Recipient, RunSpec, create_run

    spec = RunSpec(node_id="n", company_id="c" * 51, callback="0212345678")
    # No connection is touched: the run is refused before the transaction.
    with pytest.raises(RunRejected, match="company_id is 51 characters"):
        await create_run(None, spec, [Recipient("01012345678", "hi")])  # type: ignore[arg-type]
