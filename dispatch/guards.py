"""Korean sending rules checked before anything reaches an agent table.

Per recipient: a valid mobile number, not a duplicate within the run, not opted
out (advertising runs), within the byte limit of its type counted in EUC-KR
(CP949), a subject that fits ``title_str``, and an image for MMS. Per run (and
spam test): a company id, sender number and subject that fit the agent-table
columns every row repeats. Per run: an advertising run must start with
``(광고)`` and carry a free opt-out number (080…), and may only be sent 08:00-21:00
KST. Every skip has a reason and is counted; nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, Protocol

from config.clock import KST
from config.names import MessageType, is_mobile, normalise_phone
from dispatch.agent_tables import VARCHAR_WIDTHS

SMS_MAX_BYTES = 90
LMS_MAX_BYTES = 2000
AD_PREFIX = "(광고)"
AD_WINDOW = (time(8, 0), time(21, 0))
_OPT_OUT = re.compile(r"080[- ]?[0-9]{3,4}[- ]?[0-9]{4}")


class SkipReason(StrEnum):
    INVALID_NUMBER = "invalid_number"
    DUPLICATE = "duplicate"
    OPTED_OUT = "opted_out"
    TOO_LONG = "too_long"
    SUBJECT_TOO_LONG = "subject_too_long"
    MMS_WITHOUT_IMAGE = "mms_without_image"


class RunRejected(ValueError):
    """A run that must not be sent at all; the message names the field and the fix."""


def byte_length(text: str) -> int:
    """Length as the carriers count it: EUC-KR/CP949, 2 bytes per Hangul syllable.
    A character CP949 cannot encode counts as 2 bytes (it will be sent as such)."""
    try:
        return len(text.encode("cp949"))
    except UnicodeEncodeError:
        pass
    total = 0
    for ch in text:
        try:
            total += len(ch.encode("cp949"))
        except UnicodeEncodeError:
            total += 2
    return total


# The LMS/MMS subject goes to title_str; it is checked per recipient (a recipient may carry
# its own) and such a recipient is skipped like an over-long text.
SUBJECT_MAX_CHARS = VARCHAR_WIDTHS["title_str"]

# What every agent row of a run or spam test repeats: (field, column, its fix).
_RUN_FIELDS = (
    ("company_id", "app_etc2", "use the company's id as the web service stores it"),
    ("callback", "call_back", "write the number alone, e.g. 0212345678 or 02-1234-5678"),
    ("subject", "title_str", "shorten the subject (carriers show about 40 bytes)"),
)


def run_field_problems(company_id: str | None, callback: str, subject: str | None) -> list[str]:
    """Run-level values too long for the agent-table column they are written to; each
    names the field, its length, the column's width and the fix."""
    values = {"company_id": company_id, "callback": callback, "subject": subject}
    problems = []
    for name, column, fix in _RUN_FIELDS:
        value = values[name]
        width = VARCHAR_WIDTHS[column]
        if value is not None and len(value) > width:
            # A sender number is shown (it is the operator's); the others only by length.
            shown = f"{name} {value!r}" if name == "callback" else name
            problems.append(
                f"{shown} is {len(value)} characters, over the {width} of {column} in the "
                f"agent tables; fix: {fix}"
            )
    return problems


def check_ad_run(is_ad: bool, sample_text: str) -> None:
    """Raise RunRejected when an advertising run breaks the law's form."""
    if not is_ad:
        return
    if not sample_text.lstrip().startswith(AD_PREFIX):
        raise RunRejected(
            f"advertising message must start with {AD_PREFIX!r}; fix: prefix the text, or send "
            "without --ad if it is not an advertisement"
        )
    if not _OPT_OUT.search(sample_text):
        raise RunRejected(
            "advertising message must carry a free opt-out number (080-…); fix: add e.g. "
            "'무료거부 080-123-4567' to the text"
        )


def in_ad_window(moment: datetime) -> bool:
    local = moment.astimezone(KST).time()
    return AD_WINDOW[0] <= local < AD_WINDOW[1]


def next_ad_window_start(moment: datetime) -> datetime:
    """The next 08:00 KST at or after `moment` (for a held run)."""
    local = moment.astimezone(KST)
    start = local.replace(hour=8, minute=0, second=0, microsecond=0)
    if local >= start:
        start += timedelta(days=1)
    return start


def next_ad_window_edge(moment: datetime) -> datetime:
    """The next 08:00 or 21:00 KST strictly after `moment`: when advertising runs must
    be resumed or held (the dispatcher wakes then instead of at its next poll)."""
    local = moment.astimezone(KST)
    edges = [
        datetime.combine(local.date() + timedelta(days=day), edge, KST)
        for day in (0, 1)
        for edge in AD_WINDOW
    ]
    return min(e for e in edges if e > local)


@dataclass(frozen=True, slots=True)
class Verdict:
    phone_norm: str
    skip: SkipReason | None


def check_recipient(
    phone: str,
    text: str,
    subject: str | None,
    attachments: list[str] | None,
    message_type: MessageType,
    opted_out: bool,
) -> Verdict:
    """Every per-recipient guard except duplicates (those need the whole run)."""
    digits = normalise_phone(phone)
    if not is_mobile(digits):
        return Verdict(digits, SkipReason.INVALID_NUMBER)
    if opted_out:
        return Verdict(digits, SkipReason.OPTED_OUT)
    limit = SMS_MAX_BYTES if message_type == MessageType.SMS else LMS_MAX_BYTES
    # No character takes more than 2 bytes, so a short text needs no encoding.
    if len(text) * 2 > limit and byte_length(text) > limit:
        return Verdict(digits, SkipReason.TOO_LONG)
    if subject is not None and len(subject) > SUBJECT_MAX_CHARS:
        return Verdict(digits, SkipReason.SUBJECT_TOO_LONG)
    if message_type == MessageType.MMS and not any(
        a.lower().endswith((".jpg", ".jpeg")) for a in attachments or []
    ):
        return Verdict(digits, SkipReason.MMS_WITHOUT_IMAGE)
    return Verdict(digits, None)


class Fields(Protocol):
    """A row read by name: an ``asyncpg.Record``, or a dict in a test."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(slots=True)
class CheckedPage:
    """What the guard pass writes for one page of a run's recipients: only the recipients
    that are skipped or whose number needed normalising (`seqs`, `norms`, `reasons`,
    reason None = not skipped), the skip counts, and the page's last seq."""

    last_seq: int
    seqs: list[int] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def check_page(
    page: Sequence[Fields], message_type: MessageType, opted_out: set[str], seen: set[str]
) -> CheckedPage:
    """Check one page of recipients (seq, phone, message_text, subject, attachments) in
    ``seq`` order. `opted_out`: numbers of the page the sending user's opt-outs hold.
    `seen`: the numbers of the run checked so far, updated here; a number already in it is
    a duplicate, so the first occurrence wins."""
    checked = CheckedPage(last_seq=page[-1]["seq"])
    for r in page:
        digits = normalise_phone(r["phone"])
        verdict = check_recipient(
            r["phone"],
            r["message_text"],
            r["subject"],
            r["attachments"],
            message_type,
            digits in opted_out,
        )
        skip = verdict.skip.value if verdict.skip else None
        if skip is None:
            if verdict.phone_norm in seen:
                skip = SkipReason.DUPLICATE.value
            else:
                seen.add(verdict.phone_norm)
        if skip is None and verdict.phone_norm == r["phone"]:
            continue
        if skip is not None:
            checked.counts[skip] += 1
        checked.seqs.append(r["seq"])
        checked.norms.append(verdict.phone_norm)
        checked.reasons.append(skip)
    return checked
