"""An in-process modem simulator on a real pty, for driver and manager tests."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config.example import sim_example
from config.loader import validate
from config.model import NodeConfig
from simulators.modem import SimModem


def node_config(directory: Path, **phones: object) -> NodeConfig:
    raw = tomllib.loads(sim_example(directory))
    raw["phones"] = {
        "command_timeout_s": 0.5,
        "health_interval_s": 0.5,
        "absent_check_interval_s": 0.1,
        "backoff_max_s": 1.0,
        **phones,
    }
    raw["supervision"]["check_interval_s"] = 0.5
    return validate(raw)


@pytest.fixture
async def kt_modem(tmp_path: Path) -> AsyncIterator[SimModem]:
    config = node_config(tmp_path)
    modem = SimModem(config.modems[1], 10, "+821000000000", 1.0)
    modem.plug()
    yield modem
    await modem.close()
