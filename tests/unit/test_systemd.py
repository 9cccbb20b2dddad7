"""The sd_notify client must never block the daemon's event loop."""

from __future__ import annotations

import socket
from pathlib import Path

from daemon.systemd import Notifier


def test_a_receiver_that_stops_reading_never_blocks_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier(str(path))
    try:
        # Far more than the receive queue holds (net.unix.max_dgram_qlen is 10 by
        # default); a blocking send would hang here until the per-test timeout.
        for n in range(500):
            notifier.notify(f"STATUS=message {n}")
        receiver.setblocking(False)
        first = receiver.recv(4096)
        assert first == b"STATUS=message 0"
    finally:
        notifier.close()
        receiver.close()


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = Notifier("")
    assert not notifier.enabled
    notifier.notify("READY=1")
