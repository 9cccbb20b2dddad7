"""The systemd notify protocol (sd_notify), without linking libsystemd.

Sends datagrams to ``$NOTIFY_SOCKET`` (a path, or an abstract socket when it
starts with ``@``). Outside systemd every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the event loop: a receiver that stops reading fills its queue
            # (net.unix.max_dgram_qlen, 10 by default) and a blocking send would hang us.
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        # systemd went away, is not reading, or a test closed its socket: nothing to tell.
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(fields).encode(), target)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of the watchdog period systemd expects pings in, or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None
