"""The node's counters and histograms, counted by the dispatcher on its fakes, and how
they read on /metrics."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

from prometheus_client import generate_latest

from daemon.agents import AgentState
from daemon.dispatcher import failover, grants, handoff, results
from daemon.metrics import NodeMetrics, code_label
from dispatch.store.runs import RunStatus
from tests.unit.dispatch_fakes import DAY, Fakes, dispatcher, make_run, phone


def value(f: Fakes, name: str, **labels: str) -> float:
    found = f.ctx.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def total(f: Fakes, name: str) -> float:
    """The sum of every series of a metric."""
    return sum(
        s.value for m in f.ctx.metrics.registry.collect() for s in m.samples if s.name == name
    )


async def test_rows_handed_are_the_rows_inserted_per_agent_and_batches_are_timed(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    run = make_run("acme", status=RunStatus.SENDING, line_group="bulk-1", started_at=DAY)
    run_id = f.book.add(run, 450).id
    await handoff.handoff_pass(f.ctx, f.ctx.registry.state(run_id, "acme"))
    assert f.book.runs[run_id].inserted_count == 450
    assert total(f, "hanjullo_rows_handed_total") == 450
    per_agent = {
        n: value(f, "hanjullo_rows_handed_total", group="bulk-1", agent=str(n)) for n in (1, 2, 3)
    }
    assert sum(per_agent.values()) == 450 and all(v > 0 for v in per_agent.values())
    assert value(f, "hanjullo_handoff_batch_seconds_count", group="bulk-1") == 5
    assert value(f, "hanjullo_run_status_changes_total", status="draining") == 1


async def test_results_count_once_by_outcome_and_code_and_the_rest_time_out(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, result_horizon_h=48)
    run = f.book.add(
        make_run(
            "acme",
            status=RunStatus.RESULTS,
            line_group="bulk-1",
            started_at=DAY,
            next_seq=10,
            verify_until=10,
            inserted_count=10,
        ),
        10,
    )
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(1, 11)], str(run.id))
    f.tables.agent_reports("SMSQ_SEND_1", 6, DAY, limit=5)
    f.tables.agent_reports("SMSQ_SEND_1", 9008, DAY, limit=2)
    f.tables.agent_reports("SMSQ_SEND_1", 31337, DAY, limit=1)  # a code nobody documented
    # The agent moves them to its log table: read from both, counted once.
    month = f"SMSQ_SEND_1_{DAY:%Y%m}"
    f.tables.tables[month] = [r for r in f.tables.tables["SMSQ_SEND_1"] if r.rsv1 == "4"]
    await results.sync_once(f.ctx)
    await results.sync_once(f.ctx)
    assert value(f, "hanjullo_results_total", outcome="success") == 5
    assert value(f, "hanjullo_results_total", outcome="fail") == 3
    assert value(f, "hanjullo_result_codes_total", code="6") == 5
    assert value(f, "hanjullo_result_codes_total", code="9008") == 2
    assert value(f, "hanjullo_result_codes_total", code="other") == 1
    assert value(f, "hanjullo_results_total", outcome="pending_timeout") == 0
    f.clock.moment = DAY + timedelta(hours=48, seconds=1)
    await results.sync_once(f.ctx)
    assert f.book.runs[run.id].status == RunStatus.COMPLETED
    assert value(f, "hanjullo_results_total", outcome="pending_timeout") == 2
    assert value(f, "hanjullo_run_status_changes_total", status="completed") == 1


async def test_a_breaker_trip_is_counted_and_the_pause_too(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, breaker_min_results=20, breaker_share=0.5)
    run = f.book.add(
        make_run(
            "acme",
            status=RunStatus.SENDING,
            line_group="bulk-1",
            started_at=DAY,
            next_seq=30,
            verify_until=30,
            inserted_count=30,
        ),
        30,
    )
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(1, 31)], str(run.id))
    f.tables.agent_reports("SMSQ_SEND_1", 9008, DAY, limit=25)
    f.leases.held["bulk-1"] = str(run.id)
    await results.sync_once(f.ctx)
    assert f.book.runs[run.id].status == RunStatus.PAUSED
    assert value(f, "hanjullo_breaker_trips_total") == 1
    assert value(f, "hanjullo_run_status_changes_total", status="paused") == 1


async def test_grants_lost_leases_and_failovers_are_counted(tmp_path: Path) -> None:
    f = dispatcher(tmp_path)
    run = f.book.add(make_run("acme"), 10)
    [state] = await grants.grant(f.ctx, [run], {}, DAY)
    assert value(f, "hanjullo_run_status_changes_total", status="sending") == 1
    state.handoff = asyncio.create_task(asyncio.Event().wait())  # a handoff that runs
    f.leases.held[state.group or ""] = "someone else"
    await grants.renew_leases(f.ctx)
    state.handoff.cancel()
    await asyncio.gather(state.handoff, return_exceptions=True)
    assert value(f, "hanjullo_lease_losses_total", group=state.group or "") == 1

    f.tables.insert("SMSQ_SEND_4", [phone(i) for i in range(1, 8)], str(uuid.uuid4()))
    f.agents.set(4, AgentState.UNREACHABLE, waiting=7)
    assert await failover.failover_once(f.ctx) == 7
    await failover.failover_once(f.ctx)  # a known reason is not counted again
    assert value(f, "hanjullo_failovers_total", agent="4", reason="unreachable") == 1
    assert value(f, "hanjullo_failover_rows_moved_total", agent="4") == 7


def test_codes_are_bounded_and_the_exposition_names_every_family(tmp_path: Path) -> None:
    assert code_label(6) == "6" and code_label(9008) == "9008" and code_label(123456) == "other"
    metrics = NodeMetrics()
    metrics.show_from_start(dispatcher(tmp_path).ctx.config)
    metrics.count_results([6, 6, 9008])
    metrics.receipt_delay.labels("KT").observe(13.5)
    metrics.spam_verdicts.labels("KT", "blocked", "manual").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'hanjullo_results_total{outcome="success"} 2.0' in text
    assert 'hanjullo_results_total{outcome="pending_timeout"} 0.0' in text
    assert 'hanjullo_receipts_total{carrier="SKT",modem="SKT"} 0.0' in text
    assert 'hanjullo_failovers_total{agent="9",reason="stalled"} 0.0' in text
    assert 'hanjullo_lease_losses_total{group="bulk-3"} 0.0' in text
    assert 'hanjullo_run_status_changes_total{status="paused"} 0.0' in text
    assert 'hanjullo_spam_receipt_delay_seconds_bucket{carrier="KT",le="15.0"} 1.0' in text
    assert 'hanjullo_spam_receipt_delay_seconds_bucket{carrier="KT",le="12.0"} 0.0' in text
    assert 'hanjullo_spam_verdicts_total{carrier="KT",source="manual",verdict="blocked"} 1.0' in (
        text
    )
    # Two nodes in one process count apart.
    assert (
        NodeMetrics().registry.get_sample_value("hanjullo_results_total", {"outcome": "success"})
        is None
    )
