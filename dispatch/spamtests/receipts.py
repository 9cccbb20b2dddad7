"""The test phones' receipts in ``hanjullo.modem_receipts``: recording a message before the
modem's copy is deleted, the deletion mark, pruning.

A message found again after a restart (recorded, not yet deleted) hits the partial unique
index and is only looked up, so a crash can neither lose nor double it. What a receipt's
columns are is decided by the daemon from the driver's message (`daemon/receipts.py`);
attributing a receipt to a test is `store.py`. Functions take a connection; no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatch.store.runs import Conn


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    """One message read from a test phone, as ``hanjullo.modem_receipts`` stores it."""

    modem: str  # the phone's label
    carrier: str
    phone: str
    kind: str  # 'sms' | 'mms-notification' | 'wap-push' | 'undecodable'
    sender: str  # normalised
    sender_raw: str
    text: str
    text_hash: str  # an SMS: its text's; an MMS notification: its subject's
    subject: str | None
    mms_size: int | None
    mms_location: str | None
    complete: bool
    sent_at: datetime | None
    storage_indices: list[int]
    raw_pdus: list[str]
    pdu_digest: str
    via: str


@dataclass(frozen=True, slots=True)
class Recorded:
    id: int
    new: bool


async def record(conn: Conn, node_id: str, row: ReceiptRow) -> Recorded:
    """Record a receipt, or find the one recorded before (not yet deleted from the modem)."""
    recorded = await conn.fetchrow(
        """INSERT INTO hanjullo.modem_receipts (node_id, modem, carrier, phone, kind, sender,
               sender_raw, text, text_hash, subject, mms_size, mms_location, complete,
               sent_at, storage_indices, raw_pdus, pdu_digest, via)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                   $17, $18)
           ON CONFLICT (node_id, modem, pdu_digest, storage_indices)
               WHERE NOT deleted_from_modem DO NOTHING
           RETURNING id""",
        node_id,
        row.modem,
        row.carrier,
        row.phone,
        row.kind,
        row.sender,
        row.sender_raw,
        row.text,
        row.text_hash,
        row.subject,
        row.mms_size,
        row.mms_location,
        row.complete,
        row.sent_at,
        row.storage_indices,
        row.raw_pdus,
        row.pdu_digest,
        row.via,
    )
    if recorded is not None:
        return Recorded(int(recorded["id"]), True)
    existing = await conn.fetchval(
        """SELECT id FROM hanjullo.modem_receipts WHERE node_id = $1 AND modem = $2
               AND pdu_digest = $3 AND storage_indices = $4 AND NOT deleted_from_modem""",
        node_id,
        row.modem,
        row.pdu_digest,
        row.storage_indices,
    )
    return Recorded(int(existing), False)


async def mark_deleted(conn: Conn, receipt_id: int) -> None:
    await conn.execute(
        "UPDATE hanjullo.modem_receipts SET deleted_from_modem = true WHERE id = $1", receipt_id
    )


async def prune(conn: Conn, node_id: str, retention: timedelta) -> int:
    """Delete receipts older than `retention` that are off their modem; how many."""
    result = await conn.execute(
        "DELETE FROM hanjullo.modem_receipts"
        " WHERE node_id = $1 AND received_at < now() - $2::interval"
        " AND deleted_from_modem",
        node_id,
        retention,
    )
    return int(str(result).split()[-1])
