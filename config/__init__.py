"""Configuration, names, clock and logging: the bottom floor of the node.

Every other package may import this one; it imports none of them.
"""

from config.clock import KST, NodeClock
from config.loader import ConfigError, Problem, load_config, read_raw, validate
from config.model import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SOCKET_PATH,
    AgentConfig,
    LineGroupConfig,
    ModemConfig,
    ModemDriver,
    NodeConfig,
)
from config.names import Carrier, GroupType

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_SOCKET_PATH",
    "KST",
    "AgentConfig",
    "Carrier",
    "ConfigError",
    "GroupType",
    "LineGroupConfig",
    "ModemConfig",
    "ModemDriver",
    "NodeClock",
    "NodeConfig",
    "Problem",
    "load_config",
    "read_raw",
    "validate",
]
