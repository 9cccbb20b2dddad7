"""One message-type vocabulary and one agent-down rule for the whole node."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config.names import MessageType
from daemon.agents import AgentState, AgentStatus, agent_is_down


@pytest.mark.parametrize(
    ("kind", "code"), [(MessageType.SMS, "S"), (MessageType.LMS, "L"), (MessageType.MMS, "M")]
)
def test_message_types_map_to_agent_codes_both_ways(kind: MessageType, code: str) -> None:
    assert kind.agent_code == code
    assert MessageType.from_agent_code(code) is kind
    assert MessageType(kind.value) is kind  # the web service's spelling is the value


def test_an_unknown_agent_code_is_refused() -> None:
    with pytest.raises(ValueError, match="'K'"):
        MessageType.from_agent_code("K")  # Kakao: out of the node's scope


def status(state: AgentState) -> AgentStatus:
    return AgentStatus(
        3, "SMSQ_SEND_3", "bulk-1", "127.0.0.1:9003", state, True, None, datetime.now(UTC)
    )


@pytest.mark.parametrize(
    ("state", "down"),
    [
        (AgentState.OK, False),
        (AgentState.UNKNOWN, False),
        (AgentState.UNREACHABLE, True),
        (AgentState.STALLED, True),
    ],
)
def test_agent_is_down(state: AgentState, down: bool) -> None:
    assert agent_is_down(status(state)) is down


def test_an_agent_never_checked_is_not_down() -> None:
    assert agent_is_down(None) is False
