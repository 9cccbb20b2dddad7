"""The engine's registration of its test phones in the web's device table
(`daemon/spamtest/web_devices.py`) on fakes: its cadence on the monotonic clock, a phone
not ready still registered, a failure kept for the status and retried on the next pass,
and the status's ``web_devices``. The statement itself is tested on PostgreSQL
(tests/integration/test_web_devices.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.spamtest import engine, view, web_devices
from daemon.spamtest.web_devices import DEVICE_REFRESH_S
from dispatch.spamtests import devices
from tests.unit.dispatch_fakes import NODE
from tests.unit.spamtest_fakes import spam_engine

PHONES = {"SKT": "01090000001", "KT": "01090000002", "LGU": "01090000003"}


async def test_registered_at_start_then_once_per_refresh_however_many_passes(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    await web_devices.refresh(f.ctx)
    assert f.book.registrations == 1
    assert {d["carrier"]: d["phone"] for d in f.book.devices.values()} == PHONES
    assert all(d["is_active"] for d in f.book.devices.values())
    first_seen = {i: d["last_seen_at"] for i, d in f.book.devices.items()}
    # Passes every second (idle polls, receipts, NOTIFYs) do not register again.
    for _ in range(int(DEVICE_REFRESH_S) - 1):
        f.wall.advance(1)
        await web_devices.refresh(f.ctx)
        await engine.tick(f.ctx)
    assert f.book.registrations == 1
    f.wall.advance(1)
    await web_devices.refresh(f.ctx)
    assert f.book.registrations == 2
    assert set(f.book.devices) == set(first_seen)  # the same ids, seen again
    assert all(d["last_seen_at"] > first_seen[i] for i, d in f.book.devices.items())
    # A step of the system clock neither hurries nor delays the next one.
    f.wall.step(-3600)
    await web_devices.refresh(f.ctx)
    assert f.book.registrations == 2


async def test_a_phone_whose_modem_is_not_ready_stays_registered_active(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)
    f.phones["KT"].unplug()
    await web_devices.refresh(f.ctx)
    kt = f.book.devices[devices.device_id(NODE, PHONES["KT"])]
    assert (kt["carrier"], kt["is_active"]) == ("KT", True)
    assert sum(d["is_active"] for d in f.book.devices.values()) == 3


async def test_a_failure_is_kept_masked_and_retried_on_the_next_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = spam_engine(tmp_path)
    registered = f.book.register_devices

    async def refused(*_: object) -> devices.Registration:
        raise OSError(f"connection reset while registering {PHONES['SKT']}")

    monkeypatch.setattr(f.book, "register_devices", refused)
    await web_devices.refresh(f.ctx)  # never raises: the engine's loop goes on
    status = view.snapshot(f.ctx)["web_devices"]
    assert status == {
        "registered_at": None,
        "active": None,
        "error": "OSError: connection reset while registering 010****0001",
    }
    # The next pass, however soon, tries again.
    monkeypatch.setattr(f.book, "register_devices", registered)
    f.wall.advance(1)
    await web_devices.refresh(f.ctx)
    assert f.book.registrations == 1
    assert view.snapshot(f.ctx)["web_devices"] == {
        "registered_at": f.wall().isoformat(),
        "active": 3,
        "error": None,
    }
    # A later outage keeps the last registration in the status beside the error.
    f.book.fail_next.add("register_devices")
    f.wall.advance(DEVICE_REFRESH_S)
    await web_devices.refresh(f.ctx)
    status = view.snapshot(f.ctx)["web_devices"]
    assert status["active"] == 3 and status["registered_at"] is not None
    assert status["error"].endswith("postgres connection lost during register_devices")


async def test_the_engine_starting_again_as_the_writer_registers_at_once(tmp_path: Path) -> None:
    f = spam_engine(tmp_path)
    await web_devices.refresh(f.ctx)
    f.wall.advance(1)
    web_devices.restart(f.ctx)  # the role was lost and is back
    await web_devices.refresh(f.ctx)
    assert f.book.registrations == 2


async def test_a_removed_phone_is_deactivated_and_others_devices_are_left_alone(
    tmp_path: Path,
) -> None:
    f = spam_engine(tmp_path)
    android = {"device_id": "android-SKT", "carrier": "SKT", "is_active": True}
    f.book.devices["android-SKT"] = dict(android)
    await web_devices.refresh(f.ctx)
    del f.ctx.phones["LGU"]
    f.wall.advance(DEVICE_REFRESH_S)
    await web_devices.refresh(f.ctx)
    assert f.ctx.devices_done == devices.Registration(active=2, deactivated=1)
    assert not f.book.devices[devices.device_id(NODE, PHONES["LGU"])]["is_active"]
    assert f.book.devices["android-SKT"] == android
