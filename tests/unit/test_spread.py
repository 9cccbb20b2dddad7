"""Spreading a batch over a group's agents: never over an agent's room, as even as it can."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispatch.planner import spread


def test_equal_room_is_shared_equally() -> None:
    assert spread({1: 100, 2: 100, 3: 100}, 90) == {1: 30, 2: 30, 3: 30}
    assert spread({1: 100, 2: 100, 3: 100}, 91) == {1: 31, 2: 30, 3: 30}


def test_the_emptiest_agent_is_filled_first() -> None:
    assert spread({1: 10, 2: 100, 3: 40}, 70) == {1: 0, 2: 65, 3: 5}


def test_never_more_than_the_room() -> None:
    assert spread({1: 3, 2: 0, 3: 2}, 50) == {1: 3, 2: 0, 3: 2}


@given(
    st.dictionaries(st.integers(1, 11), st.integers(0, 20_000), min_size=1, max_size=6),
    st.integers(0, 70_000),
)
def test_spread_properties(room: dict[int, int], count: int) -> None:
    take = spread(room, count)
    assert set(take) == set(room)
    assert sum(take.values()) == min(count, sum(room.values()))
    assert all(0 <= take[n] <= room[n] for n in room)
    left = {n: room[n] - take[n] for n in room}
    highest = max(left.values())
    # No agent that took rows was filled more than one row below another's level.
    assert all(left[n] >= highest - 1 for n in room if take[n] > 0)
