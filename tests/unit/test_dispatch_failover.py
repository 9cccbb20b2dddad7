"""Agent failover, in process: which agents are out, where their waiting rows go."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from daemon.agents import AgentState
from daemon.dispatcher import failover
from tests.unit.dispatch_fakes import FakeAgents, dispatcher


def statuses(**states: AgentState) -> FakeAgents:
    agents = FakeAgents()
    for number in (1, 2, 3):
        agents.set(number, AgentState.OK)
    for name, state in states.items():
        agents.set(int(name[1:]), state, waiting=50)
    return agents


def test_an_unreachable_or_stalled_agent_is_down_and_its_rows_go_to_the_healthy_ones() -> None:
    agents = statuses(a1=AgentState.UNREACHABLE, a3=AgentState.STALLED)
    plan = failover.plan_failover([1, 2, 3], agents.statuses, set(), {})
    assert plan.marked_down == {1: "unreachable", 3: "stalled"}
    assert plan.moves == [(1, [2]), (3, [2])]
    assert plan.rejoined == []


def test_unknown_is_not_down_and_a_drain_is_its_own_reason() -> None:
    agents = statuses(a1=AgentState.UNKNOWN)
    plan = failover.plan_failover([1, 2, 3], agents.statuses, {2}, {})
    assert plan.marked_down == {2: "drained"}
    assert plan.moves == []  # agent 2 has nothing waiting


def test_a_known_reason_is_not_reported_again_and_a_recovered_agent_rejoins() -> None:
    agents = statuses(a1=AgentState.UNREACHABLE)
    plan = failover.plan_failover(
        [1, 2, 3], agents.statuses, set(), {1: "unreachable", 2: "stalled"}
    )
    assert plan.marked_down == {} and plan.rejoined == [2]
    # Agent 2 is back this very moment: rows go to agent 3 only, until the next pass.
    assert plan.moves == [(1, [3])]


def test_with_no_healthy_agent_nothing_moves() -> None:
    agents = statuses(a1=AgentState.UNREACHABLE, a2=AgentState.UNREACHABLE, a3=AgentState.STALLED)
    plan = failover.plan_failover([1, 2, 3], agents.statuses, set(), {})
    assert plan.moves == [] and set(plan.marked_down) == {1, 2, 3}


async def test_failover_moves_every_waiting_row_once_and_keeps_what_the_agent_took(
    tmp_path: Path,
) -> None:
    f = dispatcher(tmp_path)
    numbers = [f"0107{i:07d}" for i in range(90)]
    f.tables.insert("SMSQ_SEND_1", numbers[:80], "run-1")
    f.tables.insert("SMSQ_SEND_1", numbers[80:], "run-1", rsv1="2")  # taken by the agent
    f.agents.set(1, AgentState.UNREACHABLE, waiting=80)
    assert await failover.failover_once(f.ctx) == 80
    assert f.ctx.down == {1: "unreachable"}
    placed = Counter(table for table, _ in f.tables.rows("run-1"))
    assert placed == {"SMSQ_SEND_1": 10, "SMSQ_SEND_2": 40, "SMSQ_SEND_3": 40}
    assert sorted(n for _, n in f.tables.rows("run-1")) == numbers
    assert f.ctx.healthy("bulk-1") == [2, 3]
    # Healthy again: back in service, and new rows may reach it.
    f.agents.set(1, AgentState.OK)
    assert await failover.failover_once(f.ctx) == 0
    assert f.ctx.down == {} and f.ctx.healthy("bulk-1") == [1, 2, 3]


async def test_a_drained_agent_is_emptied_and_undraining_brings_it_back(tmp_path: Path) -> None:
    from daemon.dispatcher import controls

    f = dispatcher(tmp_path)
    f.tables.insert("SMSQ_SEND_5", ["01055550000", "01055550001"], "run-2")
    f.agents.set(5, AgentState.OK, waiting=2)
    assert controls.drain(f.ctx, 5, True) == {"agent": 5, "drained": True}
    assert f.ctx.healthy("bulk-2") == [4, 6]
    assert await failover.failover_once(f.ctx) == 2
    assert f.ctx.down == {5: "drained"}
    assert not [n for t, n in f.tables.rows("run-2") if t == "SMSQ_SEND_5"]
    controls.drain(f.ctx, 5, False)
    await failover.failover_once(f.ctx)
    assert f.ctx.healthy("bulk-2") == [4, 5, 6]
