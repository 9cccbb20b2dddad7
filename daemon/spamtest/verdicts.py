"""Verdicts: each undecided slot is decided as soon as the rules allow
(`dispatch/spamtests/rules.py:decide`, on the engine's monotonic clock, the phone's watch
and its proof of a complete storage read after the grace, asked for when missing), and a
test whose every slot is decided completes with its overall verdict. Memory follows the
database: a verdict is kept once PostgreSQL has it.

Completing records the receipts' delays as grace samples, adds a run's blocked carriers
to its training row (through `dispatch/store/training.py`, the table's one owner), ends a
canary (`canaries.py`) and shows the test among the recent ones. Must not attribute a
receipt (`attribution.py`) or touch the agent tables.
"""

from __future__ import annotations

import structlog

from daemon.spamtest import canaries, phones
from daemon.spamtest.context import SpamContext
from daemon.spamtest.state import ActiveTest, Slot
from daemon.spamtest.view import test_view
from dispatch.runs import source_ref
from dispatch.spamtests.contract import CANARY, Verdict
from dispatch.spamtests.rules import (
    Decision,
    SlotFacts,
    capped_grace,
    decide,
    overall,
    read_due,
)
from dispatch.store.training import SpamBlocked

log = structlog.get_logger("spamtests")

# How long after the grace a phone has to prove its storage was read completely before
# the carrier is a device_error instead of blocked: a forced read is one AT+CMGL and its
# receipts recorded, well under a second on a working phone. A test with a deadline (the
# web's window) keeps this long after its grace for the read.
READ_WAIT_S = 10.0


async def decide_all(ctx: SpamContext) -> None:
    now = ctx.monotonic()
    for test in list(ctx.active.values()):
        decided: list[tuple[Slot, Decision]] = []
        for slot in test.slots:
            if slot.result is not None or slot.modem is None:
                continue
            phone = ctx.phones.get(slot.modem)
            since = slot.sent_mono if slot.sent_mono is not None else test.started_mono
            facts = SlotFacts(
                since, slot.received_at is not None, slot.agent_code, slot.success_mono
            )
            grace = ctx.grace(slot.carrier)
            proof = ctx.read_proofs.get(slot.modem)
            decision = decide(
                facts,
                now,
                grace,
                ctx.section.timeout_s,
                phone is not None and phone.watched_since(since),
                storage_read_at=proof,
                read_wait_s=READ_WAIT_S,
                deadline=test.deadline,
                min_grace_s=ctx.section.grace_min_s,
            )
            if decision is not None:
                decided.append((slot, decision))
            elif phone is not None and read_due(
                facts,
                now,
                capped_grace(grace, slot.success_mono, test.deadline, READ_WAIT_S),
                proof,
            ):
                phone.request_read()
        if decided:
            await ctx.book.record_verdicts([(s.result_id, d.verdict, d.detail) for s, d in decided])
            for slot, decision in decided:
                slot.result, slot.detail = decision.verdict.value, decision.detail
                phones.free(ctx, slot)
                log.info(
                    "spam test verdict",
                    test=str(test.id),
                    carrier=slot.carrier,
                    verdict=slot.result,
                    detail=slot.detail,
                )
        if all(s.result is not None for s in test.slots):
            await complete(ctx, test)


async def complete(ctx: SpamContext, test: ActiveTest) -> None:
    verdict = overall(s.result for s in test.slots) or Verdict.DEVICE_ERROR
    for slot in test.slots:
        if slot.result == Verdict.PASS and slot.received_at and slot.success_seen_at:
            if slot.late:
                continue  # sampled when it came (`attribution.late`)
            ctx.sample(slot.carrier, (slot.received_at - slot.success_seen_at).total_seconds())
    blocked = sum(1 for s in test.slots if s.result == Verdict.BLOCKED)
    training = None
    if test.run_id is not None:  # the latest test of the run's text: 0 counts too
        secret = ctx.runtime.config.dispatch.training_secret.get_secret_value()
        training = SpamBlocked(source_ref(secret, test.run_id), blocked)
    await ctx.book.complete_test(test.id, verdict, training)
    ctx.active.pop(test.id, None)
    for slot in test.slots:
        ctx.runtime.metrics.spam_verdicts.labels(
            slot.carrier, slot.result or "none", test.source
        ).inc()
    if test.source == CANARY:
        canaries.canary_done(ctx, test, verdict)
    ctx.recent.appendleft(test_view(ctx, test, verdict.value))
    log.info(
        "spam test completed",
        test=str(test.id),
        overall=verdict.value,
        verdicts={s.carrier: s.result for s in test.slots},
        elapsed_s=round((ctx.now() - test.started_at).total_seconds(), 2),
    )
