"""Spam-test speed against the reference policy, with every verdict checked.

Runs a full simulated node (simulators + daemon) with the simulator's default
per-carrier delays and a KT rule blocking one word. After a warm-up (the grace
learns each carrier's receipt delays, as it would have on a node in service),
it submits a batch of 9 tests at once: three companies × variants A/B/C, where
company 1's A, company 2's B and company 3's C contain the blocked word.

Every verdict is checked against the simulator's ground truth (its decision for
the agent row the test wrote): a wrong verdict exits 1.

The reference policy (today's web service) is replayed on the same per-message
delays measured in the run: one test at a time globally, its queue worker waking
every 3 s (averaged over the timer's phase); a receipt settles `pass` when it
arrives (the phone app pushes it into the results); the worker polls the results
every 5 s from the test's start, so it sees an agent's failure, the agent's
success (`blocked` is called 20 s after the first poll that saw it) and the test
being complete on its polls.

The engine lets tests share a phone when no receipt can be confused between them
(docs/test-phones.md, "Sharing a phone"): the nine texts differ, so with one phone per
carrier all nine run at once.

Prints
  (a) one phone per carrier: mean time from submission to verdict, reference ÷ engine
      (goal >= 1.3);
  (b) the mean delay from the last receipt to the test's completion, over tests
      whose verdict came from a receipt (goal < 2 s);
  (d) `one_phone_batch_speedup <x>`: time until the whole batch is judged, reference ÷
      engine, the engine with one phone per carrier (its tests sharing the phones) and
      the reference replayed on that run's delays (issue 17: within the web service's
      60-second window);
and on its last line
  (c) `speedup_vs_reference <x>`: time until the whole batch is judged, reference ÷
      engine, the engine with three phones per carrier (goal >= 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

# bench/dispatch.py is named like the `dispatch` package; this folder must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from simulators.harness import SimulatedNode, instance_database, running_node  # noqa: E402

CALLBACK = "0212345678"
BLOCKED_WORD = "무료"
COMPANIES = ("c1", "c2", "c3")
VARIANTS = ("A", "B", "C")
TEXTS = {
    "A": "{co} 가을 신상품 {w}안내: 오늘만 특별 혜택",
    "B": "{co} 회원님께 {w}드리는 감사 쿠폰 소식",
    "C": "{co} 매장 리뉴얼 {w}오픈 행사 초대",
}
REF_WAKE_S = 3.0
REF_POLL_S = 5.0
REF_GRACE_S = 20.0
# The reference worker's timer is not synchronised with submissions: every figure is
# the average over wake phases 0, 0.1 … 2.9 s.
PHASES = [i / 10 for i in range(int(REF_WAKE_S * 10))]


@dataclass(frozen=True, slots=True)
class Leg:
    """One carrier of one test, as measured: offsets from the row's insert."""

    carrier: str
    verdict: str
    success_s: float | None  # agent result seen
    receipt_s: float | None


@dataclass(frozen=True, slots=True)
class Measured:
    test_id: str
    company: str
    variant: str
    created_at: datetime
    completed_at: datetime
    last_receipt_at: datetime | None
    all_received: bool
    legs: list[Leg]


def submit(node: SimulatedNode, company: str, texts: list[str]) -> list[str]:
    args = ["spam-test", "--callback", CALLBACK, "--company", company, "--json"]
    for text in texts:
        args += ["--message", text]
    out = json.loads(node.ctl(*args).stdout)
    return list(out["test_ids"]) if "test_ids" in out else [out["test_id"]]


async def wait_done(node: SimulatedNode, ids: list[str], timeout_s: float) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database=instance_database())
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM hanjullo.spam_tests WHERE id = ANY($1::uuid[])"
                " AND status NOT IN ('completed', 'cancelled')",
                ids,
            )
            if left == 0:
                return
            await asyncio.sleep(0.5)
        raise SystemExit(f"tests not judged within {timeout_s:.0f}s")
    finally:
        await conn.close()


async def measure(ids: list[str]) -> list[Measured]:
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database=instance_database())
    try:
        tests = await conn.fetch(
            "SELECT id, company_id, variant_id, created_at, completed_at FROM hanjullo.spam_tests"
            " WHERE id = ANY($1::uuid[]) ORDER BY created_at",
            ids,
        )
        out = []
        for t in tests:
            rows = await conn.fetch(
                """SELECT carrier, result, inserted_at, success_seen_at, received_at
                   FROM hanjullo.spam_test_results WHERE test_id = $1""",
                t["id"],
            )
            legs = []
            for r in rows:
                base = r["inserted_at"]
                legs.append(
                    Leg(
                        r["carrier"],
                        r["result"],
                        (r["success_seen_at"] - base).total_seconds()
                        if r["success_seen_at"] and base
                        else None,
                        (r["received_at"] - base).total_seconds()
                        if r["received_at"] and base
                        else None,
                    )
                )
            receipts = [r["received_at"] for r in rows if r["received_at"]]
            out.append(
                Measured(
                    str(t["id"]),
                    t["company_id"],
                    t["variant_id"],
                    t["created_at"],
                    t["completed_at"],
                    max(receipts) if receipts else None,
                    all(r["result"] == "pass" for r in rows),
                    legs,
                )
            )
        return out
    finally:
        await conn.close()


