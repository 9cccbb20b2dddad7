"""Line-group grants, in process: who gets a group, in which order, and who waits."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from daemon.dispatcher import grants
from dispatch.store.runs import RunStatus
from tests.unit.dispatch_fakes import DAY, dispatcher, make_run

BULK = {"bulk-1", "bulk-2", "bulk-3"}


def test_a_users_group_goes_before_the_companys_and_is_not_traded_for_another() -> None:
    run = make_run("acme", user_id="kim")
    assigned = {("user", "kim"): "bulk-2", ("company", "acme"): "bulk-1"}
    assert grants.candidate_groups(run, assigned, BULK, set(), True) == ["bulk-2"]
    # The user's group is busy: the run waits for it rather than taking a free one.
    assert grants.candidate_groups(run, assigned, BULK, {"bulk-2"}, True) == []
    # A test group assigned by mistake is no bulk group: the company's counts.
    assert grants.candidate_groups(run, {("user", "kim"): "test"}, BULK, set(), False) == []
    company_only = {("user", "kim"): "test", ("company", "acme"): "bulk-3"}
    assert grants.candidate_groups(run, company_only, BULK, set(), False) == ["bulk-3"]


def test_without_an_assignment_only_a_pooling_node_hands_out_free_groups() -> None:
    run = make_run("acme")
    assert grants.candidate_groups(run, {}, BULK, {"bulk-1"}, True) == ["bulk-2", "bulk-3"]
    assert grants.candidate_groups(run, {}, BULK, set(), False) == []


async def test_four_companies_three_groups_the_one_served_most_recently_waits(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    queued = []
    for i, company in enumerate("ABCD"):
        queued.append(f.book.add(make_run(company, queued_at=DAY - timedelta(minutes=10 - i))))
    # A got a group yesterday; B, C and D never did, so A goes last despite arriving first.
    served = f.book.add(
        make_run("A", status=RunStatus.COMPLETED, group_since=DAY - timedelta(days=1))
    )
    held: dict[str, object] = {}
    granted = await grants.grant(f.ctx, queued, held, DAY)  # type: ignore[arg-type]
    assert [f.book.runs[s.id].company_id for s in granted] == ["B", "C", "D"]
    assert sorted(held) == sorted(BULK)
    assert f.book.runs[queued[0].id].status == RunStatus.QUEUED
    for state in granted:
        run = f.book.runs[state.id]
        assert run.status == RunStatus.SENDING and run.started_at == DAY
        assert f.leases.held[str(run.line_group)] == str(run.id) == str(state.id)
    assert len({f.book.runs[s.id].line_group for s in granted}) == 3
    assert served.id not in {s.id for s in granted}


async def test_a_companys_own_runs_keep_their_order_and_others_go_between(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    a1, a2, a3 = (
        f.book.add(make_run("A", queued_at=DAY - timedelta(minutes=m))) for m in (30, 20, 10)
    )
    b1 = f.book.add(make_run("B", queued_at=DAY - timedelta(minutes=5)))
    order = grants.ranked([a3, b1, a1, a2], {})
    assert [r.id for r in order] == [a1.id, b1.id, a2.id, a3.id]


async def test_a_run_waits_for_its_time_and_an_ad_waits_for_the_morning(tmp_path: Path) -> None:
    f = dispatcher(tmp_path)
    later = f.book.add(make_run("A", scheduled_at=DAY + timedelta(seconds=1)))
    assert await grants.grant(f.ctx, [later], {}, DAY) == []
    assert f.book.runs[later.id].status == RunStatus.QUEUED
    assert len(await grants.grant(f.ctx, [later], {}, DAY + timedelta(seconds=1))) == 1

    night = DAY.replace(hour=13)  # 22:00 KST
    f.clock.moment = night
    ad = f.book.add(make_run("B", is_ad=True))
    assert await grants.grant(f.ctx, [ad], {}, night) == []
    held = f.book.runs[ad.id]
    assert held.status == RunStatus.HELD and held.status_reason == grants.NIGHT_HOLD_REASON
    assert held.line_group is None and not f.leases.held.get("bulk-2")


async def test_a_group_leased_elsewhere_is_skipped_and_a_lost_race_gives_the_lease_back(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    f.leases.held["bulk-1"] = "someone-else"
    run = f.book.add(make_run("A"))
    [state] = await grants.grant(f.ctx, [run], {}, DAY)
    assert state.group == "bulk-2" and f.book.runs[run.id].line_group == "bulk-2"

    # Cancelled between the read and the grant: the UPDATE finds it no longer queued.
    late = f.book.add(make_run("B"))
    stale = f.book.runs[late.id]
    await f.book.set_status(late.id, RunStatus.CANCELLED, "by operator")
    assert await grants.grant(f.ctx, [stale], {}, DAY) == []
    assert "bulk-1" in f.leases.held and "bulk-3" not in f.leases.held


async def test_a_drained_run_releases_its_group_only_when_nothing_of_it_waits(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    run = f.book.add(make_run("A", status=RunStatus.DRAINING, line_group="bulk-1"))
    f.leases.held["bulk-1"] = str(run.id)
    f.tables.insert("SMSQ_SEND_2", ["01011112222"], str(run.id))
    assert not await grants.release_if_drained(f.ctx, run)
    assert f.leases.held["bulk-1"] == str(run.id)
    f.tables.agent_reports("SMSQ_SEND_2", 6, DAY)
    assert await grants.release_if_drained(f.ctx, run)
    assert f.book.runs[run.id].status == RunStatus.RESULTS and "bulk-1" not in f.leases.held


async def test_a_run_whose_fields_do_not_fit_the_agent_tables_is_rejected_not_granted(
    tmp_path: Path,
) -> None:
    # The web service writes runs directly; the daemon guards them before any row exists.
    f = dispatcher(tmp_path)
    long_callback = f.book.add(make_run("A", callback_number="02-1234-5678 (대표번호 안내)"))
    long_company = f.book.add(make_run("B" * 51))
    fine = f.book.add(make_run("C"))
    held: dict[str, object] = {}
    granted = await grants.grant(f.ctx, [long_callback, long_company, fine], held, DAY)  # type: ignore[arg-type]
    assert [s.id for s in granted] == [fine.id]
    for run, field in ((long_callback, "callback"), (long_company, "company_id")):
        rejected = f.book.runs[run.id]
        assert rejected.status == RunStatus.REJECTED and rejected.line_group is None
        assert rejected.status_reason is not None
        assert rejected.status_reason.startswith(f"{field} "), rejected.status_reason
    assert list(held) == [f.book.runs[fine.id].line_group]


async def test_a_run_whose_callback_the_company_never_registered_is_rejected_before_a_grant(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    f.book.registered_callbacks = {("acme", "0212345678")}
    good = f.book.add(make_run("acme", callback_number="0212345678"))
    bad = f.book.add(make_run("acme", callback_number="0298765432"))
    granted = await grants.grant(f.ctx, [bad, good], {}, DAY)
    assert [s.id for s in granted] == [good.id]
    rejected = f.book.runs[bad.id]
    assert rejected.status == RunStatus.REJECTED and rejected.line_group is None
    assert rejected.status_reason is not None and "0298765432" in rejected.status_reason
    assert str(bad.id) not in f.leases.held.values()


async def test_the_webs_assignment_decides_the_group_and_one_this_node_lacks_is_never_replaced(
    tmp_path: Path,
) -> None:
    from dispatch.store.web import WebGroup

    f = dispatcher(tmp_path)
    bulk2 = tuple(reversed(f.ctx.tables_of("bulk-2")))  # the web's order is not the node's
    f.book.assigned = {
        ("company", "acme"): WebGroup("영업 2라인", "bulk", bulk2),
        ("company", "beta"): WebGroup("다른 서버", "bulk", ("SMSQ_SEND_7", "SMSQ_SEND_8")),
        ("user", "kim"): WebGroup("김 대리", "bulk", tuple(f.ctx.tables_of("bulk-3"))),
    }
    acme = f.book.add(make_run("acme"))
    kims = f.book.add(make_run("acme", user_id="kim"))
    beta = f.book.add(make_run("beta"))
    granted = await grants.grant(f.ctx, [acme, kims, beta], {}, DAY)
    assert {f.book.runs[s.id].line_group for s in granted} == {"bulk-2", "bulk-3"}
    assert f.book.runs[acme.id].line_group == "bulk-2"
    assert f.book.runs[kims.id].line_group == "bulk-3"  # the user's group before the company's
    waiting = f.book.runs[beta.id]
    assert waiting.status == RunStatus.QUEUED and waiting.line_group is None
    assert waiting.status_reason is not None
    assert "'다른 서버'" in waiting.status_reason and "SMSQ_SEND_7" in waiting.status_reason
    # bulk-1 is free and the node pools free groups, yet the run is not sent there.
    assert "bulk-1" not in {f.book.runs[s.id].line_group for s in granted}
    assert await grants.grant(f.ctx, [f.book.runs[beta.id]], {}, DAY) == []
