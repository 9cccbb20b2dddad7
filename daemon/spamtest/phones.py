"""The phone pool: which phone a test gets per carrier, which test agent table its rows
go to, why a carrier has no usable phone, and freeing a phone once no test waits on it.

Tests share a phone when no receipt can be confused between them: a test may join a busy
phone only when each receipt it expects there is distinguishable
(`dispatch/spamtests/rules.py:distinguishable`) from every receipt other active tests
still wait for on it, so a receipt matches at most one undecided slot of a phone. A free
phone goes before a shared one (the longest-free first), and among shared phones the one
with the fewest undecided slots; otherwise the test waits. A phone flagged by a missed
canary is left out (except by its own canary), and a test waits while a usable phone is
busy with a receipt it could be confused with, or still in its first open after the
start (docs/test-phones.md, "Sharing a phone"). Agent health is
`daemon.agents.agent_is_down`, the node's one rule. Must not do I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from config.model import ModemConfig
from config.names import GroupType
from daemon.agents import agent_is_down
from daemon.spamtest.context import SpamContext
from daemon.spamtest.state import ActiveTest, Slot
from dispatch.fairness import Row
from dispatch.spamtests.contract import CARRIERS
from dispatch.spamtests.rules import Expected, distinguishable, expected_hash

# How long after the start queued tests wait for modems still opening for the first time.
STARTUP_WAIT_S = 30.0
_NEVER = datetime.min.replace(tzinfo=UTC)


def test_tables(ctx: SpamContext) -> list[tuple[int, str]]:
    """(agent number, table) of every agent of the test line groups."""
    config = ctx.runtime.config
    out = []
    for group in config.line_groups:
        if group.type == GroupType.TEST:
            out += [(n, config.agent(n).table) for n in group.agents]
    return out


def pick_table(ctx: SpamContext) -> str | None:
    """The next test agent table, round robin over the healthy ones (over all of them
    when none is healthy: the rows wait for the agent rather than the test failing)."""
    tables = test_tables(ctx)
    if not tables:
        return None
    healthy = [t for n, t in tables if not agent_is_down(ctx.agents.statuses.get(n))] or [
        t for _, t in tables
    ]
    ctx.rr += 1
    return healthy[ctx.rr % len(healthy)]


def modem_configs(ctx: SpamContext, carrier: str) -> list[ModemConfig]:
    return [m for m in ctx.runtime.config.modems if m.carrier.value == carrier]


def modem_config(ctx: SpamContext, label: str | None) -> ModemConfig | None:
    return next((m for m in ctx.runtime.config.modems if m.label == label), None)


def expected_receipts(test: ActiveTest) -> list[Expected]:
    """What the test's receipts are on each of its phones, one per message type (the
    `Expected` of the slots `sending.start` gives it)."""
    return [
        Expected.of(
            mtype,
            test.callback,
            expected_hash(mtype, test.text_for(mtype), test.subject),
            test.subject,
            test.lms_text,
        )
        for mtype in test.message_types
    ]


def waiting_on(ctx: SpamContext, label: str) -> list[Slot]:
    """The undecided slots of the active tests on a phone."""
    return [
        slot
        for test in ctx.active.values()
        for slot in test.slots
        if slot.modem == label and slot.result is None
    ]


def can_share(ctx: SpamContext, label: str, expected: Sequence[Expected]) -> bool:
    """Whether a test expecting these receipts may join the phone now: none of them can
    be confused with a receipt another active test still waits for there."""
    return all(
        distinguishable(e, slot.expected) for slot in waiting_on(ctx, label) for e in expected
    )


def plan(ctx: SpamContext, test: Row) -> dict[str, str | None] | None:
    """A phone per carrier for this test now, None for a carrier with no usable phone
    (device_error at once), or None overall when it must wait for a phone it cannot
    share yet (or one still opening)."""
    carriers: Sequence[str] = CARRIERS
    pinned = test["target_modem"]
    if pinned:
        config = modem_config(ctx, pinned)
        if config is None:
            return {}
        carriers = [config.carrier.value]
    expected = expected_receipts(ActiveTest.of(test, ctx.now()))
    chosen: dict[str, str | None] = {}
    for carrier in carriers:
        labels = [pinned] if pinned else [m.label for m in modem_configs(ctx, carrier)]
        usable = [
            label
            for label in labels
            if label in ctx.phones
            and ctx.phones[label].ready
            and (pinned or label not in ctx.flagged)
        ]
        free = [label for label in usable if label not in ctx.busy]
        shared = [
            label for label in usable if label in ctx.busy and can_share(ctx, label, expected)
        ]
        if free:
            chosen[carrier] = min(free, key=lambda label: ctx.freed_at.get(label, _NEVER))
        elif shared:
            chosen[carrier] = min(shared, key=lambda label: len(waiting_on(ctx, label)))
        elif usable or any(opening(ctx, label) for label in labels):
            return None
        else:
            chosen[carrier] = None
    return chosen


def opening(ctx: SpamContext, label: str) -> bool:
    """A modem still in its first open after the daemon started: worth waiting for
    (up to STARTUP_WAIT_S), rather than calling its carrier a device error."""
    phone = ctx.phones.get(label)
    return (
        phone is not None and not phone.settled and ctx.monotonic() - ctx.started < STARTUP_WAIT_S
    )


def unusable_reason(ctx: SpamContext, carrier: str, pinned: str | None) -> str:
    labels = [pinned] if pinned else [m.label for m in modem_configs(ctx, carrier)]
    if not labels:
        return f"no test phone configured for {carrier}"
    reasons = []
    for label in labels:
        phone = ctx.phones.get(label)
        if phone is None:
            reasons.append(f"{label}: not managed")
        elif not phone.ready:
            status = phone.status
            reasons.append(f"{label}: {status.state.value} ({status.reason})")
        elif label in ctx.flagged:
            reasons.append(f"{label}: missed its canary at {ctx.flagged[label].isoformat()[:19]}")
    return "; ".join(reasons) or f"no usable {carrier} phone"


def hold(ctx: SpamContext, slots: Sequence[Slot], test_id: uuid.UUID) -> None:
    """The phones of a test's undecided slots are busy with it (with whichever tests
    they already were)."""
    for slot in slots:
        if slot.result is None and slot.modem is not None:
            ctx.busy.setdefault(slot.modem, set()).add(test_id)


def free(ctx: SpamContext, slot: Slot) -> None:
    """The slot was decided: its phone is no longer busy with its test once nothing else
    of the test waits on it, and is freed once no undecided slot of an active test is on
    it. Wakes the engine either way: a test waiting for a receipt of this slot's kind to
    be settled on that phone may start now."""
    if slot.modem is not None and slot.modem in ctx.busy:
        release(ctx, slot.modem)
        ctx.wake.set()


def release(ctx: SpamContext, label: str) -> None:
    """The phone is busy with exactly the active tests that have an undecided slot on it
    (an ended or cancelled test is no longer active); with none it is freed now."""
    holders = {
        test.id
        for test in ctx.active.values()
        if any(s.modem == label and s.result is None for s in test.slots)
    }
    if holders:
        ctx.busy[label] = holders
    elif ctx.busy.pop(label, None) is not None:
        ctx.freed_at[label] = ctx.now()