async def check_truth(node: SimulatedNode, ids: list[str]) -> list[str]:
    """Every verdict against the simulator's decision for the row the test wrote."""
    status = json.loads(node.sim_ctl("status", "--json").stdout)
    decisions = {d["ref"]: d for d in status["network"]["decisions"]}
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database=instance_database())
    wrong = []
    try:
        rows = await conn.fetch(
            """SELECT test_id, carrier, sms_table, sms_msgkey, result
               FROM hanjullo.spam_test_results WHERE test_id = ANY($1::uuid[])""",
            ids,
        )
    finally:
        await conn.close()
    for r in rows:
        decision = decisions.get(f"{r['sms_table']}#{r['sms_msgkey']}")
        if decision is None:
            wrong.append(f"{r['test_id']} {r['carrier']}: no ground truth for its row")
            continue
        truth = (
            "failed"
            if decision["code"] not in (6, 1000)
            else ("blocked" if decision["blocked"] else "pass")
        )
        if truth != r["result"]:
            wrong.append(f"{r['test_id']} {r['carrier']}: verdict {r['result']}, truth {truth}")
    return wrong


def reference(tests: list[Measured], phase: float) -> list[float]:
    """Submission-to-verdict times of the reference policy on the measured delays, its
    queue worker waking at `phase` + 3k seconds after the submission."""
    clock = 0.0
    done = []
    for test in sorted(tests, key=lambda t: t.created_at):
        start = phase + math.ceil(max(0.0, clock - phase) / REF_WAKE_S - 1e-9) * REF_WAKE_S
        ends = []
        for leg in test.legs:
            if leg.verdict == "pass" and leg.receipt_s is not None:
                ends.append(start + leg.receipt_s)
                continue
            seen = leg.success_s if leg.success_s is not None else 0.0
            first_poll = max(1, math.ceil(seen / REF_POLL_S)) * REF_POLL_S
            ends.append(start + first_poll + (REF_GRACE_S if leg.verdict == "blocked" else 0.0))
        # The worker learns that every phone has settled on its next poll of the results.
        settled = max(ends) - start
        clock = start + max(1, math.ceil(settled / REF_POLL_S - 1e-9)) * REF_POLL_S
        done.append(clock)
    return done


def batch_speedup(label: str, engine: str, name: str, tests: list[Measured]) -> None:
    """Time until the whole batch is judged, engine and the reference replayed on the same
    delays (averaged over the wake phases); prints `<name> <reference ÷ engine>`."""
    start = min(t.created_at for t in tests)
    engine_s = max((t.completed_at - start).total_seconds() for t in tests)
    reference_s = statistics.mean(max(reference(tests, f)) for f in PHASES)
    print(
        f"({label}) whole batch judged: engine ({engine}) {engine_s:.1f}s, "
        f"reference (one test at a time) {reference_s:.1f}s"
    )
    print(f"{name} {reference_s / engine_s:.2f}")


def batch_texts(company: str) -> list[str]:
    index = COMPANIES.index(company)
    return [
        TEXTS[v].format(co=company, w=(BLOCKED_WORD + " ") if i == index else "")
        for i, v in enumerate(VARIANTS)
    ]


async def run_batch(node: SimulatedNode, label: str, warmup: int) -> list[Measured]:
    node.sim_ctl("rules", "KT", "--block-keyword", BLOCKED_WORD)
    print(f"[{label}] warm-up: {warmup} clean tests so the grace learns the carriers", flush=True)
    warm = [i for n in range(warmup) for i in submit(node, "warmup", [f"워밍업 안내 {n}"])]
    await wait_done(node, warm, 600)
    grace = node.status()["spam_tests"]["grace_s"]
    print(f"[{label}] grace after warm-up: {grace}", flush=True)
    ids: list[str] = []
    for company in COMPANIES:
        ids += submit(node, company, batch_texts(company))
    await wait_done(node, ids, 900)
    wrong = await check_truth(node, ids)
    if wrong:
        print(f"[{label}] WRONG VERDICTS:\n  " + "\n  ".join(wrong), flush=True)
        raise SystemExit(1)
    print(f"[{label}] all {len(ids) * 3} verdicts match the simulator's ground truth", flush=True)
    return await measure(ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=6)
    args = parser.parse_args()
    runs: dict[int, list[Measured]] = {}
    with tempfile.TemporaryDirectory(prefix="spamtest-bench-") as tmp:
        for phones, label in ((1, "one phone per carrier"), (3, "three phones per carrier")):
            # The simulator's default delays and the node's default spam-test settings.
            with running_node(Path(tmp) / str(phones), phones_per_carrier=phones) as node:
                runs[phones] = asyncio.run(run_batch(node, label, args.warmup))
    single, pooled = runs[1], runs[3]

    engine_a = [(t.completed_at - t.created_at).total_seconds() for t in single]
    ref_a = [
        statistics.mean(col) for col in zip(*(reference(single, f) for f in PHASES), strict=True)
    ]
    print(
        "(a) one phone per carrier, mean submission-to-verdict: "
        f"engine {statistics.mean(engine_a):.1f}s, reference {statistics.mean(ref_a):.1f}s"
    )
    for t, e in sorted(zip(single, engine_a, strict=True), key=lambda pair: pair[1]):
        verdicts = ",".join(f"{leg.carrier}:{leg.verdict}" for leg in t.legs)
        print(f"    {t.company}/{t.variant} {e:6.1f}s  {verdicts}")
    print(
        f"mean_verdict_speedup_one_phone {statistics.mean(ref_a) / statistics.mean(engine_a):.2f}"
    )
    lags = [
        (t.completed_at - t.last_receipt_at).total_seconds()
        for t in single + pooled
        if t.all_received and t.last_receipt_at is not None
    ]
    print(f"(b) last receipt to completion over {len(lags)} all-pass tests, mean (s)")
    print(f"receipt_to_completion_s {statistics.mean(lags):.3f}")
    batch_speedup("d", "1 phone per carrier, shared", "one_phone_batch_speedup", single)
    batch_speedup("c", "3 phones per carrier", "speedup_vs_reference", pooled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
