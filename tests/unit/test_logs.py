from __future__ import annotations

import io
import json
import re

import pytest
import structlog

from config.logs import mask_phones, setup_logging


def test_mask_phones() -> None:
    assert mask_phones("01012345678") == "010****5678"
    assert mask_phones("to 010-1234-5678 now") == "to 010-****-5678 now"
    assert mask_phones("+82 10-1234-5678") == "+82 10-****-5678"
    assert mask_phones("0212345678") == "021***5678"
    assert mask_phones("seq 123456789012345") == "seq 123456789012345"


def test_logs_never_carry_a_phone_number() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    structlog.get_logger("t").info("sent", dest="01098765432", note="to 01098765432")
    line = json.loads(out.getvalue())
    assert "01098765432" not in out.getvalue()
    assert line["dest"] == "010****5432"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("821012345678", "8210****5678"),
        ("+821012345678", "+8210****5678"),
        ("+82 10-1234-5678", "+82 10-****-5678"),
        ("+82-10-1234-5678", "+82-10-****-5678"),
        ("+82 (0)10-1234-5678", "+82 (0)10-****-5678"),
        ("82 10 1234 5678", "82 10 **** 5678"),
        ("010.1234.5678", "010.****.5678"),
        ("010.123.4567", "010.***.4567"),
        ("(010)1234-5678", "(010)****-5678"),
        ("to 010.1234.5678, +82 10-9876-5432 and 821055556666.", None),
    ],
)
def test_every_written_form_of_a_korean_number_is_masked(text: str, masked: str | None) -> None:
    out = mask_phones(text)
    if masked is not None:
        assert out == masked
    assert not re.search(r"[0-9]{3,4}[-. ]?[0-9]{4}(?![0-9])", out.replace("5678", "")), out
    assert "1234" not in out and "9876" not in out and "5555" not in out


def test_numbers_that_are_not_phones_stay() -> None:
    for text in ("seq 123456789012345", "run 20261202 batch 1000", "v1.2.3", "8.2 s", "1588-6000"):
        assert mask_phones(text) == text


def test_logs_mask_numbers_in_nested_values_and_numbers() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    structlog.get_logger("t").info(
        "sent",
        recipient={"dest": "+82 10-1234-5678", "parts": ["010.1234.5678"]},
        raw=821012345678,
        pairs=[("dest", "821012345678")],
    )
    text = out.getvalue()
    assert "1234" not in text, text
    line = json.loads(text)
    assert line["recipient"]["dest"] == "+82 10-****-5678"
    assert line["raw"] == "8210****5678"
