from __future__ import annotations

from datetime import datetime
from pathlib import Path

from config.clock import KST, NodeClock


def test_clock_set_is_seen_by_another_reader(tmp_path: Path) -> None:
    writer, reader = NodeClock(tmp_path / "clock.json"), NodeClock(tmp_path / "clock.json")
    target = datetime(2026, 11, 27, 22, 0, tzinfo=KST)
    writer.set_now(target)
    assert abs((reader.now_kst() - target).total_seconds()) < 2
    writer.set_now(datetime(2026, 11, 28, 8, 0, tzinfo=KST))
    assert reader.now_kst().hour == 8
    writer.reset()
    assert abs(reader.offset_s()) < 1e-9


def test_real_clock_without_file() -> None:
    assert NodeClock(None).offset_s() == 0.0
