"""The spam-filter test contract: intake, verdict rules, grace, queue order, reports.

The web service (or `hanjulloctl spam-test`) inserts a queued row into
``spam_filter_tests`` and NOTIFYs ``hanjullo_spam_tests``; the engine in
``daemon/spamtests.py`` runs it and writes one ``spam_filter_test_results`` row
per (carrier × message type). Everything here is free of I/O except the
functions taking a connection, so the rules are unit-tested on their own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from config.model import SpamTestSection
from config.names import MessageType, is_callback_number, message_hash, normalise_phone
from dispatch.agent_tables import is_success
from dispatch.fairness import Row
from dispatch.guards import LMS_MAX_BYTES, SMS_MAX_BYTES, byte_length, run_field_problems

NOTIFY_CHANNEL = "hanjullo_spam_tests"
CARRIERS = ("SKT", "KT", "LGU")

# Below this many observed receipts a carrier's grace is the configured initial value.
MIN_SAMPLES = 5


class Verdict(StrEnum):
    PASS = "pass"
    BLOCKED = "blocked"
    FAILED = "failed"
    DEVICE_ERROR = "device_error"
    TIMEOUT = "timeout"


# The overall verdict is the first of these present (pass only when all passed).
OVERALL_ORDER = (Verdict.BLOCKED, Verdict.FAILED, Verdict.DEVICE_ERROR, Verdict.TIMEOUT)


class TestStatus(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class SpamTestRejected(ValueError):
    """The test cannot be run as given; nothing was queued."""


def overall(verdicts: Iterable[str | None]) -> Verdict | None:
    """Overall verdict of a set of per-carrier verdicts; None while any is undecided."""
    values = list(verdicts)
    if not values or any(v is None for v in values):
        return None
    if all(v == Verdict.PASS for v in values):
        return Verdict.PASS
    for verdict in OVERALL_ORDER:
        if verdict in values:
            return verdict
    raise ValueError(f"unknown verdicts {values}")


# ---- intake ---------------------------------------------------------------------------------
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
            if not (self.subject or "").strip():
                raise SpamTestRejected("an LMS test needs a subject (it is how receipts match)")
            if byte_length(self.lms_text) > LMS_MAX_BYTES:
                raise SpamTestRejected(
                    f"the LMS text is {byte_length(self.lms_text)} bytes, over {LMS_MAX_BYTES}"
                )


async def create_tests(
    conn: Any, specs: Sequence[SpamTestSpec], batch: bool = False
) -> tuple[list[uuid.UUID], uuid.UUID | None]:
    """Queue the tests in one transaction (a batch shares one batch_id); NOTIFY the daemon.

    ``created_at`` is the clock time of each insert, not the transaction's, so the
    tests of a batch keep their order in the first-in-first-out queue."""
    for spec in specs:
        spec.check()
    batch_id = uuid.uuid4() if batch else None
    ids: list[uuid.UUID] = []
    async with conn.transaction():
        for spec in specs:
            text = spec.sms_text if spec.sms_text is not None else spec.lms_text
            assert text is not None
            test_id = await conn.fetchval(
                """INSERT INTO spam_filter_tests (node_id, company_id, user_id, callback_number,
                       message_content_sms, message_content_lms, message_subject, message_hash,
                       source, variant_id, batch_id, run_id, target_modem, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                           clock_timestamp())
                   RETURNING id""",
                spec.node_id,
                spec.company_id,
                spec.user_id,
                spec.callback,
                spec.sms_text,
                spec.lms_text,
                spec.subject,
                message_hash(text),
                spec.source,
                spec.variant,
                batch_id,
                spec.run_id,
                spec.target_modem,
            )
            ids.append(test_id)
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return ids, batch_id


# ---- receipt matching -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Expected:
    """What a receipt must be to belong to one carrier × message type of a test."""

    mtype: MessageType  # SMS | LMS
    sender: str  # normalised
    text_hash: str  # an SMS: its text's; an LMS: its subject's (how the MMS notification shows)
    subject: str | None = None
    min_size: int = 0  # an LMS body's bytes: a notification stating less is not it

    @classmethod
    def of(
        cls,
        mtype: MessageType,
        callback: str,
        text_hash: str,
        subject: str | None,
        body: str | None,
    ) -> Expected:
        if mtype == MessageType.SMS:
            return cls(mtype, normalise_phone(callback), text_hash)
        return cls(mtype, normalise_phone(callback), text_hash, subject, byte_length(body or ""))

    def matches(self, receipt: Row) -> bool:
        """`receipt`: a modem_receipts row (sender normalised when it was recorded)."""
        if receipt["sender"] != self.sender or receipt["text_hash"] != self.text_hash:
            return False
        if self.mtype == MessageType.SMS:
            # A multi-part text whose parts never all arrived is not the test's text.
            return bool(receipt["kind"] == "sms" and receipt["complete"])
        if receipt["kind"] != "mms-notification" or receipt["subject"] != self.subject:
            return False
        size = receipt["mms_size"]
        return size is None or size >= self.min_size


def expected_hash(mtype: MessageType, text: str, subject: str | None) -> str:
    """The text_hash a receipt of this message carries."""
    return message_hash(text if mtype == MessageType.SMS else (subject or ""))


# ---- verdict rules --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SlotFacts:
    """What is known about one carrier × message type of an active test."""

    inserted_at: datetime
    received: bool
    agent_code: int | None  # a final code, None while the agent has not reported
    success_seen_at: datetime | None

    @property
    def agent_success(self) -> bool:
        return self.agent_code is not None and is_success(self.agent_code)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    detail: str


def decide(
    facts: SlotFacts,
    now: datetime,
    grace_s: float,
    timeout_s: float,
    watched: bool,
) -> Decision | None:
    """The verdict of a slot now, or None to keep waiting.

    `watched`: the phone's modem was ready (and its storage read) for the whole
    time since the send, so the absence of a receipt means something.
    """
    if facts.received:
        return Decision(Verdict.PASS, "received")
    if facts.agent_code is not None and not facts.agent_success:
        return Decision(Verdict.FAILED, f"agent reported {facts.agent_code}")
    if facts.agent_success and facts.success_seen_at is not None:
        waited = (now - facts.success_seen_at).total_seconds()
        if waited < grace_s:
            return None
        if watched:
            return Decision(Verdict.BLOCKED, f"nothing arrived {waited:.1f}s after the success")
        return Decision(
            Verdict.DEVICE_ERROR, "the modem was not ready at some moment since the send"
        )
    if (now - facts.inserted_at).total_seconds() < timeout_s:
        return None
    if watched:
        return Decision(Verdict.TIMEOUT, f"no agent result within {timeout_s:.0f}s")
    return Decision(
        Verdict.DEVICE_ERROR, "no agent result, and the modem was not ready at some moment"
    )


def grace_for(samples: Sequence[float], section: SpamTestSection) -> float:
    """Seconds to wait after the agent's success before calling a message blocked.

    Built from the receipt delays (success → receipt) recently observed on this
    carrier: the 95th percentile plus max(1 s, 5 %), never below the slowest recent
    receipt plus one second, within [grace_min_s, grace_max_s]. With fewer than
    MIN_SAMPLES observations it is grace_initial_s, or the slowest of them plus one
    second if that is longer (a late receipt widens the grace at once).
    """
    ordered = sorted(samples)
    if len(ordered) < MIN_SAMPLES:
        # Too few to estimate a percentile, but never shorter than a receipt already seen.
        floor = ordered[-1] + 1.0 if ordered else 0.0
        return round(min(section.grace_max_s, max(section.grace_initial_s, floor)), 2)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    grace = max(p95 + max(1.0, 0.05 * p95), ordered[-1] + 1.0)
    return round(min(section.grace_max_s, max(section.grace_min_s, grace)), 2)


# ---- reports --------------------------------------------------------------------------------
def _carrier_report(rows: Sequence[Row]) -> dict[str, Any]:
    """One carrier's verdict from its message types' rows (the worse one wins)."""
    if not rows:
        return {"verdict": None, "status_code": None, "receipt_delay_s": None}
    verdict = overall([r["result"] for r in rows])
    chosen = rows[0]
    for row in rows:
        if row["result"] == verdict:
            chosen = row
            break
    delay = chosen["receipt_delay_s"]
    report: dict[str, Any] = {
        "verdict": verdict.value if verdict else None,
        "status_code": chosen["status_code"],
        "receipt_delay_s": round(delay, 2) if delay is not None else None,
    }
    if any(r["late"] for r in rows):
        report["late"] = True
        late = [r["late_delay_s"] for r in rows if r["late_delay_s"] is not None]
        report["late_delay_s"] = round(max(late), 2) if late else None
    details = [r["detail"] for r in rows if r["detail"]]
    if details:
        report["detail"] = "; ".join(details)
    if chosen["modem"]:
        report["modem"] = chosen["modem"]
    return report


def report(test: Row, results: Sequence[Row]) -> dict[str, Any]:
    """The JSON shape of one test: always all three carriers."""
    carriers = {
        c: _carrier_report([r for r in results if r["carrier"] == c])
        for c in (CARRIERS if test["source"] != "canary" else [r["carrier"] for r in results])
    }
    created = test["created_at"]
    completed = test["completed_at"]
    return {
        "test_id": str(test["id"]),
        "status": test["status"],
        "overall": test["overall"],
        "carriers": carriers,
        "company": test["company_id"],
        "source": test["source"],
        "variant": test["variant_id"],
        "batch_id": str(test["batch_id"]) if test["batch_id"] else None,
        "message_type": (
            MessageType.LMS if test["message_content_sms"] is None else MessageType.SMS
        ).value,
        "created_at": created.isoformat(),
        "started_at": test["started_at"].isoformat() if test["started_at"] else None,
        "completed_at": completed.isoformat() if completed else None,
        "duration_s": round((completed - created).total_seconds(), 2) if completed else None,
        "reason": test["status_reason"],
    }


TEST_COLUMNS = """id, company_id, status, overall, source, variant_id, batch_id,
    message_content_sms, created_at, started_at, completed_at, status_reason"""
RESULT_COLUMNS = """test_id, carrier, message_type, modem, result, status_code,
    receipt_delay_s, late, late_delay_s, detail"""


async def show(conn: asyncpg.Connection, ident: uuid.UUID) -> list[dict[str, Any]]:
    """Reports of a test, or of every test of a batch (by batch id); [] when unknown."""
    tests = await conn.fetch(
        f"SELECT {TEST_COLUMNS} FROM spam_filter_tests WHERE id = $1 OR batch_id = $1"
        " ORDER BY created_at, variant_id, id",
        ident,
    )
    if not tests:
        return []
    results = await conn.fetch(
        f"SELECT {RESULT_COLUMNS} FROM spam_filter_test_results WHERE test_id = ANY($1::uuid[])"
        " ORDER BY carrier, message_type",
        [t["id"] for t in tests],
    )
    return [report(t, [r for r in results if r["test_id"] == t["id"]]) for t in tests]


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
