"""Spam-filter tests' library: the contract with the web service, the store and the pure
rules; the engine that runs tests on the phones is `daemon/spamtest/`.

Module by module:
- `contract.py`: the vocabulary (channel, carriers, `Verdict`, `TestStatus`) and a queued
  test's spec and intake check;
- `rules.py`: receipt matching, a carrier's verdict and its timing, the overall verdict,
  the blocked grace, a phone's canary flag (pure);
- `report.py`: the JSON shape of a test's report (pure);
- `store.py`: every PostgreSQL statement on the spam-test tables and on the attribution
  of ``hanjullo.modem_receipts`` (functions taking a connection);
- `agent_rows.py`: what the engine reads of its rows in the test agent tables (MySQL);
- `receipts.py`: the phones' receipts in ``hanjullo.modem_receipts`` (record, deletion mark, prune);
- `devices.py`: the node's test phones in the web's ``spam_filter_devices`` (functions taking
  a connection).
Names the CLI and the web service's side use are re-exported here.
"""

from dispatch.spamtests.contract import (
    CARRIERS,
    NOTIFY_CHANNEL,
    SpamTestRejected,
    SpamTestSpec,
    TestStatus,
    Verdict,
    dumps,
)
from dispatch.spamtests.report import report
from dispatch.spamtests.rules import (
    OVERALL_ORDER,
    Decision,
    Expected,
    SlotFacts,
    canary_flag,
    decide,
    expected_hash,
    grace_for,
    overall,
    read_due,
    receipt_delay,
)
from dispatch.spamtests.store import create_tests, show

__all__ = [
    "CARRIERS",
    "NOTIFY_CHANNEL",
    "OVERALL_ORDER",
    "Decision",
    "Expected",
    "SlotFacts",
    "SpamTestRejected",
    "SpamTestSpec",
    "TestStatus",
    "Verdict",
    "canary_flag",
    "create_tests",
    "decide",
    "dumps",
    "expected_hash",
    "grace_for",
    "overall",
    "read_due",
    "receipt_delay",
    "report",
    "show",
]
