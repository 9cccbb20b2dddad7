"""The node's notion of "now", shared by the daemon and the simulator.

In production the clock is the system clock. A simulated node names a clock file
(`[clock] file`); both processes read the offset kept there, so a test can move
the node to 22:00 KST without touching the system time. The file holds JSON
``{"offset_s": <seconds added to the real UTC time>}``. It is re-read when its
inode or modification time changes, so reading the clock costs one ``stat``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

KST = timezone(timedelta(hours=9), "KST")


class NodeClock:
    def __init__(self, file: Path | None = None) -> None:
        self.file = file
        self._stamp: tuple[int, int] | None = None
        self._offset = 0.0

    def offset_s(self) -> float:
        if self.file is None:
            return 0.0
        try:
            info = os.stat(self.file)
            # The inode changes on every write (atomic replace), even within one mtime tick.
            stamp = (info.st_ino, info.st_mtime_ns)
        except FileNotFoundError:
            self._stamp, self._offset = None, 0.0
            return 0.0
        if stamp != self._stamp:
            try:
                self._offset = float(json.loads(self.file.read_text())["offset_s"])
            except (ValueError, KeyError, TypeError, OSError):
                # A half-written file: keep the previous offset and read again next time.
                return self._offset
            self._stamp = stamp
        return self._offset

    def now(self) -> datetime:
        """Aware UTC datetime."""
        return datetime.fromtimestamp(time.time() + self.offset_s(), UTC)

    def now_kst(self) -> datetime:
        return self.now().astimezone(KST)

    def set_now(self, target: datetime) -> None:
        """Move the clock so that `now()` reads `target` (aware) from this moment on."""
        if self.file is None:
            raise RuntimeError("this node uses the real clock; set [clock] file to move it")
        if target.tzinfo is None:
            raise ValueError("target time needs a timezone, e.g. 2026-11-27T22:00+09:00")
        offset = target.timestamp() - time.time()
        self._write(offset)

    def reset(self) -> None:
        if self.file is not None:
            self._write(0.0)

    def _write(self, offset: float) -> None:
        assert self.file is not None
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset_s": offset}))
        os.replace(tmp, self.file)
