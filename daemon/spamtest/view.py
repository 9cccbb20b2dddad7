"""The spam tests' part of ``/v1/status``: the queue, the active and recent tests, the
grace per carrier, the phones and their registration with the web. Reads only the
engine's memory: no I/O, no decisions.
"""

from __future__ import annotations

from typing import Any

from daemon.spamtest.context import SpamContext
from daemon.spamtest.state import ActiveTest
from dispatch.spamtests.contract import CARRIERS
from dispatch.spamtests.rules import receipt_delay


def test_view(ctx: SpamContext, test: ActiveTest, verdict: str | None) -> dict[str, Any]:
    now = ctx.now()
    carriers: dict[str, Any] = {}
    for slot in test.slots:
        entry: dict[str, Any] = {
            "verdict": slot.result,
            "modem": slot.modem,
            "status_code": slot.agent_code,
        }
        if slot.result is None:
            if slot.agent_code is None:
                entry["waiting_for"] = "agent result"
            else:
                left = ctx.grace(slot.carrier) - (
                    ctx.monotonic() - slot.success_mono if slot.success_mono is not None else 0.0
                )
                entry["waiting_for"] = f"receipt (blocked in {max(0.0, left):.1f}s)"
        if slot.received_at and slot.inserted_at:
            entry["receipt_delay_s"] = receipt_delay(slot.inserted_at, slot.received_at)
        if slot.detail:
            entry["detail"] = slot.detail
        carriers[slot.carrier] = entry
    return {
        "test_id": str(test.id),
        "company": test.company,
        "source": test.source,
        "variant": test.variant,
        "batch_id": str(test.batch_id) if test.batch_id else None,
        "status": "active" if verdict is None else "completed",
        "overall": verdict,
        "elapsed_s": round((now - test.started_at).total_seconds(), 1),
        "web": test.web,
        # A web test: seconds left until every carrier must be decided (the web's window).
        "decide_within_s": (
            round(max(0.0, test.deadline - ctx.monotonic()), 1)
            if test.deadline is not None and verdict is None
            else None
        ),
        "carriers": carriers,
    }


def web_devices(ctx: SpamContext) -> dict[str, Any]:
    """The phones' registration in the web's device table (`web_devices.py`)."""
    return {
        "registered_at": ctx.devices_at.isoformat() if ctx.devices_at is not None else None,
        "active": ctx.devices_done.active if ctx.devices_done is not None else None,
        "error": ctx.devices_error,
    }


def snapshot(ctx: SpamContext) -> dict[str, Any]:
    phones = []
    for label, phone in ctx.phones.items():
        flagged = ctx.flagged.get(label)
        phones.append(
            {
                "modem": label,
                "carrier": phone.modem.carrier.value,
                "state": phone.status.state.value,
                # The tests waiting on it, oldest first (empty when it is free).
                "busy_with": [str(t) for t in ctx.active if t in ctx.busy.get(label, ())],
                "flagged": flagged is not None,
                "flagged_since": flagged.isoformat() if flagged is not None else None,
                "last_canary": ctx.last_canary.get(label),
            }
        )
    return {
        "queue": ctx.queue_view,
        "active": [test_view(ctx, t, None) for t in ctx.active.values()],
        "recent": list(ctx.recent),
        "grace_s": {c: ctx.grace(c) for c in CARRIERS},
        "receipt_samples": {c: len(ctx.samples.get(c, ())) for c in CARRIERS},
        "phones": phones,
        "web_devices": web_devices(ctx),
    }
