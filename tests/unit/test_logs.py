from __future__ import annotations

import io
import json

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
