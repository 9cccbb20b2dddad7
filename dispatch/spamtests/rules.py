"""The spam-test rules, pure: receipt matching and which expected receipts can share a
phone, a carrier's verdict and when it is due, the overall verdict, the blocked grace,
receipt delays and a phone's canary flag.

Everything here is a function of its arguments (times are passed in, never read from a
clock), so each rule is unit-tested on its own and the engine (`daemon/spamtest/`)
composes them. Must not do I/O or hold state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from config.model import SpamTestSection
from config.names import MessageType, message_hash, normalise_phone, stored_text
from dispatch.agent_tables import is_success
from dispatch.fairness import Row
from dispatch.guards import byte_length
from dispatch.spamtests.contract import Verdict

# Below this many observed receipts a carrier's grace is the configured initial value.
MIN_SAMPLES = 5

# The overall verdict is the first of these present (pass only when all passed).
OVERALL_ORDER = (Verdict.BLOCKED, Verdict.FAILED, Verdict.DEVICE_ERROR, Verdict.TIMEOUT)


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
        """`receipt`: a hanjullo.modem_receipts row (sender normalised when it was recorded)."""
        if receipt["sender"] != self.sender:
            return False
        if self.mtype == MessageType.SMS:
            # A multi-part text whose parts never all arrived is not the test's text.
            return bool(
                receipt["text_hash"] == self.text_hash
                and receipt["kind"] == "sms"
                and receipt["complete"]
            )
        if receipt["kind"] != "mms-notification":
            return False
        size = receipt["mms_size"]
        if not receipt["subject"]:
            # Some MMSCs send the notification with an empty or no Subject (gammu's
            # tests/at-sms/40.dump): then sender and a stated size that holds the body
            # decide (docs/test-phones.md, "Matching an LMS").
            return size is not None and size >= self.min_size > 0
        if receipt["text_hash"] != self.text_hash or receipt["subject"] != self.subject:
            return False
        return size is None or size >= self.min_size


def distinguishable(a: Expected, b: Expected) -> bool:
    """True when no receipt can match both `a` and `b` (`Expected.matches`), so the two
    may wait on one phone at once: a different sender, a different message type (an SMS
    matches only an ``sms`` receipt, an LMS only an ``mms-notification``), or two SMS of
    different texts. Two LMS of one sender never are: a notification with an empty
    subject matches by sender and size alone (docs/test-phones.md, "Sharing a phone")."""
    if a.sender != b.sender or a.mtype != b.mtype:
        return True
    return a.mtype == MessageType.SMS and a.text_hash != b.text_hash


def expected_hash(mtype: MessageType, text: str, subject: str | None) -> str:
    """The text_hash a receipt of this message carries (hashed as receipts store texts,
    `config.names.stored_text`)."""
    return message_hash(stored_text(text if mtype == MessageType.SMS else (subject or "")))


def receipt_delay(inserted_at: datetime | None, received_at: datetime) -> float | None:
    """Seconds from the agent-table insert to the receipt (never negative), or None when
    the insert time is unknown."""
    if inserted_at is None:
        return None
    return round(max(0.0, (received_at - inserted_at).total_seconds()), 3)


# ---- verdict rules --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SlotFacts:
    """What is known about one carrier × message type of an active test. Times are
    seconds on a monotonic clock (durations only: a step of the system clock must not
    end a grace)."""

    inserted_at: float
    received: bool
    agent_code: int | None  # a final code, None while the agent has not reported
    success_seen_at: float | None

    @property
    def agent_success(self) -> bool:
        return self.agent_code is not None and is_success(self.agent_code)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    detail: str


def read_due(facts: SlotFacts, now: float, grace_s: float, storage_read_at: float | None) -> bool:
    """True when only a complete read of the phone's storage after the grace ran out
    stands between this slot and `blocked`: the engine asks the phone for one."""
    return (
        not facts.received
        and facts.agent_success
        and facts.success_seen_at is not None
        and now - facts.success_seen_at >= grace_s
        and (storage_read_at is None or storage_read_at < facts.success_seen_at + grace_s)
    )


def capped_grace(
    grace_s: float, success_seen_at: float | None, deadline: float | None, read_s: float
) -> float:
    """The grace before `blocked`, cut so that it and a storage read after it (`read_s`)
    end by the test's `deadline` (monotonic; None: no deadline)."""
    if deadline is None or success_seen_at is None:
        return grace_s
    return min(grace_s, deadline - read_s - success_seen_at)


