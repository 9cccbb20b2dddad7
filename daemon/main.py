"""`hanjullo-noded`: the node daemon's entry point."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from config.loader import ConfigError, load_daemon_config
from config.logs import setup_for
from config.model import DEFAULT_CONFIG_PATH
from daemon.runtime import Runtime

# sysexits EX_CONFIG: the unit file does not restart on it (a restart cannot fix it).
EXIT_CONFIG = 78


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hanjullo-noded", description="Hanjullo per-node device and dispatch daemon"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"node configuration (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default=None)
    args = parser.parse_args(argv)
    try:
        config = load_daemon_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    # Under systemd stderr goes to journald; a configured log directory replaces it.
    setup_for(config.logging, args.log_format)
    from daemon.node import Node

    runtime = Runtime.create(config, args.config)
    return asyncio.run(Node(runtime).run())


if __name__ == "__main__":
    sys.exit(main())
