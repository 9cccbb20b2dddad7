"""Canaries: the engine's own test of each phone, every `spam_tests.canary_interval_s`,
with a text its carrier must let through. A phone that misses one (blocked) is flagged
and left out of tests, its carrier's verdicts device_error, until it passes one again
(`dispatch/spamtests/rules.py:canary_flag`). Must not do I/O other than queuing the
canaries through `SpamBook`.
"""

from __future__ import annotations

import uuid

import structlog

from daemon.spamtest.context import SpamContext
from daemon.spamtest.state import ActiveTest
from dispatch.spamtests.contract import CANARY, SpamTestSpec, Verdict
from dispatch.spamtests.rules import canary_flag

log = structlog.get_logger("spamtests")


def canary_done(ctx: SpamContext, test: ActiveTest, verdict: Verdict) -> None:
    label = test.target_modem
    if label is None:
        return
    now = ctx.now()
    ctx.last_canary[label] = {"at": now.isoformat(), "verdict": verdict.value}
    if verdict == Verdict.BLOCKED:
        ctx.runtime.metrics.canary_misses.labels(label).inc()
    was = ctx.flagged.get(label)
    flag = canary_flag(was, verdict, now)
    if flag is None:
        ctx.flagged.pop(label, None)
        if was is not None:
            log.info("test phone passed its canary again", modem=label)
        return
    if was is None:
        log.error(
            "test phone missed its canary: its verdicts are device_error until it "
            "passes one again (check its SIM, balance and spam filter)",
            modem=label,
        )
    ctx.flagged[label] = flag


def queued_canaries(ctx: SpamContext) -> set[str]:
    return {q["target_modem"] for q in ctx.queue_view if q.get("target_modem") is not None}


async def queue_canaries(ctx: SpamContext) -> None:
    """Queue a canary for each phone whose interval has passed and that has none queued
    or running."""
    section = ctx.section
    if section.canary_interval_s <= 0 or not section.canary_callback:
        return
    now = ctx.monotonic()
    pending = {t.target_modem for t in ctx.active.values() if t.source == CANARY}
    queued = queued_canaries(ctx)
    specs = []
    for config in ctx.runtime.config.modems:
        label = config.label
        due = ctx.canary_due.get(label)
        if due is not None and now < due:
            continue
        if label in pending or label in queued:
            continue
        ctx.canary_due[label] = now + section.canary_interval_s
        specs.append(
            SpamTestSpec(
                node_id=ctx.node_id,
                callback=section.canary_callback,
                sms_text=f"{section.canary_text} {uuid.uuid4().hex[:8]}",
                source=CANARY,
                target_modem=label,
            )
        )
    if specs:
        await ctx.book.create_tests(specs)