def decide(
    facts: SlotFacts,
    now: float,
    grace_s: float,
    timeout_s: float,
    watched: bool,
    storage_read_at: float | None = None,
    read_wait_s: float = 0.0,
    deadline: float | None = None,
    min_grace_s: float = 0.0,
) -> Decision | None:
    """The verdict of a slot now (monotonic seconds, as the facts), or None to keep
    waiting.

    `watched`: the phone's modem was ready (and its storage read) for the whole
    time since the send, so the absence of a receipt means something.
    `storage_read_at`: when the phone's storage was last read completely, every message
    in it recorded (and attributed). `blocked` needs such a read after the grace ran out;
    without one within `read_wait_s` more, nothing can be concluded (`device_error`).
    `deadline`: by when the slot must be decided (the web's window); the grace is cut to
    end before it (`capped_grace`, `read_wait_s` left for the read), and a grace cut below
    `min_grace_s` cannot make `blocked`. What is undecided at the deadline is `timeout`
    (`device_error` when the modem was not watched): never `blocked`.
    """
    if facts.received:
        return Decision(Verdict.PASS, "received")
    if facts.agent_code is not None and not facts.agent_success:
        return Decision(Verdict.FAILED, f"agent reported {facts.agent_code}")
    if facts.agent_success and facts.success_seen_at is not None:
        waited = now - facts.success_seen_at
        grace = capped_grace(grace_s, facts.success_seen_at, deadline, read_wait_s)
        blockable = grace >= min(grace_s, min_grace_s)
        if blockable and waited >= grace:
            if not watched:
                return Decision(
                    Verdict.DEVICE_ERROR, "the modem was not ready at some moment since the send"
                )
            if storage_read_at is not None and storage_read_at >= facts.success_seen_at + grace:
                return Decision(Verdict.BLOCKED, f"nothing arrived {waited:.1f}s after the success")
        if deadline is not None and now >= deadline:
            if blockable and waited >= grace:
                return Decision(
                    Verdict.DEVICE_ERROR,
                    "the phone's storage could not be read after the grace ran out",
                )
            return _at_deadline(watched, "the agent's success came too late for the grace")
        if not blockable or waited < grace + read_wait_s:
            return None
        return Decision(
            Verdict.DEVICE_ERROR, "the phone's storage could not be read after the grace ran out"
        )
    if deadline is not None and now >= deadline:
        return _at_deadline(watched, "no agent result")
    if now - facts.inserted_at < timeout_s:
        return None
    if watched:
        return Decision(Verdict.TIMEOUT, f"no agent result within {timeout_s:.0f}s")
    return Decision(
        Verdict.DEVICE_ERROR, "no agent result, and the modem was not ready at some moment"
    )


def _at_deadline(watched: bool, why: str) -> Decision:
    if watched:
        return Decision(Verdict.TIMEOUT, f"{why} before the web's window ended")
    return Decision(
        Verdict.DEVICE_ERROR,
        f"{why} before the web's window ended, and the modem was not ready at some moment",
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


# ---- canaries -------------------------------------------------------------------------------
def canary_flag(flagged_since: datetime | None, verdict: Verdict, now: datetime) -> datetime | None:
    """A phone's flag after one of its canaries ended with `verdict`: a blocked canary
    flags it (since now: its verdicts are device_error until it passes again), a pass
    clears the flag, anything else (a failure, a device error, a timeout) says nothing
    about its spam filter and leaves the flag as it was."""
    if verdict == Verdict.BLOCKED:
        return now
    if verdict == Verdict.PASS:
        return None
    return flagged_since
