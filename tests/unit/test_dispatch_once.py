"""Exactly once under the interleavings of issue 12, in process: a batch whose table writes
end at different times, a pull-back interrupted before PostgreSQL's bookkeeping, recovery
that must not re-insert what someone else deleted, configuration drift, results of a run
that changed groups, and a lease that cannot be renewed."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from daemon.agents import AgentState
from daemon.dispatcher import controls, failover, grants, handoff, results
from daemon.dispatcher.component import Dispatcher
from daemon.stores import PostgresKeeper, RedisKeeper
from dispatch.handoff import BatchRejected, RunRowKey
from dispatch.outcomes import Result
from dispatch.store.runs import RunStatus
from tests.unit.dispatch_fakes import DAY, AgentRow, Fakes, dispatcher, make_run, phone


def sending(f: Fakes, count: int, group: str = "bulk-1", **fields: object) -> tuple[uuid.UUID, str]:
    run = make_run("acme", status=RunStatus.SENDING, line_group=group, started_at=DAY, **fields)
    run_id = f.book.add(run, count).id
    return run_id, str(run_id)


def placed(f: Fakes, run_ref: str) -> Counter[str]:
    """How often each number of the run is in an agent table (1 everywhere: exactly once)."""
    return Counter(number for _, number in f.tables.rows(run_ref))


def component(f: Fakes) -> Dispatcher:
    """The component on the fakes, for its main-loop pass (`tick`)."""
    made = Dispatcher(
        f.ctx.runtime,
        PostgresKeeper(f.ctx.runtime),
        RedisKeeper(f.ctx.runtime),
        f.agents,  # type: ignore[arg-type]
    )
    made.ctx = f.ctx
    return made


async def no_wait(_: float) -> None:
    return None


# ---- item 2: a batch is retried only once all its table writes have ended -----------------


async def test_a_failed_batch_is_retried_only_after_its_slow_sibling_committed(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=90)
    f.ctx.sleep = no_wait
    run_id, run_ref = sending(f, 90)
    # Agent 1's load is slow; agent 2's connection is cut while it runs.
    f.tables.slow_write["SMSQ_SEND_1"] = 50
    f.tables.fail_write["SMSQ_SEND_2"] = OSError("connection reset by peer")
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.run_handoff(f.ctx, state)
    # Whatever write is still running ends too (the slow one, had the retry not waited).
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
    counts = placed(f, run_ref)
    assert len(counts) == 90 and set(counts.values()) == {1}, Counter(counts.values())
    assert f.book.runs[run_id].status == RunStatus.DRAINING


# ---- item 3: a pull-back interrupted before PostgreSQL's bookkeeping -----------------------


async def test_a_pull_back_cut_off_from_postgresql_is_finished_and_resent_once(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    run_id, run_ref = sending(f, 300)
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)  # all 300 wait in bulk-1's tables
    assert len(placed(f, run_ref)) == 300
    f.book.fail["record_pull_back"] = OSError("postgres went away")
    with pytest.raises(OSError, match="went away"):
        await controls.control(f.ctx, run_id, "pause", "pause by operator")
    # The next pass of the main loop (or the next daemon's first): then resume and send.
    main = component(f)
    await main.tick()
    await controls.control(f.ctx, run_id, "resume")
    await main.tick()
    task = f.ctx.registry.runs[run_id].handoff
    assert task is not None
    await task
    counts = placed(f, run_ref)
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert f.book.runs[run_id].inserted_count == 300
    await main.redis.close()


# ---- item 5: recovery reads the ledger, not the tables by number ---------------------------


async def test_recovery_never_reinserts_a_row_deleted_by_the_web_service_or_in_an_old_month(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    # The last daemon checkpointed 300, recorded verify_until 400 and died after agent 1's
    # share of 301-400 was committed.
    run_id, run_ref = sending(f, 400, next_seq=300, verify_until=400, inserted_count=300)
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(1, 301)], run_ref)
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(301, 341)], run_ref)
    live = f.tables.tables["SMSQ_SEND_1"]
    # The web service deleted one recipient (its delete-one-recipient) ...
    f.tables.tables["SMSQ_SEND_1"] = [r for r in live if r.dest_no != phone(301)]
    # ... and the agent moved another to a log month the run's window does not cover.
    moved = next(r for r in f.tables.tables["SMSQ_SEND_1"] if r.dest_no == phone(302))
    f.tables.tables["SMSQ_SEND_1"].remove(moved)
    f.tables.tables["SMSQ_SEND_1_202609"] = [AgentRow(moved.seqno, moved.dest_no, run_ref, "5")]
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)
    counts = placed(f, run_ref)
    assert counts[phone(301)] == 0  # deleted by someone else: never inserted again
    assert counts[phone(302)] == 1  # only the log month's row
    assert len(counts) == 399 and set(counts.values()) == {1}
    assert f.book.runs[run_id].status == RunStatus.DRAINING


# ---- item 6: configuration drift -------------------------------------------------------------


async def test_a_run_whose_group_left_the_configuration_is_paused_and_the_rest_go_on(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    gone_id, gone_ref = sending(f, 50, group="bulk-9")
    f.tables.insert("SMSQ_SEND_4", [phone(i) for i in range(1, 21)], gone_ref)
    other_id, other_ref = sending(f, 50)
    main = component(f)
    await main.tick()
    gone = f.book.runs[gone_id]
    assert gone.status == RunStatus.PAUSED
    assert gone.status_reason is not None and "bulk-9" in gone.status_reason
    # What it had waiting came back out of the table the ledger names.
    assert placed(f, gone_ref) == Counter()
    task = f.ctx.registry.runs[other_id].handoff
    assert task is not None
    await task
    assert len(placed(f, other_ref)) == 50
    await main.redis.close()


# ---- item 7: results from every table a run ever wrote -------------------------------------


async def test_a_run_resumed_on_another_group_gets_the_results_of_both(tmp_path: Path) -> None:
    f = dispatcher(tmp_path)
    run_id, run_ref = sending(
        f, 40, group="bulk-2", next_seq=40, verify_until=40, inserted_count=40
    )
    # Its first 20 went to bulk-1 before a pause; resumed, the rest went to bulk-2.
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(1, 21)], run_ref)
    f.tables.insert("SMSQ_SEND_4", [phone(i) for i in range(21, 41)], run_ref)
    f.tables.agent_reports("SMSQ_SEND_1", 6, DAY)
    f.tables.agent_reports("SMSQ_SEND_4", 6, DAY)
    assert await results.sync_once(f.ctx) == 40
    assert f.book.runs[run_id].success_count == 40


# ---- the lease: renewal errors have a deadline ---------------------------------------------


async def test_a_lease_unconfirmed_for_longer_than_its_ttl_stops_the_inserts_until_renewed(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    run = f.book.add(make_run("acme"), 10)
    [state] = await grants.grant(f.ctx, [run], {}, DAY)
    handoff.supervise(f.ctx, state)

    async def unreachable(group: str, run_id: str) -> bool:
        raise redis.exceptions.ConnectionError("redis is away")

    f.leases.renew = unreachable  # type: ignore[method-assign]
    ttl = f.ctx.settings.lease_ttl_s
    f.monotonic.value += ttl / 2
    await grants.renew_leases(f.ctx)
    assert not state.lease_lost  # the lease surely still runs
    f.monotonic.value += ttl / 2 + 1
    await grants.renew_leases(f.ctx)
    assert state.lease_lost  # it may have expired: someone else may hold it now
    assert state.handoff is not None
    await state.handoff
    assert f.tables.rows(str(run.id)) == []
    # Redis is back and nobody took the group: the run goes on.
    del f.leases.renew
    await grants.renew_leases(f.ctx)
    assert not state.lease_lost
    handoff.supervise(f.ctx, state)
    assert state.handoff is not None
    await state.handoff
    assert len(f.tables.rows(str(run.id))) == 10


# ---- item 4: failover never interleaves with a pull-back of its group ----------------------


async def test_failover_waits_for_a_pull_back_of_its_group(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, batch_size=300)
    run_id, run_ref = sending(f, 300)
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)  # 100 wait in each of bulk-1's tables
    f.agents.set(2, AgentState.UNREACHABLE, waiting=100)
    f.tables.slow_pull = 20
    pause = asyncio.create_task(controls.control(f.ctx, run_id, "pause", "pause by operator"))
    await f.tables.pulling.wait()  # the pull-back has found its rows
    await failover.failover_once(f.ctx)  # agent 2 is down: its waiting rows would move
    await pause
    assert placed(f, run_ref) == Counter()  # nothing of the paused run is left to send
    assert f.book.runs[run_id].status == RunStatus.PAUSED
    assert sum(1 for r in f.book.recipients[run_id] if r.is_pulled) == 300


# ---- acceptance 3 in process: a stop whose pull-back never committed -----------------------


async def test_a_stop_whose_pull_back_died_is_pulled_back_at_the_next_start(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    run_id, run_ref = sending(f, 300)
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)
    # The daemon dies inside the pull-back's transaction: nothing was deleted, and the run's
    # status (written first) already says paused.
    f.tables.fail_pull = OSError("server has gone away")
    with pytest.raises(OSError, match="gone away"):
        await controls.control(f.ctx, run_id, "pause", "pause by operator")
    assert f.book.runs[run_id].status == RunStatus.PAUSED
    assert len(placed(f, run_ref)) == 300  # still waiting: an agent would send them
    # What the next daemon does when it starts, before anything else.
    assert await controls.pull_back_stopped(f.ctx, list(f.book.runs.values())) == 300
    assert placed(f, run_ref) == Counter()
    main = component(f)
    await controls.control(f.ctx, run_id, "resume")
    await main.tick()
    task = f.ctx.registry.runs[run_id].handoff
    assert task is not None
    await task
    counts = placed(f, run_ref)
    assert len(counts) == 300 and set(counts.values()) == {1}
    await main.redis.close()


# ---- item 8: a stopped run is not re-read forever --------------------------------------------


async def test_a_stopped_run_is_read_for_results_only_until_the_horizon(tmp_path: Path) -> None:
    f = dispatcher(tmp_path)
    run_id, run_ref = sending(f, 20, next_seq=20, verify_until=20, inserted_count=20)
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(1, 21)], run_ref)
    f.tables.agent_reports("SMSQ_SEND_1", 6, DAY, limit=5)  # 15 results never come
    await f.book.set_status(run_id, RunStatus.PAUSED, "pause by operator")
    reads: list[str] = []
    read_results = f.tables.read_results

    async def counted(*args: object) -> tuple[list[Result], int]:
        reads.append(args[2].bill_id)  # type: ignore[attr-defined]
        return await read_results(*args)  # type: ignore[arg-type]

    f.tables.read_results = counted  # type: ignore[method-assign]
    assert await results.sync_once(f.ctx) == 5
    assert reads and set(reads) == {run_ref}
    horizon = timedelta(hours=f.ctx.settings.result_horizon_h)
    f.clock.moment = DAY + horizon / 2
    reads.clear()
    await results.sync_once(f.ctx)
    assert reads  # within the horizon of its last change: still read
    f.clock.moment = DAY + horizon + timedelta(minutes=1)
    reads.clear()
    assert await results.sync_once(f.ctx) == 0
    assert reads == []  # past it: no longer read every interval
    f.ctx.registry.prune({r.id for r in await f.book.runs_awaiting_results(48.0)})
    assert run_id not in f.ctx.registry.runs


async def test_the_ledger_keeps_only_runs_not_settled_beyond_the_result_horizon(
    tmp_path: Path,
) -> None:
    """Bounded state: a final run's entries go once it has been unchanged beyond the result
    horizon; a recent final run, an active one and one whose pull-back bookkeeping is
    unfinished keep theirs."""
    f = dispatcher(tmp_path)
    refs = {}
    for name, status in (
        ("completed", RunStatus.COMPLETED),
        ("cancelled", RunStatus.CANCELLED),
        ("unfinished-pull", RunStatus.CANCELLED),
        ("sending", RunStatus.SENDING),
        ("paused", RunStatus.PAUSED),
    ):
        run_id, ref = sending(f, 5)
        f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(1, 6)], ref)
        await f.book.set_status(run_id, status, None)
        refs[name] = ref
    pulled = await f.tables.pull_back(["SMSQ_SEND_1"], RunRowKey.of(refs["unfinished-pull"], None))
    assert pulled  # its 'pulled' entry is not written: PostgreSQL never marked them
    gone = str(uuid.uuid4())  # a run no longer in PostgreSQL
    f.tables.insert("SMSQ_SEND_2", [phone(1)], gone)
    horizon = timedelta(hours=f.ctx.settings.result_horizon_h)
    f.clock.moment = DAY + horizon / 2
    assert await results.prune_ledger(f.ctx) == 1  # only the run that is gone
    assert await f.tables.ledger_runs() == sorted(refs.values())
    f.clock.moment = DAY + horizon + timedelta(minutes=1)
    assert await results.prune_ledger(f.ctx) == 2
    kept = {refs["unfinished-pull"], refs["sending"], refs["paused"]}
    assert set(await f.tables.ledger_runs()) == kept
    assert await results.prune_ledger(f.ctx) == 0


async def test_a_batch_planned_ahead_needs_no_statement_of_its_own_before_it_goes_out(
    tmp_path: Path,
) -> None:
    """Acceptance 5: the verify_until of the batch planned while the previous one was
    written goes into that one's checkpoint, so only the run's first batch records it by
    itself (one PostgreSQL round trip fewer on every later batch's path). The crash window
    stays covered: before each batch is written, verify_until reaches its last seq."""
    f = dispatcher(tmp_path, batch_size=100)
    run_id, run_ref = sending(f, 500)
    own: list[int] = []
    covered: list[bool] = []
    record_verify_until, write = f.book.record_verify_until, f.tables.write

    async def counted(run: uuid.UUID, seq: int) -> None:
        own.append(seq)
        await record_verify_until(run, seq)

    async def checked(table: str, staged: Any, seqs: tuple[int, int]) -> None:
        covered.append(f.book.runs[run_id].verify_until >= seqs[1])
        await write(table, staged, seqs)

    f.book.record_verify_until = counted  # type: ignore[method-assign]
    f.tables.write = checked  # type: ignore[method-assign]
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.run_handoff(f.ctx, state)
    assert placed(f, run_ref) == Counter({phone(i): 1 for i in range(1, 501)})
    assert own == [100]  # the first batch only; the other four came with a checkpoint
    assert covered and all(covered)


# ---- a stop whose pull-back failed is finished by the running daemon -----------------------


async def test_a_stop_whose_pull_back_failed_is_pulled_back_by_the_next_ticks(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    run_id, run_ref = sending(f, 300)
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)
    f.tables.fail_pull = OSError("lock wait timeout")
    with pytest.raises(OSError, match="lock wait"):
        await controls.control(f.ctx, run_id, "pause", "pause by operator")
    assert f.book.runs[run_id].status == RunStatus.PAUSED
    assert len(placed(f, run_ref)) == 300  # still waiting: an agent would send them
    main = component(f)
    f.tables.fail_pull = OSError("lock wait timeout")
    await main.tick()  # the retry fails too: the tick goes on, the rows still wait
    assert len(placed(f, run_ref)) == 300
    await main.tick()  # and the next one pulls them back, without a restart
    assert placed(f, run_ref) == Counter()
    assert sum(1 for r in f.book.recipients[run_id] if r.is_pulled) == 300
    await main.tick()  # nothing left: a plain count, nothing pulled twice
    assert sum(1 for r in f.book.recipients[run_id] if r.is_pulled) == 300
    await main.redis.close()


# ---- a batch the agent table rejected pauses its run, with the reason -----------------------


async def test_a_batch_the_agent_table_rejected_pauses_the_run_naming_batch_and_table(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=30)
    run_id, run_ref = sending(f, 90)
    state = f.ctx.registry.state(run_id, "acme")
    f.tables.fail_write["SMSQ_SEND_2"] = BatchRejected(
        "LOAD DATA into SMSQ_SEND_2: 1 warnings, 10 rows"
    )
    await handoff.run_handoff(f.ctx, state)  # ends: not restarted with backoff forever
    run = f.book.runs[run_id]
    assert run.status == RunStatus.PAUSED
    assert run.status_reason is not None
    assert "SMSQ_SEND_2" in run.status_reason and "1-30" in run.status_reason
    assert placed(f, run_ref) == Counter()  # what the batch's other tables took, pulled back
