"""Names that end up pasted into SQL or compared across processes.

This module owns the one place where an agent table name is accepted. Nothing
here touches a database; it only decides what a name may look like.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum

# `[0-9]` rather than `\d`: `\d` also accepts Arabic-Indic and full-width digits.
# `fullmatch` rather than `match(...$)`: `$` also matches before a trailing newline.
_AGENT_TABLE = re.compile(r"SMSQ_SEND(_[0-9]{1,3})?")
_ANY_AGENT_TABLE = re.compile(r"SMSQ_SEND(_[0-9]{1,3})?(_[0-9]{6})?")


class Carrier(StrEnum):
    SKT = "SKT"
    KT = "KT"
    LGU = "LGU"


class MessageType(StrEnum):
    """The one message-type vocabulary of the node: the web service's ``SMS|LMS|MMS``
    (campaigns, spam tests), with the agent tables' one-letter ``msg_type`` derived."""

    SMS = "SMS"
    LMS = "LMS"
    MMS = "MMS"

    @property
    def agent_code(self) -> str:
        """The agent table's ``msg_type``: ``S``, ``L`` or ``M``."""
        return self.value[0]

    @classmethod
    def from_agent_code(cls, code: str) -> MessageType:
        for member in cls:
            if member.agent_code == code:
                return member
        raise ValueError(f"not an agent msg_type: {code!r}")


class GroupType(StrEnum):
    BULK = "bulk"
    TEST = "test"
    AUTH = "auth"


def is_agent_table(name: str) -> bool:
    """True when `name` is a live agent table name such as ``SMSQ_SEND_3``."""
    return isinstance(name, str) and _AGENT_TABLE.fullmatch(name) is not None


def checked_table(name: str) -> str:
    """Return `name` unchanged if it is a live or monthly log agent table, else raise.

    Every identifier that is formatted into SQL passes through here first.
    """
    if not isinstance(name, str) or _ANY_AGENT_TABLE.fullmatch(name) is None:
        raise ValueError(f"not an agent table name: {name!r}")
    return name


def log_table(table: str, month: date) -> str:
    """The monthly result table of a live agent table, e.g. ``SMSQ_SEND_3_202611``."""
    if not is_agent_table(table):
        raise ValueError(f"not an agent table name: {table!r}")
    return checked_table(f"{table}_{month.year:04d}{month.month:02d}")


def add_months(day: date, months: int) -> date:
    """First day of the month `months` after the month of `day`."""
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


_MOBILE = re.compile(r"01[016789][0-9]{7,8}")
_SERVICE = re.compile(r"1[5-9][0-9]{6}")


def normalise_phone(raw: str) -> str:
    """Digits-only domestic form of a Korean number: ``+82 10-1234-5678`` → ``01012345678``.

    Returns the cleaned digits even when they are not a valid mobile number; use
    :func:`is_mobile` to check.
    """
    if raw.isascii() and raw.isdigit() and raw.startswith("0"):
        return raw  # already domestic digits: the common case, kept cheap
    digits = "".join(ch for ch in raw if ch in "0123456789")
    if raw.strip().startswith("+82") or (digits.startswith("82") and len(digits) >= 10):
        national = digits[2:].lstrip("0")
        # Service numbers (1588-xxxx, 1644-xxxx …) are dialled without a trunk zero.
        digits = national if _SERVICE.fullmatch(national) else "0" + national
    return digits


def international(raw: str) -> str:
    """``01012345678`` → ``+821012345678``; ``15886000`` → ``+8215886000``."""
    digits = normalise_phone(raw)
    return "+82" + (digits[1:] if digits.startswith("0") else digits)


def is_mobile(digits: str) -> bool:
    return _MOBILE.fullmatch(digits) is not None


def is_callback_number(raw: str) -> bool:
    """A plausible sender number: 8-12 digits once normalised (02-1234-5678, 1588-6000,
    010…). Whether the carriers know it is theirs to say (9008)."""
    return 8 <= len(normalise_phone(raw)) <= 12 and any(ch.isdigit() for ch in raw)


# JavaScript's \s (ECMAScript WhiteSpace and LineTerminator): what the web's hash removes.
# Python's str.split() differs (it also splits at U+001C-001F and U+0085, not at U+FEFF).
_JS_WHITESPACE = re.compile(
    "["
    + re.escape(
        "\t\n\v\f\r \u00a0\u1680"
        + "".join(chr(c) for c in range(0x2000, 0x200B))
        + "\u2028\u2029\u202f\u205f\u3000\ufeff"
    )
    + "]+"
)


def message_hash(text: str) -> str:
    """The matching key of a message text, the web service's computeMessageHash
    (utils/spam-test-queue.ts:105-113): SHA-256 of the text with every run of JavaScript
    whitespace removed, first 16 hex digits."""
    import hashlib

    stripped = _JS_WHITESPACE.sub("", text)
    return hashlib.sha256(stripped.encode("utf-8")).hexdigest()[:16]


# A received text as PostgreSQL's text type can hold it: NUL is not allowed there, and a
# UCS2 or 8-bit SMS can decode to one. Backslash escapes keep it lossless.
_STORED_ESCAPES = {"\\": "\\\\", "\x00": "\\0"}
_STORED = re.compile(r"[\\\x00]")
_ORIGINAL = re.compile(r"\\([\\0])")


def stored_text(text: str) -> str:
    """`text` with each backslash doubled and each NUL as ``\\0``: what ``hanjullo.modem_receipts``
    stores and what receipts are matched on (`original_text` reverses it)."""
    return _STORED.sub(lambda m: _STORED_ESCAPES[m.group(0)], text)


def original_text(stored: str) -> str:
    """The text `stored_text` was given."""
    return _ORIGINAL.sub(lambda m: "\x00" if m.group(1) == "0" else "\\", stored)
