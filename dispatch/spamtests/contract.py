"""The spam-filter test contract: the vocabulary and what a queued test must be.

The web service creates a test in its ``spam_filter_tests`` (or `hanjulloctl spam-test`
does, as the web's queue would, and NOTIFYs `NOTIFY_CHANNEL`); the engine
(`daemon/spamtest/`) takes it into ``hanjullo.spam_tests`` under the same id, runs it and
writes one ``hanjullo.spam_test_results`` row per (carrier × message type), and the
verdicts into the web's result rows (`web.py`). Owns the names of that
contract (channel, carriers, verdicts, statuses, sources) and the intake check of a
test (`SpamTestSpec.check`); holds no SQL (`store.py`) and no rule of a verdict
(`rules.py`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from config.names import is_callback_number
from dispatch.guards import LMS_MAX_BYTES, SMS_MAX_BYTES, byte_length, run_field_problems

NOTIFY_CHANNEL = "hanjullo_spam_tests"
CARRIERS = ("SKT", "KT", "LGU")
# The source of the daemon's own tests of one phone (`daemon/spamtest/canaries.py`).
CANARY = "canary"


class Verdict(StrEnum):
    PASS = "pass"
    BLOCKED = "blocked"
    FAILED = "failed"
    DEVICE_ERROR = "device_error"
    TIMEOUT = "timeout"


class TestStatus(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class SpamTestRejected(ValueError):
    """The test cannot be run as given; nothing was queued."""


@dataclass(frozen=True, slots=True)
class SpamTestSpec:
    node_id: str
    callback: str
    sms_text: str | None = None
    lms_text: str | None = None
    subject: str | None = None
    company_id: str | None = None
    user_id: str | None = None
    source: str = "manual"
    variant: str | None = None
    run_id: uuid.UUID | None = None
    target_modem: str | None = None

    def check(self) -> None:
        if not is_callback_number(self.callback):
            raise SpamTestRejected(f"{self.callback!r} is not a sender number")
        problems = run_field_problems(self.company_id, self.callback, self.subject)
        if problems:
            raise SpamTestRejected("; ".join(problems))
        if self.sms_text is None and self.lms_text is None:
            raise SpamTestRejected("a test needs an SMS text or an LMS text with a subject")
        if self.sms_text is not None:
            if not self.sms_text.strip():
                raise SpamTestRejected("the SMS text is empty")
            if byte_length(self.sms_text) > SMS_MAX_BYTES:
                raise SpamTestRejected(
                    f"the SMS text is {byte_length(self.sms_text)} bytes in EUC-KR, over "
                    f"{SMS_MAX_BYTES}; test it as an LMS (--lms --subject S)"
                )
        if self.lms_text is not None:
            # The web's queue sends an LMS with an empty subject (stq:339): its receipt then
            # matches by sender and size (docs/test-phones.md, "Matching an LMS").
            if self.subject is None:
                raise SpamTestRejected("an LMS test needs a subject, '' for none")
            if not self.lms_text.strip():
                raise SpamTestRejected("the LMS text is empty")
            if byte_length(self.lms_text) > LMS_MAX_BYTES:
                raise SpamTestRejected(
                    f"the LMS text is {byte_length(self.lms_text)} bytes, over {LMS_MAX_BYTES}"
                )


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
