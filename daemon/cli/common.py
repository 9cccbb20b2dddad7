"""What every `hanjulloctl` command shares: its error, the node's configuration, and the
daemon's socket.

It imports only `config`; command modules import it and never each other, so the CLI has no
import cycle to hide (tests/unit/test_layout.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
from pathlib import Path
from typing import Any, TypeAlias

from config.loader import ConfigError, load_config
from config.model import DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH, NodeConfig

# What a command module's `register` adds its subcommands to.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# A status read answers from memory; a control (cancel, drain …) may pull rows back from
# the agents' tables first, which takes longer on a loaded node.
READ_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 60.0


class CtlError(Exception):
    """A failure the operator can act on; printed without a traceback, exit 1."""


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The configuration named by ``--config`` (or the default path)."""
    path = getattr(args, "config", None) or DEFAULT_CONFIG_PATH
    return load_config(Path(path))


def socket_path(args: argparse.Namespace) -> Path:
    """``--socket``, else the one the configuration names, else the default."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "config", None):
        return node_config(args).socket.path
    if DEFAULT_CONFIG_PATH.exists():
        try:
            return load_config(DEFAULT_CONFIG_PATH).socket.path
        except ConfigError:
            pass
    return DEFAULT_SOCKET_PATH


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


def request(path: Path, method: str, url: str, timeout: float) -> Any:
    """One request to the daemon's socket; its JSON answer, or a `CtlError` that says what
    to do (the daemon answers every error as JSON with an ``error`` field)."""
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, url, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        body = response.read()
    except FileNotFoundError as exc:
        raise CtlError(
            f"no daemon socket at {path}: the daemon is not running, or the path is wrong "
            "(pass --socket or --config)"
        ) from exc
    except ConnectionRefusedError as exc:
        raise CtlError(f"{path} exists but nobody listens: the daemon is not running") from exc
    except PermissionError as exc:
        raise CtlError(
            f"permission denied on {path}: run as root or as a member of the socket's group"
        ) from exc
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise CtlError(f"cannot talk to the daemon at {path}: {exc}") from exc
    finally:
        conn.close()
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if response.status != 200:
        if response.status == 403 and isinstance(payload, dict):
            # Reading needs only the socket's group; a control needs root or the operator
            # group, and the daemon's answer names that group and the fix.
            raise CtlError(
                f"refused by the daemon (403, not an operator): {payload.get('error', '')}"
            )
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            raise CtlError(payload["error"])
        raise CtlError(f"daemon answered {response.status}: {body.decode(errors='replace')}")
    if payload is None:
        raise CtlError(f"the daemon at {path} answered something that is not JSON")
    return payload


def get(path: Path, url: str) -> Any:
    return request(path, "GET", url, READ_TIMEOUT_S)


def post(path: Path, url: str) -> Any:
    return request(path, "POST", url, CONTROL_TIMEOUT_S)
