"""Durable receipts of the test phones, in PostgreSQL.

A message read from a modem is recorded here *before* it is deleted from the
modem, so a crash can neither lose nor double it: a message found again after a
restart (recorded, not yet deleted) hits the partial unique index and is only
deleted. Receipts older than the retention are pruned by the scheduler.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from config.model import ModemConfig
from config.names import message_hash, normalise_phone
from drivers.base import Received
from drivers.pdu import Kind


@dataclass(frozen=True, slots=True)
class Recorded:
    id: int
    new: bool


def digest(received: Received) -> str:
    return hashlib.sha256("|".join(received.raw).encode()).hexdigest()


async def record(
    pool: asyncpg.Pool, node_id: str, modem: ModemConfig, received: Received
) -> Recorded:
    message = received.message
    text = message.text
    subject = message.mms.subject if message.mms else None
    key = digest(received)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """INSERT INTO modem_receipts (node_id, modem, carrier, phone, kind, sender,
                   sender_raw, text, text_hash, subject, mms_size, mms_location, complete,
                   sent_at, storage_indices, raw_pdus, pdu_digest, via)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                       $17, $18)
               ON CONFLICT (node_id, modem, pdu_digest, storage_indices)
                   WHERE NOT deleted_from_modem DO NOTHING
               RETURNING id""",
            node_id,
            modem.label,
            modem.carrier.value,
            modem.phone,
            "mms-notification" if message.kind == Kind.MMS_NOTIFICATION else "sms",
            normalise_phone(message.sender),
            message.sender,
            text,
            message_hash(subject if subject is not None else text),
            subject,
            message.mms.size if message.mms else None,
            message.mms.location if message.mms else None,
            message.complete,
            message.timestamp,
            list(received.indices),
            list(received.raw),
            key,
            received.via,
        )
        if row is not None:
            return Recorded(int(row["id"]), True)
        existing = await conn.fetchval(
            """SELECT id FROM modem_receipts WHERE node_id = $1 AND modem = $2
                   AND pdu_digest = $3 AND storage_indices = $4 AND NOT deleted_from_modem""",
            node_id,
            modem.label,
            key,
            list(received.indices),
        )
        return Recorded(int(existing), False)


async def mark_deleted(pool: asyncpg.Pool, receipt_id: int) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE modem_receipts SET deleted_from_modem = true WHERE id = $1", receipt_id
        )


async def prune(pool: asyncpg.Pool, node_id: str, retention: timedelta) -> int:
    async with pool.acquire() as conn:
        result = await conn.execute(
            "DELETE FROM modem_receipts WHERE node_id = $1 AND received_at < now() - $2::interval"
            " AND deleted_from_modem",
            node_id,
            retention,
        )
    return int(result.split()[-1])
