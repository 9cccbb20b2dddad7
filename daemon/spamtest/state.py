"""What the engine remembers of an active test: its slots (one per carrier × message
type) and where each stands. Built from a queued test's row when it starts and from its
rows again after a restart. Plain data: no I/O, no decisions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from config.names import MessageType
from dispatch.fairness import Row
from dispatch.spamtests.rules import Expected


@dataclass(slots=True)
class Slot:
    """One carrier × message type of an active test."""

    result_id: int
    carrier: str
    mtype: MessageType  # SMS | LMS
    modem: str | None
    phone: str | None
    table: str | None
    expected: Expected
    seqno: int | None = None
    inserted_at: datetime | None = None
    agent_code: int | None = None
    success_seen_at: datetime | None = None
    received_at: datetime | None = None
    result: str | None = None
    detail: str | None = None
    # Monotonic twins of inserted_at and success_seen_at: what durations are timed on.
    sent_mono: float | None = None
    success_mono: float | None = None
    # Whether the seqno and insert time are in PostgreSQL (they are retried until so).
    sent_recorded: bool = True
    # Passed by a receipt that came after its verdict (its delay is sampled then, once).
    late: bool = False

    @property
    def sendable(self) -> bool:
        return self.modem is not None and self.table is not None

    @classmethod
    def restored(cls, result: Row, test: Row) -> Slot:
        """A slot from its ``hanjullo.spam_test_results`` row and its test's row."""
        mtype = MessageType(result["message_type"])
        return cls(
            result["id"],
            result["carrier"],
            mtype,
            result["modem"],
            result["phone"],
            result["sms_table"],
            Expected.of(
                mtype,
                test["callback_number"],
                result["message_hash"],
                test["message_subject"],
                test["message_content_lms"],
            ),
            result["sms_msgkey"],
            result["inserted_at"],
            result["status_code"],
            result["success_seen_at"],
            result["received_at"],
            result["result"],
            result["detail"],
            late=bool(result["late"]),
        )


@dataclass(slots=True)
class ActiveTest:
    id: uuid.UUID
    company: str | None
    source: str
    callback: str
    sms_text: str | None
    lms_text: str | None
    subject: str | None
    run_id: uuid.UUID | None
    variant: str | None
    batch_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime
    target_modem: str | None = None
    slots: list[Slot] = field(default_factory=list)
    started_mono: float = 0.0  # monotonic: when this engine started (or resumed) it
    web: bool = False  # the web's spam_filter_tests row of the same id
    # Monotonic: by when every slot must be decided (a web test: the web's window from its
    # created_at, less the margin; None: no window).
    deadline: float | None = None

    def text_for(self, mtype: MessageType) -> str:
        text = self.sms_text if mtype == MessageType.SMS else self.lms_text
        assert text is not None
        return text

    @property
    def message_types(self) -> list[MessageType]:
        """The message types the test sends: SMS and/or LMS, as its texts say."""
        return [
            t
            for t, text in ((MessageType.SMS, self.sms_text), (MessageType.LMS, self.lms_text))
            if text
        ]

    @classmethod
    def of(cls, row: Row, now: datetime) -> ActiveTest:
        """A test from its ``hanjullo.spam_tests`` row (`now` when it has not started)."""
        return cls(
            row["id"],
            row["company_id"],
            row["source"],
            row["callback_number"],
            row["message_content_sms"],
            row["message_content_lms"],
            row["message_subject"],
            row["run_id"],
            row["variant_id"],
            row["batch_id"],
            row["created_at"],
            row["started_at"] or now,
            row["target_modem"],
            web=bool(row["web"]),
        )
