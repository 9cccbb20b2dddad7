"""Result sync, the circuit breaker and completion, in process."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from daemon.dispatcher import results
from dispatch.outcomes import breaker_reason, breaker_share, completion
from dispatch.runs import source_ref
from dispatch.store.runs import RunStatus
from dispatch.store.training import RunMetrics
from tests.unit.dispatch_fakes import DAY, Fakes, dispatcher, make_run, phone


def sending(f: Fakes, count: int, per_table: tuple[str, ...] = ("SMSQ_SEND_1",)) -> str:
    """A run of `count` recipients, all handed to bulk-1's agents, spread over `per_table`."""
    run = f.book.add(
        make_run(
            "acme",
            status=RunStatus.SENDING,
            line_group="bulk-1",
            started_at=DAY,
            next_seq=count,
            verify_until=count,
            inserted_count=count,
        ),
        count,
    )
    for i in range(1, count + 1):
        f.tables.insert(per_table[i % len(per_table)], [phone(i)], str(run.id))
    return str(run.id)


def test_the_breaker_waits_for_enough_results_and_names_the_commonest_codes() -> None:
    assert breaker_share(19, 19, min_results=20) is None
    assert breaker_share(20, 11, min_results=20) == 0.55
    reason = breaker_reason(0.55, 20, [(9008, 10), (55, 1)])
    assert (
        reason
        == "circuit breaker: 55% of the first 20 results are systemic failures (9008×10, 55×1)"
    )


def test_a_run_completes_with_every_result_or_at_the_horizon_of_the_node_clock() -> None:
    horizon = timedelta(hours=48)
    assert completion(10, 10, DAY, DAY, horizon) == (True, None)
    assert completion(9, 10, DAY, DAY + horizon, horizon) == (False, None)
    assert completion(9, 10, DAY, DAY + horizon + timedelta(seconds=1), horizon) == (
        True,
        "result horizon reached",
    )


async def test_systemic_failures_pause_the_run_and_pull_back_what_waits(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, breaker_min_results=20, breaker_share=0.5)
    run_ref = sending(f, 100, ("SMSQ_SEND_1", "SMSQ_SEND_2"))
    f.tables.agent_reports("SMSQ_SEND_1", 9008, DAY, limit=25)  # sender not registered
    f.tables.agent_reports("SMSQ_SEND_2", 6, DAY, limit=5)
    f.leases.held["bulk-1"] = run_ref
    assert await results.sync_once(f.ctx) == 30
    run = next(iter(f.book.runs.values()))
    assert run.status == RunStatus.PAUSED and run.breaker_checked
    assert run.status_reason == (
        "circuit breaker: 83% of the first 30 results are systemic failures (9008×25)"
    )
    # The 70 rows no agent had taken are back with the run, to be sent after a fix.
    assert len(f.tables.rows(run_ref)) == 30
    assert run.inserted_count == 30 and run.success_count == 5 and run.fail_count == 25
    assert "bulk-1" not in f.leases.held


async def test_the_breaker_judges_once_on_the_first_results(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, breaker_min_results=20, breaker_share=0.5)
    run_ref = sending(f, 100)
    f.tables.agent_reports("SMSQ_SEND_1", 9008, DAY, limit=5)
    await results.sync_once(f.ctx)
    assert not next(iter(f.book.runs.values())).breaker_checked  # 5 results: too few
    f.tables.agent_reports("SMSQ_SEND_1", 6, DAY, limit=20)
    await results.sync_once(f.ctx)
    run = next(iter(f.book.runs.values()))
    assert run.breaker_checked and run.status == RunStatus.SENDING  # 5 of 25 systemic
    f.tables.agent_reports("SMSQ_SEND_1", 9008, DAY)
    await results.sync_once(f.ctx)
    run = next(iter(f.book.runs.values()))
    assert run.status == RunStatus.SENDING and run.fail_count == 80
    assert len(f.tables.rows(run_ref)) == 100


async def test_results_read_twice_count_once_and_feed_the_training_row(tmp_path: Path) -> None:
    f = dispatcher(tmp_path)
    run_ref = sending(f, 10)
    f.tables.agent_reports("SMSQ_SEND_1", 6, DAY, limit=8)
    # The agent moves them to its log table; the sync reads that table from the start.
    month = f"SMSQ_SEND_1_{DAY:%Y%m}"
    f.tables.tables[month] = [r for r in f.tables.tables["SMSQ_SEND_1"] if r.rsv1 == "4"]
    assert await results.sync_once(f.ctx) == 8
    assert await results.sync_once(f.ctx) == 0  # live and log copies of the same results
    run = next(iter(f.book.runs.values()))
    assert (run.success_count, run.fail_count, run.sent_count) == (8, 0, 8)
    secret = f.ctx.settings.training_secret.get_secret_value()
    assert f.book.metrics[source_ref(secret, run.id)] == RunMetrics(8, 8, 0)
    assert run_ref not in str(f.book.metrics)  # keyed by an HMAC, never the run id


async def test_a_run_waiting_for_results_completes_at_the_horizon(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, result_horizon_h=48)
    sending(f, 10)
    run = next(iter(f.book.runs.values()))
    await f.book.set_status(run.id, RunStatus.RESULTS, None)
    f.tables.agent_reports("SMSQ_SEND_1", 6, DAY, limit=9)
    await results.sync_once(f.ctx)
    assert f.book.runs[run.id].status == RunStatus.RESULTS  # one result still out
    f.clock.moment = DAY + timedelta(hours=48, seconds=1)
    await results.sync_once(f.ctx)
    done = f.book.runs[run.id]
    assert done.status == RunStatus.COMPLETED and done.status_reason == "result horizon reached"
