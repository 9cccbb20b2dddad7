"""The handoff, in process: batch planning after a crash window, pulled-back pages, a batch
that fails half-written, and the supervision of a handoff task that dies."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pytest
import structlog

from daemon.dispatcher import controls, handoff
from daemon.dispatcher.component import Dispatcher
from daemon.stores import PostgresKeeper, RedisKeeper
from dispatch import agent_tables
from dispatch import handoff as dispatch_handoff
from dispatch.planner import RunRowFields, needs_lookup, plan_page, room_left
from dispatch.store.runs import RunStatus
from tests.unit.dispatch_fakes import DAY, Fakes, dispatcher, make_run, phone
from tests.webservice import queries as web


def sending(f: Fakes, count: int, **fields: object) -> tuple[uuid.UUID, str]:
    """A run holding bulk-1 with `count` recipients: its id and what its rows carry."""
    run = make_run("acme", status=RunStatus.SENDING, line_group="bulk-1", started_at=DAY, **fields)
    run_id = f.book.add(run, count).id
    return run_id, str(run_id)


def placed(f: Fakes, run_ref: str) -> Counter[str]:
    """How often each number of the run is in an agent table (1 everywhere: exactly once)."""
    return Counter(number for _, number in f.tables.rows(run_ref))


def test_which_pages_are_looked_up_before_inserting() -> None:
    assert needs_lookup(first_seq=301, pulled=False, verify_until=600, after=300)
    assert not needs_lookup(first_seq=601, pulled=False, verify_until=600, after=600)
    assert needs_lookup(first_seq=5, pulled=True, verify_until=0, after=0)
    # Checkpointed by a daemon that had no verify_until yet: the first page is looked up.
    assert needs_lookup(first_seq=301, pulled=False, verify_until=0, after=300)
    assert not needs_lookup(first_seq=1, pulled=False, verify_until=0, after=0)


def test_room_is_what_the_bound_leaves_and_nothing_for_an_uncounted_agent() -> None:
    tables = {1: "SMSQ_SEND_1", 2: "SMSQ_SEND_2"}
    assert room_left(100, tables, {"SMSQ_SEND_1": 30}) == {1: 70, 2: 0}
    assert room_left(100, tables, {"SMSQ_SEND_1": 130, "SMSQ_SEND_2": 0}) == {1: 0, 2: 100}


async def test_after_a_crash_window_only_the_missing_rows_are_inserted(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    # The last daemon checkpointed 300, recorded verify_until 450 and died while writing
    # 301-450: agent 1's share reached its table, agent 2's and 3's did not.
    run_id, run_ref = sending(f, 1000, next_seq=300, verify_until=450, inserted_count=300)
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(1, 301)], run_ref)
    f.tables.insert("SMSQ_SEND_1", [phone(i) for i in range(301, 351)], run_ref)
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)
    run = f.book.runs[run_id]
    assert run.status == RunStatus.DRAINING
    counts = placed(f, run_ref)
    assert len(counts) == 1000 and set(counts.values()) == {1}
    assert run.inserted_count == 1000 and run.next_seq == 1000
    # Only the window was looked up: pages 301-400 and 401-450+, not the other 550.
    assert f.tables.lookups == 2


async def test_a_batch_that_fails_half_written_is_completed_exactly_once(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, batch_size=90)
    run_id, run_ref = sending(f, 450)
    state = f.ctx.registry.state(run_id, "acme")
    f.tables.fail_write["SMSQ_SEND_2"] = OSError("connection reset by peer")
    with pytest.raises(OSError, match="reset"):
        await handoff.handoff_pass(f.ctx, state)
    half = f.book.runs[run_id]
    assert half.next_seq == 0 and half.verify_until == 90  # the window is on record
    assert 0 < len(f.tables.rows(run_ref)) < 90
    await handoff.handoff_pass(f.ctx, state)  # the retry (or the next daemon)
    counts = placed(f, run_ref)
    assert len(counts) == 450 and set(counts.values()) == {1}
    assert f.book.runs[run_id].inserted_count == 450


async def test_pulled_back_recipients_go_first_and_are_looked_up(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    run_id, run_ref = sending(f, 300)
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)
    assert f.book.runs[run_id].status == RunStatus.DRAINING
    f.tables.agent_reports("SMSQ_SEND_1", 6, DAY)  # agent 1 had taken its share
    stopped = await controls.control(f.ctx, run_id, "pause", "by operator")
    assert stopped["status"] == "paused" and stopped["stopped"] == 200
    assert stopped["already_gone"] == 100
    await controls.control(f.ctx, run_id, "resume")
    await f.book.take_group(run_id, "bulk-1", DAY)
    lookups = f.tables.lookups
    await handoff.handoff_pass(f.ctx, state)
    counts = placed(f, run_ref)
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert f.book.runs[run_id].inserted_count == 300
    assert f.tables.lookups - lookups == 2  # both pages of pulled-back recipients


async def test_the_guard_pass_runs_ahead_and_its_skips_are_never_sent(tmp_path: Path) -> None:
    f = dispatcher(tmp_path, batch_size=50)
    run_id, run_ref = sending(f, 120, prepared=False)
    recipients = f.book.recipients[run_id]
    recipients[9].phone = recipients[3].phone  # seq 10 repeats seq 4
    recipients[19].phone = "0212345678"  # a landline
    recipients[29].phone = "010-9000-0030"  # written with hyphens
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)
    assert state.guard_pass is not None
    await state.guard_pass
    counts = placed(f, run_ref)
    assert len(counts) == 118 and set(counts.values()) == {1}
    assert "01090000030" in counts and "010-9000-0030" not in counts
    assert f.book.skipped[run_id] == {"duplicate": 1, "invalid_number": 1}


async def test_a_runs_first_batch_goes_out_before_the_guard_pass_checks_the_rest(
    tmp_path: Path,
) -> None:
    """bench/campaign.py: the first batch waited for a 5,000-recipient guard page and then
    shared the event loop with the checking of the rest of the run. The first page is
    one batch, and the next is read only once that batch is written."""
    f = dispatcher(tmp_path, batch_size=50)
    run_id, run_ref = sending(f, 300, prepared=False)
    state = f.ctx.registry.state(run_id, "acme")
    read_page = f.book.recipients_after
    reads: list[tuple[int, int]] = []  # (limit, batches written when it was asked for)

    async def recorded(run: uuid.UUID, after: int, limit: int) -> list[dict[str, Any]]:
        reads.append((limit, state.batches))
        return await read_page(run, after, limit)

    f.book.recipients_after = recorded  # type: ignore[method-assign]
    await asyncio.wait_for(handoff.handoff_pass(f.ctx, state), 10)
    assert state.guard_pass is not None
    await state.guard_pass
    assert reads[0] == (50, 0)
    assert reads[1][1] >= 1
    assert len(placed(f, run_ref)) == 300


async def test_a_guard_pass_that_ends_while_a_page_is_read_does_not_drain_the_run(
    tmp_path: Path,
) -> None:
    """Found by bench/chaos.py (seed 2): the handoff read the pending page while nothing
    was checked yet (an empty page); the guard pass finished while that read was on its
    way, and the handoff took the empty page for "everything inserted": the run drained
    and completed with none of its 5,000 recipients sent."""
    f = dispatcher(tmp_path, batch_size=50)
    run_id, run_ref = sending(f, 120, prepared=False)
    state = f.ctx.registry.state(run_id, "acme")
    read_page = f.book.pending_page

    async def page_answered_after_the_guard_pass(
        run: uuid.UUID, after: int, limit: int, checked_upto: int | None
    ) -> list[dict[str, Any]]:
        page = await read_page(run, after, limit, checked_upto)  # the statement's snapshot
        if state.guard_pass is not None:  # its answer arrives once the guard pass ended
            await state.guard_pass
        return page

    f.book.pending_page = page_answered_after_the_guard_pass  # type: ignore[method-assign]
    await asyncio.wait_for(handoff.handoff_pass(f.ctx, state), 10)
    counts = placed(f, run_ref)
    assert len(counts) == 120 and set(counts.values()) == {1}
    run = f.book.runs[run_id]
    assert run.status == RunStatus.DRAINING and run.inserted_count == 120


async def test_a_handoff_waiting_for_the_guard_pass_stops_when_cancelled_as_it_wakes(
    tmp_path: Path,
) -> None:
    """A handoff waiting for the guard pass's next page is cancelled (the component stops)
    in the loop turn the guard pass wakes it: it must stop. With asyncio.wait_for on 3.11
    the wake won and the cancel was dropped: the handoff went on, and the component's stop
    waited for it."""
    f = dispatcher(tmp_path, batch_size=50)
    run_id, _ = sending(f, 120, prepared=False)
    state = f.ctx.registry.state(run_id, "acme")
    never = asyncio.Event()

    async def guard_page_that_never_comes(*_: object) -> list[dict[str, Any]]:
        await never.wait()
        return []

    f.book.recipients_after = guard_page_that_never_comes  # type: ignore[method-assign]

    class Watched(asyncio.Event):
        """The guard pass's event, telling the test when the handoff waits on it."""

        def __init__(self) -> None:
            super().__init__()
            self.waited = asyncio.Event()

        async def wait(self) -> Literal[True]:
            self.waited.set()
            return await super().wait()

    state.prepared_event = watched = Watched()
    task = asyncio.create_task(handoff.handoff_pass(f.ctx, state))
    await asyncio.wait_for(watched.waited.wait(), 5)
    state.prepared_event.set()  # the guard pass wakes it...
    task.cancel()  # ...in the turn the component stops
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert state.guard_pass is not None
    state.guard_pass.cancel()  # the component's stop_all cancels it too
    await asyncio.gather(state.guard_pass, return_exceptions=True)


