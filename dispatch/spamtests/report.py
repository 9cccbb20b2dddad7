"""The JSON shape of a spam test's report (`hanjulloctl spam-test show`, the daemon's
``/v1/spam-tests``), built from its rows. Pure; the rows come from `store.py:show`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config.names import MessageType
from dispatch.fairness import Row
from dispatch.spamtests.contract import CANARY, CARRIERS
from dispatch.spamtests.rules import overall


def _carrier_report(rows: Sequence[Row]) -> dict[str, Any]:
    """One carrier's verdict from its message types' rows (the worse one wins)."""
    if not rows:
        return {"verdict": None, "status_code": None, "receipt_delay_s": None}
    verdict = overall([r["result"] for r in rows])
    chosen = rows[0]
    for row in rows:
        if row["result"] == verdict:
            chosen = row
            break
    delay = chosen["receipt_delay_s"]
    report: dict[str, Any] = {
        "verdict": verdict.value if verdict else None,
        "status_code": chosen["status_code"],
        "receipt_delay_s": round(delay, 2) if delay is not None else None,
    }
    if any(r["late"] for r in rows):
        report["late"] = True
        late = [r["late_delay_s"] for r in rows if r["late_delay_s"] is not None]
        report["late_delay_s"] = round(max(late), 2) if late else None
        # The verdict the late receipt turned into `pass`.
        report["late_from"] = next((r["late_from"] for r in rows if r["late_from"]), None)
    details = [r["detail"] for r in rows if r["detail"]]
    if details:
        report["detail"] = "; ".join(details)
    if chosen["modem"]:
        report["modem"] = chosen["modem"]
    return report


def report(test: Row, results: Sequence[Row]) -> dict[str, Any]:
    """The JSON shape of one test: always all three carriers."""
    carriers = {
        c: _carrier_report([r for r in results if r["carrier"] == c])
        for c in (CARRIERS if test["source"] != CANARY else [r["carrier"] for r in results])
    }
    created = test["created_at"]
    completed = test["completed_at"]
    return {
        "test_id": str(test["id"]),
        "status": test["status"],
        "overall": test["overall"],
        "carriers": carriers,
        "company": test["company_id"],
        "source": test["source"],
        "variant": test["variant_id"],
        "batch_id": str(test["batch_id"]) if test["batch_id"] else None,
        "message_type": (
            MessageType.LMS if test["message_content_sms"] is None else MessageType.SMS
        ).value,
        "created_at": created.isoformat(),
        "started_at": test["started_at"].isoformat() if test["started_at"] else None,
        "completed_at": completed.isoformat() if completed else None,
        "duration_s": round((completed - created).total_seconds(), 2) if completed else None,
        "reason": test["status_reason"],
        "web": test["web"],
    }
