"""The web's 60-second window: every carrier of a web test is decided by its created_at
plus the window (less the margin), on the monotonic clock; what cannot be decided in time
is `timeout`, never `blocked`. The rule alone, then the engine on fakes (no sleep)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from daemon.spamtest import engine, restore
from dispatch.spamtests import Decision, SlotFacts, Verdict, decide
from dispatch.spamtests.rules import capped_grace
from tests.unit.spamtest_fakes import SpamFakes, restarted, spam_engine

TEXT = "테스트 메시지"
PHONES = {"SKT": "01090000001", "KT": "01090000002", "LGU": "01090000003"}
SENT = 1000.0  # monotonic seconds
DEADLINE = SENT + 57.0


def decide_at(
    now_after_s: float,
    seen_after_s: float | None,
    grace_s: float = 25.0,
    read_after_s: float | None = None,
    watched: bool = True,
) -> Decision | None:
    seen = SENT + seen_after_s if seen_after_s is not None else None
    facts = SlotFacts(SENT, False, 6 if seen is not None else None, seen)
    return decide(
        facts,
        SENT + now_after_s,
        grace_s,
        60.0,
        watched,
        storage_read_at=SENT + read_after_s if read_after_s is not None else None,
        read_wait_s=10.0,
        deadline=DEADLINE,
        min_grace_s=6.0,
    )


def test_the_grace_is_cut_to_end_a_storage_read_before_the_deadline() -> None:
    assert capped_grace(25.0, SENT + 2.0, DEADLINE, 10.0) == 25.0
    assert capped_grace(25.0, SENT + 30.0, DEADLINE, 10.0) == 17.0
    assert capped_grace(25.0, SENT + 30.0, None, 10.0) == 25.0
    # A success seen 30 s after the send: blocked after 17 s, once a read proves it.
    assert decide_at(46.9, 30.0, read_after_s=46.9) is None
    blocked = decide_at(47.0, 30.0, read_after_s=47.0)
    assert blocked is not None and blocked.verdict == Verdict.BLOCKED


def test_silence_at_the_deadline_is_a_timeout_never_blocked() -> None:
    # The success came too late for even the minimum grace: no blocked is possible.
    assert decide_at(56.9, 45.0, read_after_s=56.9) is None
    late = decide_at(57.0, 45.0, read_after_s=57.0)
    assert late is not None and late.verdict == Verdict.TIMEOUT
    # No agent result at all by the deadline (timeout_s is 60 from the send).
    silent = decide_at(57.0, None)
    assert silent is not None and silent.verdict == Verdict.TIMEOUT
    assert "window" in silent.detail
    # A modem that was not watched says nothing: device_error in the node's own table.
    unwatched = decide_at(57.0, None, watched=False)
    assert unwatched is not None
    assert unwatched.verdict == Verdict.DEVICE_ERROR


def test_a_grace_that_ran_out_without_a_storage_read_is_a_device_error_by_the_deadline() -> None:
    # A success at 25 s: the grace is cut to 22 s so that the 10 s for a read end at 57 s.
    assert decide_at(56.9, 25.0, read_after_s=None) is None
    unread = decide_at(57.0, 25.0, read_after_s=None)
    assert unread is not None and unread.verdict == Verdict.DEVICE_ERROR
    assert "storage could not be read" in unread.detail


async def web_started(f: SpamFakes, created_s_ago: float = 0.0) -> uuid.UUID:
    """A test the web created `created_s_ago` seconds ago, taken and started by one pass."""
    test_id = f.book.web_queue(TEXT)
    test = f.book.untaken[-1]
    test["created_at"] -= timedelta(seconds=created_s_ago)
    await engine.tick(f.ctx)
    return test_id


async def test_a_web_test_is_taken_and_decided_within_its_window_whatever_the_clock(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path, grace_initial_s=25.0)
    test_id = await web_started(f, created_s_ago=20.0)  # the node saw it 20 s late
    assert f.book.tests[test_id]["status"] == "active" and len(f.tables.of(test_id)) == 3
    for phone in PHONES.values():
        f.tables.report(test_id, phone, 6)
    f.wall.advance(10)
    await engine.tick(f.ctx)  # the successes are seen 30 s after created_at
    f.book.receive("SKT", TEXT)
    await engine.tick(f.ctx)
    f.wall.step(-3600)  # a step of the system clock moves no deadline and no grace
    # 27 s are left until the deadline (57 s): the grace is cut to 17 s; a blocked verdict
    # needs a storage read after it, which these phones prove at every moment.
    f.wall.advance(16.9)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "pass", "KT": None, "LGU": None}
    f.wall.advance(0.2)
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id) == {"SKT": "pass", "KT": "blocked", "LGU": "blocked"}
    assert f.book.tests[test_id]["status"] == "completed"


async def test_a_web_test_left_without_a_phone_times_out_by_its_deadline(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)
    test_id = await web_started(f)
    f.phones["LGU"].unplug()
    for phone in (PHONES["SKT"], PHONES["KT"]):
        f.tables.report(test_id, phone, 6)
    await engine.tick(f.ctx)
    f.wall.advance(56.9)
    await engine.tick(f.ctx)
    verdicts = f.book.verdicts(test_id)
    assert verdicts["SKT"] == verdicts["KT"] == "blocked" and verdicts["LGU"] is None
    f.wall.advance(0.1)  # 57 s after created_at: the web's window less the margin
    await engine.tick(f.ctx)
    assert f.book.verdicts(test_id)["LGU"] == "device_error"  # never blocked, never open
    assert f.book.tests[test_id]["status"] == "completed"


async def test_a_web_test_reaching_the_node_too_late_is_not_sent(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)
    test_id = await web_started(f, created_s_ago=50.0)
    await engine.tick(f.ctx)  # completed on the pass after its start, as any decided test
    assert f.tables.of(test_id) == []  # nothing the web would have timed out anyway
    assert f.book.verdicts(test_id) == {"SKT": "timeout", "KT": "timeout", "LGU": "timeout"}
    assert f.book.tests[test_id]["status"] == "completed"
    assert "window" in f.book.rows_of(test_id)["KT"]["detail"]


async def test_a_restart_keeps_the_deadline_of_created_at(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)
    test_id = await web_started(f)
    f.wall.advance(40)
    again = restarted(f)
    await restore.restore(again)
    (test,) = again.active.values()
    assert test.id == test_id and test.deadline is not None
    assert abs(test.deadline - (f.monotonic() + 17.0)) < 0.01  # 57 s after created_at


async def test_a_web_test_whose_window_ended_is_left_to_the_web(tmp_path: Path) -> None:
    """Found after its window (the daemon was down): never sent nor billed; the web's own
    60 s rule times it out when it is next read."""
    f = spam_engine(tmp_path)
    test_id = f.book.web_queue(TEXT)
    f.book.untaken[-1]["created_at"] -= timedelta(seconds=61)
    await engine.tick(f.ctx)
    assert test_id not in f.book.tests and f.tables.of(test_id) == []
