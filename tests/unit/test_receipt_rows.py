"""A phone's message as a ``hanjullo.modem_receipts`` row (`daemon/receipts.py:row_of`): every
decodable text is kept losslessly in a form PostgreSQL's text type holds, and matched on
that same form (issue 13, item 2)."""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from config.example import sim_example
from config.loader import validate
from config.names import MessageType, original_text, stored_text
from daemon.receipts import row_of
from dispatch.spamtests.rules import Expected, expected_hash
from drivers import pdu
from drivers.base import Received
from tests.unit.test_pdu_vectors import MESSAGING_SI, join

SENT = datetime(2026, 11, 17, 3, 0, tzinfo=UTC)


def received(text: str) -> Received:
    (raw,) = pdu.encode_deliver("0212345678", text, SENT, "+821000000000")
    part = pdu.decode(raw)
    assert isinstance(part, pdu.Deliver)
    (message,) = pdu.Reassembler(60).add(part, 0.0)
    return Received(message, (3,), (raw.hex().upper(),), "cmti")


@pytest.mark.parametrize(
    "text",
    ["안녕\x00하세요", "\x00", "백슬래시 \\0 는 글자", "a\\\x00b\\\\"],
)
def test_a_text_postgres_cannot_hold_is_stored_escaped_and_read_back_exactly(
    tmp_path: Path, text: str
) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    row = row_of(config.modems[0], received(text))
    assert "\x00" not in row.text
    assert original_text(row.text) == text
    assert row.text == stored_text(text)


def test_a_plain_text_is_stored_as_it_is_and_matches_its_test(tmp_path: Path) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    text = "(광고) 한줄로 가을 세일 안내"
    row = row_of(config.modems[0], received(text))
    assert row.text == text
    expected = Expected.of(
        MessageType.SMS, "02-1234-5678", expected_hash(MessageType.SMS, text, None), None, None
    )
    assert expected.matches(
        {"sender": row.sender, "text_hash": row.text_hash, "kind": row.kind, "complete": True}
    )


def test_a_texts_backslashes_match_on_the_same_normalisation(tmp_path: Path) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    text = "경로 C:\\temp 확인"
    row = row_of(config.modems[0], received(text))
    assert row.text_hash == expected_hash(MessageType.SMS, text, None)


def test_an_undecodable_pdu_is_a_receipt_of_its_own_kind_that_matches_nothing(
    tmp_path: Path,
) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    raw = "07912801000000000004FF"
    row = row_of(config.modems[0], Received(None, (4,), (raw,), "sweep", "sender claims 255"))
    assert (row.kind, row.text, row.complete, row.raw_pdus) == ("undecodable", "", False, [raw])
    expected = Expected.of(
        MessageType.SMS, "0212345678", expected_hash(MessageType.SMS, "", None), None, None
    )
    assert not expected.matches(
        {"sender": row.sender, "text_hash": row.text_hash, "kind": row.kind, "complete": False}
    )


def test_a_service_indication_is_recorded_as_a_wap_push_and_matches_no_test(
    tmp_path: Path,
) -> None:
    """python-messaging's two-part Service Indication (tests/unit/test_pdu_vectors.py cites
    it): kept as a receipt, labelled for what it is, never an SMS nor an LMS receipt."""
    config = validate(tomllib.loads(sim_example(tmp_path)))
    message = join(MESSAGING_SI)
    row = row_of(config.modems[0], Received(message, (1, 2), MESSAGING_SI, "sweep"))
    assert row.kind == "wap-push"
    as_read = dataclasses.asdict(row)
    for mtype in (MessageType.SMS, MessageType.LMS):
        expected = Expected.of(mtype, message.sender, row.text_hash, None, "x")
        assert not expected.matches(as_read)
