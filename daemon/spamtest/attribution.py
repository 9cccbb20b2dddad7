"""Receipt attribution: which test a receipt recorded on a phone belongs to.

Receipts are read from ``hanjullo.modem_receipts`` where not yet attributed, in id order,
so one recorded while the engine was down is attributed after it starts. A receipt goes to
the slot on its phone that it matches (sender and text hash, or MMS subject and size:
`dispatch/spamtests/rules.py:Expected`), among every active test on that phone: an
undecided slot passes. Tests share a phone only when no receipt can match the undecided
slots of two of them (`phones.py`), so at most one undecided slot matches. One matching
only a slot already decided, or a decided test's row of the last day, is *late*: the row
passes, marked late with the verdict it had, and the delay widens the carrier's grace.
Anything else is unmatched. A receipt recorded before a test started (both times
PostgreSQL's) is never that test's. Memory follows the database: a slot passes in memory
only once PostgreSQL has the pass. Each pass ends by noting the phones' proofs of a
complete storage read as they stood before it began, now that every receipt recorded
until then is attributed (what `blocked` needs). Must not time a verdict (`verdicts.py`).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import structlog

from config.logs import mask_phones
from config.names import MessageType
from daemon.spamtest import phones
from daemon.spamtest.context import SpamContext
from daemon.spamtest.state import Slot
from dispatch.fairness import Row
from dispatch.spamtests.contract import Verdict
from dispatch.spamtests.rules import Expected, receipt_delay

log = structlog.get_logger("spamtests")

# Receipts attributed per pass; the rest wait for the next pass.
RECEIPT_BATCH = 200
# How far back a receipt may be attributed late to a decided test.
LATE_HORIZON = timedelta(days=1)


async def attribute_receipts(ctx: SpamContext) -> None:
    ctx.read_proofs = {}
    proofs = {label: phone.storage_read_at for label, phone in ctx.phones.items()}
    receipts = await ctx.book.unmatched_receipts(RECEIPT_BATCH)
    for receipt in receipts:
        await attribute(ctx, receipt)
    if len(receipts) < RECEIPT_BATCH:  # else some recorded before the proofs wait
        ctx.read_proofs = proofs


async def attribute(ctx: SpamContext, receipt: Row) -> None:
    modem = receipt["modem"]
    candidates = [
        (test, slot)
        for test in ctx.active.values()
        for slot in test.slots
        if slot.modem == modem
        # Recorded before the test started: not its text, whatever it says.
        and receipt["received_at"] >= test.started_at
        and slot.received_at is None
        and slot.expected.matches(receipt)
    ]
    # The undecided slot it matches, if any, before a decided one: a test of the same
    # text may start on a phone once the earlier test's slot there is decided (while
    # that test still waits elsewhere), and its own receipt must pass it, not end as
    # another late one of the earlier test.
    candidates.sort(key=lambda pair: pair[1].result is not None)
    for test, slot in candidates:
        if slot.result is None:
            delay = receipt_delay(slot.inserted_at, receipt["received_at"])
            await ctx.book.record_receipt(
                slot.result_id, test.id, receipt["id"], receipt["received_at"], delay
            )
            slot.received_at = receipt["received_at"]
            slot.result, slot.detail = Verdict.PASS.value, None
            if delay is not None:
                ctx.runtime.metrics.receipt_delay.labels(slot.carrier).observe(delay)
            phones.free(ctx, slot)
            log.info(
                "spam test receipt",
                test=str(test.id),
                carrier=slot.carrier,
                modem=modem,
                delay_s=delay,
            )
            return
        await late(ctx, receipt, test.id, slot)
        return
    # A decided test no longer in memory: a late receipt?
    for row in await ctx.book.decided_unreceived(modem, LATE_HORIZON, receipt["received_at"]):
        mtype = MessageType(row["message_type"])
        expected = Expected.of(
            mtype,
            row["callback_number"],
            row["message_hash"],
            row["message_subject"],
            row["message_content_lms"],
        )
        if expected.matches(receipt):
            slot = Slot(
                row["id"],
                row["carrier"],
                mtype,
                modem,
                None,
                None,
                expected,
                inserted_at=row["inserted_at"],
                success_seen_at=row["success_seen_at"],
                result=row["result"],
            )
            await late(ctx, receipt, row["test_id"], slot)
            return
    await ctx.book.mark_receipt(receipt["id"], "unmatched", None)
    log.info(
        "receipt matches no test",
        receipt=receipt["id"],
        modem=modem,
        sender=mask_phones(receipt["sender"]),
    )


async def late(ctx: SpamContext, receipt: Row, test_id: uuid.UUID, slot: Slot) -> None:
    """A receipt of a slot already decided: the slot passes, marked late with the verdict
    it had (in the web's row too, as the web's receipt route does), the test's overall
    verdict follows, and the delay is sampled (the grace widens)."""
    delay = receipt_delay(slot.inserted_at, receipt["received_at"])
    judged = slot.result
    now_overall = await ctx.book.record_late(
        slot.result_id, test_id, receipt["id"], receipt["received_at"], delay
    )
    slot.result, slot.received_at, slot.late = Verdict.PASS.value, receipt["received_at"], True
    slot.detail = f"received after it was judged {judged}"
    if slot.success_seen_at is not None:
        ctx.sample(slot.carrier, (receipt["received_at"] - slot.success_seen_at).total_seconds())
    for shown in ctx.recent:
        if shown["test_id"] == str(test_id) and slot.carrier in shown["carriers"]:
            shown["carriers"][slot.carrier].update(
                late=True, late_from=judged, verdict=Verdict.PASS.value
            )
            if now_overall is not None:
                shown["overall"] = now_overall.value
    log.warning(
        "receipt arrived after its verdict",
        test=str(test_id),
        carrier=slot.carrier,
        verdict=judged,
        now=Verdict.PASS.value,
        delay_s=delay,
        grace_now_s=ctx.grace(slot.carrier),
    )
