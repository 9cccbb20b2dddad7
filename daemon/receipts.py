"""Durable receipts of the test phones: a driver's message as a ``hanjullo.modem_receipts`` row.

A message read from a modem is recorded *before* it is deleted from the modem, so a crash
can neither lose nor double it: a message found again after a restart (recorded, not yet
deleted) hits the partial unique index and is only deleted. Receipts older than the
retention are pruned by the scheduler. This module decides the row's columns from the
driver's message (it may import `drivers`); the statements are
`dispatch/spamtests/receipts.py`.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import asyncpg

from config.model import ModemConfig
from config.names import message_hash, normalise_phone, stored_text
from dispatch.spamtests import receipts as store
from dispatch.spamtests.receipts import ReceiptRow, Recorded
from drivers.base import Received

__all__ = ["UNDECODABLE", "Recorded", "digest", "mark_deleted", "prune", "record", "row_of"]

# The kind of a receipt whose PDU the codec rejects.
UNDECODABLE = "undecodable"


def digest(received: Received) -> str:
    return hashlib.sha256("|".join(received.raw).encode()).hexdigest()


def row_of(modem: ModemConfig, received: Received) -> ReceiptRow:
    """The receipt row of a message read from `modem`. Texts are kept as
    `config.names.stored_text` makes them (a NUL escaped), and hashed in that form, as a
    test's expected hash is (`dispatch/spamtests/rules.py:expected_hash`)."""
    message = received.message
    if message is None:
        # Undecodable: kept as the raw PDUs; it matches no test (no sender, not complete).
        return ReceiptRow(
            modem=modem.label,
            carrier=modem.carrier.value,
            phone=modem.phone,
            kind=UNDECODABLE,
            sender="",
            sender_raw="",
            text="",
            text_hash="",
            subject=None,
            mms_size=None,
            mms_location=None,
            complete=False,
            sent_at=None,
            storage_indices=list(received.indices),
            raw_pdus=list(received.raw),
            pdu_digest=digest(received),
            via=received.via,
        )
    text = stored_text(message.text)
    subject = message.mms.subject if message.mms else None
    subject = stored_text(subject) if subject is not None else None
    return ReceiptRow(
        modem=modem.label,
        carrier=modem.carrier.value,
        phone=modem.phone,
        kind=message.kind.value,  # sms, mms-notification or wap-push (never a status report)
        sender=normalise_phone(message.sender),
        sender_raw=stored_text(message.sender),
        text=text,
        text_hash=message_hash(subject if subject is not None else text),
        subject=subject,
        mms_size=message.mms.size if message.mms else None,
        mms_location=stored_text(message.mms.location) if message.mms else None,
        complete=message.complete,
        sent_at=message.timestamp,
        storage_indices=list(received.indices),
        raw_pdus=list(received.raw),
        pdu_digest=digest(received),
        via=received.via,
    )


async def record(
    pool: asyncpg.Pool, node_id: str, modem: ModemConfig, received: Received
) -> Recorded:
    async with pool.acquire() as conn:
        return await store.record(conn, node_id, row_of(modem, received))


async def mark_deleted(pool: asyncpg.Pool, receipt_id: int) -> None:
    async with pool.acquire() as conn:
        await store.mark_deleted(conn, receipt_id)


async def prune(pool: asyncpg.Pool, node_id: str, retention: timedelta) -> int:
    async with pool.acquire() as conn:
        return await store.prune(conn, node_id, retention)