async def test_a_dead_handoff_is_logged_counted_and_restarted_after_its_backoff(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    run_id, _ = sending(f, 10)
    state = f.ctx.registry.state(run_id, "acme")
    f.book.fail["run"] = KeyError("bulk-9")  # e.g. a group removed from the configuration
    with structlog.testing.capture_logs() as logs:
        handoff.supervise(f.ctx, state)
        assert state.handoff is not None
        await asyncio.gather(state.handoff, return_exceptions=True)
    assert state.handoff_failures == 1 and f.ctx.handoff_failures == 1
    assert state.handoff_error == "KeyError: 'bulk-9'"
    [entry] = [e for e in logs if e["event"] == "handoff failed; restarting it"]
    assert entry["log_level"] == "error" and entry["run"] == str(run_id)
    assert isinstance(entry["exc_info"], KeyError)
    handoff.supervise(f.ctx, state)  # the next pass of the main loop: still backing off
    assert state.handoff is None
    f.monotonic.value += handoff.RESTART_FIRST_S
    handoff.supervise(f.ctx, state)
    assert state.handoff is not None
    await state.handoff
    assert f.book.runs[run_id].status == RunStatus.DRAINING
    assert state.handoff_failures == 1 and state.handoff_streak == 0


async def test_a_main_loop_pass_forgets_runs_that_are_no_longer_active(tmp_path: Path) -> None:
    f = dispatcher(tmp_path)
    component = Dispatcher(
        f.ctx.runtime,
        PostgresKeeper(f.ctx.runtime),
        RedisKeeper(f.ctx.runtime),
        f.agents,  # type: ignore[arg-type]
    )
    component.ctx = f.ctx
    done = f.book.add(make_run("A", status=RunStatus.COMPLETED))
    cancelled = f.book.add(make_run("B", status=RunStatus.CANCELLED, line_group="bulk-2"))
    still = f.book.add(
        make_run("C", status=RunStatus.CANCELLED, line_group="bulk-3", inserted_count=5)
    )
    for run in (done, cancelled, still):
        f.ctx.registry.state(run.id, run.company_id)
        f.ctx.registry.lock(run.id)
    queued = f.book.add(make_run("D"), 5)
    await component.tick()
    assert set(f.ctx.registry.runs) == {still.id, queued.id}
    assert set(f.ctx.registry.locks) <= {still.id, queued.id}
    handoff_task = f.ctx.registry.runs[queued.id].handoff
    assert handoff_task is not None
    await handoff_task
    assert f.book.runs[queued.id].status == RunStatus.DRAINING
    assert [r["run_id"] for r in component.status_runs] == [str(queued.id)]
    await component.redis.close()


async def test_an_outage_is_retried_with_backoff_that_restarts_after_progress(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path, batch_size=100)
    run_id, run_ref = sending(f, 300)
    pending_page = f.book.pending_page
    reads = 0

    async def flaky_pending_page(*args: Any) -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        if reads == 2:  # PostgreSQL goes away once more, after the first batch went in
            raise OSError("postgres restarting")
        return await pending_page(*args)

    delays: list[float] = []

    async def recorded(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) < 3:
            f.tables.fail_write["SMSQ_SEND_1"] = OSError("mysql restarting")
        elif len(delays) == 3:
            f.book.pending_page = flaky_pending_page  # type: ignore[method-assign]

    f.ctx.sleep = recorded
    f.tables.fail_write["SMSQ_SEND_1"] = OSError("mysql restarting")
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.run_handoff(f.ctx, state)
    first = handoff.RETRY_FIRST_S
    # Doubling while nothing goes in; back to the first step once a batch was written.
    assert delays == [first, 2 * first, 4 * first, first]
    counts = placed(f, run_ref)
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert f.book.runs[run_id].status == RunStatus.DRAINING


def _unescaped(field: str) -> str | None:
    """LOAD DATA's reading of one field (ESCAPED BY '\\', `\\N` for NULL)."""
    if field == "\\N":
        return None
    names = {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "\\": "\\"}
    out, chars = [], iter(field)
    for char in chars:
        out.append(names[next(chars)] if char == "\\" else char)
    return "".join(out)


def test_load_data_lines_carry_every_field_as_given_whatever_repeats() -> None:
    """The lines LOAD DATA reads back into exactly the rows given: escapes in any field,
    NULLs, and fields that repeat through a batch or change from one row to the next."""
    cam, run = "campaign", "run"
    rows: list[dispatch_handoff.RowValues] = [
        (
            "01012345678",
            "0212345678",
            "첫\t줄\n둘째 \\ 줄\r\0끝",
            "S",
            "",
            "",
            "",
            "",
            cam,
            "co",
            run,
        ),
        ("01012345679", "0212345678", "plain", "S", "", "", "", "", cam, "co", run),
        (
            "01012345680",
            "02\t9",
            "제목 있음",
            "M",
            "제\\목",
            "a.jpg",
            "b\tc.jpg",
            "",
            cam,
            "co\nx",
            run,
        ),
        ("01012345681", "0212345678", "", "S", None, None, None, None, "test", "", None),
    ]
    lines = dispatch_handoff.tsv_lines(rows)
    assert lines.endswith("\n") and lines.count("\n") == len(rows)
    back = [tuple(_unescaped(f) for f in line.split("\t")) for line in lines[:-1].split("\n")]
    assert back == rows


def _component(f: Fakes) -> Dispatcher:
    component = Dispatcher(
        f.ctx.runtime,
        PostgresKeeper(f.ctx.runtime),
        RedisKeeper(f.ctx.runtime),
        f.agents,  # type: ignore[arg-type]
    )
    component.ctx = f.ctx
    return component


async def test_a_queued_run_whose_campaign_the_web_cancelled_never_starts(tmp_path: Path) -> None:
    f = dispatcher(tmp_path)
    component = _component(f)
    run = f.book.add(make_run("acme"), 50)
    f.book.web_cancelled.add(run.id)  # the web's cancel: campaigns.status = 'cancelled'
    await component.tick()
    after = f.book.runs[run.id]
    assert after.status == RunStatus.CANCELLED
    assert after.status_reason == controls.WEB_CANCEL_REASON
    assert f.tables.rows(str(run.id)) == [] and run.id not in f.ctx.registry.runs
    await component.tick()  # and stays so: nothing is granted or inserted later
    assert f.tables.rows(str(run.id)) == []
    await component.redis.close()


async def test_a_sending_run_the_web_cancelled_stops_before_its_next_batch_and_is_pulled_back(
    tmp_path: Path,
) -> None:
    """The web's cancel deletes the waiting rows it can see, then sets the campaign's status.
    The run's next batch does not go out; what the web left in the tables is pulled back,
    and nothing the web deleted comes back."""
    f = dispatcher(tmp_path, batch_size=90)
    component = _component(f)
    run_id, run_ref = sending(f, 450, next_seq=90, verify_until=90, inserted_count=90)
    numbers = [phone(i) for i in range(1, 91)]
    f.tables.insert("SMSQ_SEND_1", numbers, run_ref)
    f.tables.delete("SMSQ_SEND_1", numbers[:30])  # deleted by the web's cancel
    f.book.web_cancelled.add(run_id)
    state = f.ctx.registry.state(run_id, "acme")
    await handoff.handoff_pass(f.ctx, state)
    assert len(f.tables.rows(run_ref)) == 60  # no further batch went out
    assert f.book.runs[run_id].next_seq == 90
    await component.tick()
    run = f.book.runs[run_id]
    assert run.status == RunStatus.CANCELLED and run.status_reason == controls.WEB_CANCEL_REASON
    assert f.tables.rows(run_ref) == []
    # The 60 pulled back are no longer counted as handed over; the 30 the web deleted are
    # "already gone" (to the node, as if an agent had taken them) and never re-inserted.
    assert run.inserted_count == 30
    await component.tick()
    assert f.tables.rows(run_ref) == []
    await component.redis.close()


def test_a_runs_rows_are_the_webs_with_the_run_id_in_bill_id() -> None:
    """app_etc1 the campaign, app_etc2 the company, '' for a missing subject and every
    missing image (file_name1..3, the first three attachments), the run id in bill_id."""
    campaign, run = uuid.uuid4(), uuid.uuid4()
    key = dispatch_handoff.RunRowKey.of(run, campaign)
    assert (key.app_etc1, key.bill_id, key.run_ref) == (str(campaign), str(run), str(run))
    page = [
        {"seq": 1, "number": "01011110001", "message_text": "안내", "subject": None,
         "attachments": None, "pulled": False},
        {"seq": 2, "number": "01011110002", "message_text": "안내", "subject": "제목",
         "attachments": ["a.jpg"], "pulled": False},
        {"seq": 3, "number": "01011110003", "message_text": "안내", "subject": None,
         "attachments": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "pulled": False},
    ]  # fmt: skip
    plan = plan_page(
        page, set(), {1: 10}, {1: "SMSQ_SEND_1"}, RunRowFields("0212345678", "M", key, "co")
    )
    rows = [dispatch_handoff.AgentRow(*r) for r in plan.rows["SMSQ_SEND_1"]]
    assert [(r.title_str, r.file_name1, r.file_name2, r.file_name3) for r in rows] == [
        ("", "", "", ""),
        ("제목", "a.jpg", "", ""),
        ("", "a.jpg", "b.jpg", "c.jpg"),
    ]
    assert {(r.app_etc1, r.app_etc2, r.bill_id, r.msg_type) for r in rows} == {
        (str(campaign), "co", str(run), "M")
    }


def test_a_run_without_a_campaign_keeps_its_id_in_app_etc1() -> None:
    run = uuid.uuid4()
    key = dispatch_handoff.RunRowKey.of(run, None)
    assert key.params == (str(run), str(run)) and key.run_ref == str(run)


def test_log_tables_are_made_like_the_live_table_and_7305_is_a_failure() -> None:
    from datetime import date

    assert agent_tables.log_table_ddl("SMSQ_SEND_3", date(2026, 11, 1)) == (
        "CREATE TABLE IF NOT EXISTS `SMSQ_SEND_3_202611` LIKE `SMSQ_SEND_3`"
    )
    names = [name for name, _ in agent_tables.wanted_tables(["SMSQ_SEND_3"], date(2026, 11, 5))]
    assert names == [
        "SMSQ_SEND_3",
        "SMSQ_SEND_3_202611",
        "SMSQ_SEND_3_202612",
        "SMSQ_SEND_3_202701",
    ]
    # The web's code sets (utils/sms-result-map.ts:137-140), and only them.
    assert set(web.PENDING_CODES) == agent_tables.PENDING_CODES
    assert set(web.SUCCESS_CODES) == agent_tables.SUCCESS_CODES
    assert agent_tables.is_final(agent_tables.KAKAO_UNCERTAIN)


async def test_the_sending_users_opt_outs_skip_their_numbers_in_every_run_of_theirs(
    tmp_path: Path,
) -> None:
    """Opt-outs are the web's, per sending user (unsubscribes.user_id), for ads and plain
    notices alike; another user's opt-out does not touch this user's run."""
    f = dispatcher(tmp_path, batch_size=50)
    kims, kims_ref = sending(f, 20, prepared=False, user_id="kim", is_ad=False)
    lees, lees_ref = sending(f, 20, prepared=False, user_id="lee", is_ad=False)
    f.book.unsubscribed = {("kim", phone(3)), ("kim", phone(7)), ("park", phone(5))}
    for run_id in (kims, lees):
        state = f.ctx.registry.state(run_id, "acme")
        await handoff.handoff_pass(f.ctx, state)
        assert state.guard_pass is not None
        await state.guard_pass
    assert f.book.skipped[kims] == {"opted_out": 2}
    assert phone(3) not in placed(f, kims_ref) and len(placed(f, kims_ref)) == 18
    assert f.book.skipped.get(lees, {}) in ({}, {"opted_out": 0}) and len(placed(f, lees_ref)) == 20
