"""`hanjulloctl`: the operator's command line.

stdout carries only the result (a table, TOML, or exactly one JSON document with
``--json``); logs, progress and errors go to stderr. ``--config PATH`` is
accepted before or after the subcommand. Each command module registers its own
subcommands; they share only `daemon.cli.common`.
"""

from __future__ import annotations

import argparse
import sys

from config.loader import ConfigError
from config.logs import setup_logging
from config.model import DEFAULT_CONFIG_PATH
from config.version import package_version
from daemon.cli import fleet, node_setup, pdu, runs, spam, status
from daemon.cli.common import CtlError

# In the order `hanjulloctl --help` lists them.
COMMAND_MODULES = (status, node_setup, pdu, runs, spam, fleet)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"node configuration (default {DEFAULT_CONFIG_PATH})",
    )
    parser = argparse.ArgumentParser(
        prog="hanjulloctl", parents=[common], description="Operate a Hanjullo node"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("warning", "console")
    try:
        result: int = args.func(args)
        return result
    except (ConfigError, CtlError) as exc:
        print(f"hanjulloctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
