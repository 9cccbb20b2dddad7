"""The modem manager: event-driven receipts, durable and exactly once, honest states."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from config.model import NodeConfig
from config.names import message_hash
from daemon import receipts, schema
from daemon.modems import ModemManager, ModemState
from daemon.role import WriterState
from daemon.runtime import Runtime
from daemon.stores import PostgresKeeper
from daemon.supervisor import Health
from dispatch.ledger import Fence, Holder
from drivers import pdu
from drivers.at import RESYNC_TIMEOUT_FACTOR
from simulators.modem import ModemFault, SimModem
from tests.integration.modem_fixtures import node_config

KST = timezone(timedelta(hours=9))


async def until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


class Managed:
    def __init__(self, config: NodeConfig, manager: ModemManager, modem: SimModem) -> None:
        self.config, self.manager, self.modem = config, manager, modem

    def send(self, text: str) -> int:
        assert self.modem.deliver(
            pdu.encode_deliver(
                "0212345678", text, datetime.now(KST), "+821000000000", reference=len(text)
            )
        )
        return self.modem._uid

    async def rows(self, text: str) -> list[asyncpg.Record]:
        conn = await schema.connect_pg(self.config)
        try:
            return await conn.fetch(
                "SELECT * FROM hanjullo.modem_receipts WHERE node_id = $1 AND text = $2",
                self.config.node.id,
                text,
            )
        finally:
            await conn.close()


async def start_manager(
    config: NodeConfig, modem: SimModem, index: int = 1, role: WriterState | None = None
) -> tuple[ModemManager, list[asyncio.Task[None]]]:
    runtime = Runtime.create(config)
    conn = await schema.connect_pg(config)
    try:
        await schema.migrate_pg(conn)
        await conn.execute("DELETE FROM hanjullo.modem_receipts WHERE node_id = $1", config.node.id)
    finally:
        await conn.close()
    postgres = PostgresKeeper(runtime)
    tasks = [asyncio.create_task(postgres.run(Health("postgres")))]
    await asyncio.wait_for(postgres.ready.wait(), 10)
    manager = ModemManager(runtime, config.modems[index], postgres, role)
    tasks.append(asyncio.create_task(manager.run(Health(manager.name))))
    return manager, tasks


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in reversed(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def managed(tmp_path: Path, kt_modem: SimModem) -> AsyncIterator[Managed]:
    config = node_config(tmp_path)
    manager, tasks = await start_manager(config, kt_modem)
    await until(lambda: manager.ready, 10, "the modem to be ready")
    yield Managed(config, manager, kt_modem)
    await stop(tasks)


async def test_a_passive_daemon_leaves_the_port_alone_until_it_is_the_writer(
    tmp_path: Path, kt_modem: SimModem
) -> None:
    """Issue 12: a second daemon of the node (passive: another holds the writer role) must
    not open the test phone's port; it opens it when it becomes the writer, and closes it
    when another daemon is seen holding the role."""
    config = node_config(tmp_path)
    role = WriterState()
    manager, tasks = await start_manager(config, kt_modem, role=role)
    try:
        role.passive(Holder("other-host", 4242, datetime.now(UTC), 1))
        await until(lambda: manager.status.state == ModemState.PASSIVE, 5, "passive")
        assert "other-host pid 4242" in manager.status.reason
        await asyncio.sleep(0.5)  # a manager that ignored the role would have opened by now
        assert manager.driver is None and kt_modem.counters.commands == 0
        role.taken(Fence(config.node.id, 2))
        await until(lambda: manager.ready, 10, "the modem to be ready as the writer")
        assert kt_modem.counters.commands > 0
        role.passive(Holder("other-host", 4343, datetime.now(UTC), 3))
        await until(lambda: manager.status.state == ModemState.PASSIVE, 5, "passive again")
        commands = kt_modem.counters.commands
        Managed(config, manager, kt_modem).send("while passive")
        await asyncio.sleep(0.5)
        assert kt_modem.counters.commands == commands  # nobody reads the port now
        assert len(kt_modem.storage) == 1  # left on the phone for the writer
    finally:
        await stop(tasks)


async def test_cmti_receipt_is_recorded_at_once_without_polling(managed: Managed) -> None:
    listings = managed.modem.counters.cmgl
    started = time.monotonic()
    uid = managed.send("스팸 테스트 문구 입니다")
    await until(lambda: managed.manager.status.receipts >= 1, 2, "the receipt")
    assert time.monotonic() - started < 0.5
    assert managed.modem.read_log[uid] == 1  # read once, because of its +CMTI
    assert managed.modem.counters.cmgl == listings  # no storage listing meanwhile
    assert managed.modem.storage == {}  # deleted after it was recorded
    (row,) = await managed.rows("스팸 테스트 문구 입니다")
    assert row["sender"] == "0212345678" and row["carrier"] == "KT"
    assert row["text_hash"] == message_hash("스팸테스트문구입니다")
    assert row["deleted_from_modem"] and row["via"] == "cmti" and row["complete"]


async def test_unplug_and_replug_under_a_new_name_loses_and_doubles_nothing(
    managed: Managed,
) -> None:
    managed.send("before the unplug")
    await until(lambda: managed.manager.status.receipts >= 1, 5, "the first receipt")
    managed.modem.settings.cnmi = (0, 0, 0, 0, 0)
    managed.send("stored but never announced")  # found by the sweep after the replug
    managed.modem.set_fault(ModemFault.UNPLUG)
    await until(lambda: managed.manager.status.state == ModemState.ABSENT, 5, "absent")
    assert not managed.modem.deliver(
        pdu.encode_deliver("0212345678", "during the unplug", datetime.now(KST))
    )
    replugged = time.monotonic()
    managed.modem.set_fault(ModemFault.OK, new_name=True)
    await until(lambda: managed.manager.ready, 5, "ready again after the replug")
    assert time.monotonic() - replugged < 5
    managed.send("during the unplug")  # the network hands over what it held
    managed.send("after the replug")
    await until(lambda: managed.manager.status.receipts >= 4, 10, "every receipt")
    for text in (
        "before the unplug",
        "stored but never announced",
        "during the unplug",
        "after the replug",
    ):
        assert len(await managed.rows(text)) == 1, text
    assert managed.modem.storage == {}


async def test_a_message_stored_unannounced_is_listed_by_the_storage_count(
    managed: Managed,
) -> None:
    """A lost +CMTI costs a few health checks, not a sweep interval: two checks in a row
    that count more stored messages than the driver has read list the storage."""
    await until(lambda: managed.manager.storage_read_at is not None, 5, "the first listing")
    listings = managed.modem.counters.cmgl
    managed.modem.settings.cnmi = (0, 0, 0, 0, 0)
    started = time.monotonic()
    managed.send("stored but never announced")
    await until(lambda: managed.manager.status.receipts >= 1, 5, "the receipt")
    phones = managed.config.phones
    assert time.monotonic() - started < 4 * phones.health_interval_s + 1.0
    assert time.monotonic() - started < phones.sweep_interval_s / 2  # not the periodic sweep
    assert managed.modem.counters.cmgl == listings + 1
    (row,) = await managed.rows("stored but never announced")
    assert row["via"] == "sweep"
    assert managed.modem.storage == {}


async def test_hung_modem_is_marked_hung_and_recovers(managed: Managed) -> None:
    phones = managed.config.phones
    started = datetime.now(UTC)
    managed.modem.set_fault(ModemFault.HANG)

    def first_hung() -> object:
        return next(
            (t for t in managed.manager.history if t.state == ModemState.HUNG and t.at >= started),
            None,
        )

    await until(first_hung, 10, "hung")
    transition = first_hung()
    assert "no answer to 3 consecutive commands" in transition.reason  # type: ignore[attr-defined]
    # Three timed-out commands, each after a health interval at most (plus scheduling slack):
    # the first waits out its own timeout; each later one first tries to resynchronise the
    # silent modem, for RESYNC_TIMEOUT_FACTOR timeouts, and that attempt is its timeout.
    elapsed = (transition.at - started).total_seconds()  # type: ignore[attr-defined]
    first = phones.health_interval_s + phones.command_timeout_s
    later = phones.health_interval_s + RESYNC_TIMEOUT_FACTOR * phones.command_timeout_s
    assert elapsed <= first + (phones.hang_after_timeouts - 1) * later + 2.0
    managed.modem.set_fault(ModemFault.OK)
    await until(lambda: managed.manager.ready, 15, "ready after the modem answers again")
    assert managed.manager.status.recoveries >= 1


@pytest.mark.parametrize(
    ("fault", "state", "reason"),
    [
        (ModemFault.SIM_LOCKED, ModemState.MISCONFIGURED, "SIM locked"),
        (ModemFault.NO_NETWORK, ModemState.DEGRADED, "not registered"),
    ],
)
async def test_faults_are_reported_with_their_reason(
    managed: Managed, fault: ModemFault, state: ModemState, reason: str
) -> None:
    managed.modem.set_fault(fault)
    await until(lambda: managed.manager.status.state == state, 5, state.value)
    assert reason in managed.manager.status.reason
    assert not managed.manager.ready
    managed.modem.set_fault(ModemFault.OK)
    await until(lambda: managed.manager.ready, 5, "ready again")


async def test_a_modem_opened_with_its_sim_locked_is_misconfigured_not_degraded(
    tmp_path: Path, kt_modem: SimModem
) -> None:
    """A locked SIM answers AT+CPMS (and AT+CMGL) with +CME ERROR: 11 before AT+CPIN? is
    ever asked: a session opened, or a sweep run, while the SIM is locked must still say
    "SIM locked" and ask the operator to act (it said "degraded: ATError" and stayed so,
    the way the suite's sim-locked case failed when the fault met the first sweep)."""
    kt_modem.set_fault(ModemFault.SIM_LOCKED)
    config = node_config(tmp_path)
    manager, tasks = await start_manager(config, kt_modem)
    try:
        await until(lambda: manager.status.state == ModemState.MISCONFIGURED, 10, "misconfigured")
        assert "SIM locked (pin-required)" in manager.status.reason
        assert "CPMS" in manager.status.reason  # which command found it
        assert not manager.ready
        kt_modem.set_fault(ModemFault.OK)
        await until(lambda: manager.ready, 10, "ready once the SIM is unlocked")
    finally:
        await stop(tasks)


async def test_full_storage_makes_the_modem_not_ready(managed: Managed) -> None:
    managed.modem.settings.cnmi = (0, 0, 0, 0, 0)  # notifications lost; the sweep is 30 s away
    for i in range(managed.modem.capacity):
        managed.send(f"filler {i}")
    await until(lambda: managed.manager.status.state == ModemState.DEGRADED, 5, "degraded")
    assert "storage full" in managed.manager.status.reason
    managed.modem.storage.clear()  # emptied elsewhere (e.g. by hand)
    await until(lambda: managed.manager.ready, 5, "ready once storage has room")


async def test_ready_throughout_answers_for_an_interval(managed: Managed) -> None:
    start = time.monotonic()
    assert managed.manager.ready_throughout(start)
    managed.modem.set_fault(ModemFault.NO_NETWORK)
    await until(lambda: not managed.manager.ready, 5, "not ready")
    managed.modem.set_fault(ModemFault.OK)
    await until(lambda: managed.manager.ready, 5, "ready")
    assert not managed.manager.ready_throughout(start)
    assert managed.manager.ready_throughout(time.monotonic())


async def test_wrong_operator_is_misconfigured(tmp_path: Path, kt_modem: SimModem) -> None:
    config = node_config(tmp_path)
    # The KT phone's modem registered on 45008, but this entry expects SKT's 45005.
    wrong = config.modems[1].model_copy(update={"mcc_mnc": ["45005"]})
    config = config.model_copy(update={"modems": [config.modems[0], wrong, config.modems[2]]})
    manager, tasks = await start_manager(config, kt_modem)
    try:
        await until(lambda: manager.status.state == ModemState.MISCONFIGURED, 10, "misconfigured")
        assert "45008" in manager.status.reason and "45005" in manager.status.reason
    finally:
        await stop(tasks)


async def test_a_receipt_found_again_is_not_recorded_twice(managed: Managed) -> None:
    from drivers.base import Received

    parts = pdu.encode_deliver("0212345678", "found twice", datetime.now(KST))
    decoded = pdu.decode(parts[0])
    assert isinstance(decoded, pdu.Deliver)
    (message,) = pdu.Reassembler(60).add(decoded, 0.0)
    received = Received(message, (7,), (parts[0].hex().upper(),), "sweep")
    assert managed.manager.postgres is not None
    pool = managed.manager.postgres.require()
    first = await receipts.record(pool, managed.config.node.id, managed.config.modems[1], received)
    again = await receipts.record(pool, managed.config.node.id, managed.config.modems[1], received)
    assert first.new and not again.new and first.id == again.id
    await receipts.mark_deleted(pool, first.id)
    # Deleted from the modem: the same bytes at the same index later are a new message.
    later = await receipts.record(pool, managed.config.node.id, managed.config.modems[1], received)
    assert later.new and later.id != first.id


async def test_a_service_indication_is_recorded_as_a_wap_push_in_postgres(
    managed: Managed,
) -> None:
    """python-messaging's Service Indication (tests/unit/test_pdu_vectors.py cites it): the
    receipts table takes it under its own kind (before: recorded as an empty 'sms')."""
    from drivers.base import Received
    from tests.unit.test_pdu_vectors import MESSAGING_SI, join

    received = Received(join(MESSAGING_SI), (3, 4), MESSAGING_SI, "sweep")
    assert managed.manager.postgres is not None
    pool = managed.manager.postgres.require()
    recorded = await receipts.record(
        pool, managed.config.node.id, managed.config.modems[1], received
    )
    async with pool.acquire() as conn:
        kind = await conn.fetchval(
            "SELECT kind FROM hanjullo.modem_receipts WHERE id = $1", recorded.id
        )
    assert recorded.new and kind == "wap-push"


async def test_gammu_driver_survives_unplug_and_replug(tmp_path: Path, kt_modem: SimModem) -> None:
    config = node_config(tmp_path)
    gammu_kt = config.modems[1].model_copy(update={"driver": "gammu"})
    config = config.model_copy(update={"modems": [config.modems[0], gammu_kt, config.modems[2]]})
    manager, tasks = await start_manager(config, kt_modem)
    managed = Managed(config, manager, kt_modem)
    try:
        await until(lambda: manager.ready, 20, "ready through gammu")
        managed.send("gammu before")
        await until(lambda: manager.status.receipts >= 1, 5, "first receipt")
        kt_modem.set_fault(ModemFault.UNPLUG)
        await until(lambda: not manager.ready, 10, "not ready after the unplug")
        kt_modem.set_fault(ModemFault.OK, new_name=True)
        await until(lambda: manager.ready, 20, "ready again through gammu")
        managed.send("gammu after")
        await until(lambda: manager.status.receipts >= 2, 5, "second receipt")
        for text in ("gammu before", "gammu after"):
            assert len(await managed.rows(text)) == 1
    finally:
        await stop(tasks)


async def test_receipts_are_pruned_after_the_retention(managed: Managed) -> None:
    managed.send("old enough to go")
    await until(lambda: managed.manager.status.receipts >= 1, 5, "the receipt")
    assert managed.manager.postgres is not None
    pool = managed.manager.postgres.require()
    node = managed.config.node.id
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE hanjullo.modem_receipts SET received_at = now() - interval '40 days'"
            " WHERE node_id = $1 AND text = 'old enough to go'",
            node,
        )
    from datetime import timedelta as days

    assert await receipts.prune(pool, node, days(days=30)) == 1
    assert await managed.rows("old enough to go") == []


# ---- honest receipts (issue 13) ---------------------------------------------------------------
async def test_a_failed_delete_makes_the_modem_not_ready_until_it_is_recovered(
    managed: Managed,
) -> None:
    """One AT+CMGD answered with an error: the phone is not ready (with the reason) until
    the message is recorded and deleted after all, and receipts go on afterwards."""
    managed.modem.set_fault(ModemFault.CMGD_FAIL_ONCE)
    managed.send("지워지지 않은 메시지")
    await until(lambda: not managed.manager.ready, 5, "not ready after the failed delete")
    assert "delete" in managed.manager.status.reason
    await until(lambda: managed.manager.ready, 10, "ready again")
    await until(lambda: managed.modem.storage == {}, 5, "the message deleted after all")
    (row,) = await managed.rows("지워지지 않은 메시지")
    assert row["deleted_from_modem"]
    managed.send("그 다음 메시지")
    await until(lambda: managed.modem.storage == {}, 5, "the next message deleted")
    assert len(await managed.rows("그 다음 메시지")) == 1
    assert managed.manager.ready


async def test_a_text_with_a_nul_is_recorded_escaped_and_the_next_follows(
    managed: Managed,
) -> None:
    """A UCS2 text decoding to U+0000 (PostgreSQL text cannot hold it) is recorded with the
    NUL escaped, deleted, and does not hold up the next one."""
    managed.send("널\x00문자")
    managed.send("널 다음 메시지")
    await until(lambda: managed.modem.storage == {}, 5, "both messages deleted")
    (row,) = await managed.rows("널\\0문자")
    assert row["deleted_from_modem"] and row["complete"]
    assert len(await managed.rows("널 다음 메시지")) == 1
    assert managed.manager.ready


async def test_the_storage_counts_as_read_once_what_it_held_is_recorded(
    tmp_path: Path, kt_modem: SimModem
) -> None:
    """The manager's proof of a complete read (what `blocked` needs): a listing of the
    storage whose every message is in hanjullo.modem_receipts; a read can be forced."""
    config = node_config(tmp_path)
    managed = Managed(config, None, kt_modem)  # type: ignore[arg-type]
    managed.send("열기 전에 도착한 메시지")  # no +CMTI: the modem is not set up yet
    manager, tasks = await start_manager(config, kt_modem)
    try:
        await until(lambda: manager.storage_read_at is not None, 10, "a complete read")
        assert len(await managed.rows("열기 전에 도착한 메시지")) == 1
        first = manager.storage_read_at
        assert first is not None and manager.watched_since(first)
        assert manager.as_json()["storage_read_s_ago"] is not None
        listings = kt_modem.counters.cmgl
        manager.request_read()
        await until(lambda: (manager.storage_read_at or 0.0) > first, 3, "the forced read")
        assert kt_modem.counters.cmgl > listings  # long before the 30 s sweep
    finally:
        await stop(tasks)


async def test_a_message_that_cannot_be_recorded_makes_the_modem_not_ready(
    tmp_path: Path, kt_modem: SimModem
) -> None:
    """No PostgreSQL to record into: the message stays on the modem and the phone is not
    ready (with the reason) while the manager retries."""
    config = node_config(tmp_path)
    manager = ModemManager(Runtime.create(config), config.modems[1], None)
    task = asyncio.create_task(manager.run(Health(manager.name)))
    try:
        await until(lambda: manager.ready, 10, "the modem to be ready")
        Managed(config, manager, kt_modem).send("기록할 수 없는 메시지")
        await until(lambda: not manager.ready, 5, "not ready while it cannot be recorded")
        assert "not recorded" in manager.status.reason
        assert len(kt_modem.storage) == 1  # kept on the modem meanwhile
    finally:
        await stop([task])


async def test_an_undecodable_pdu_is_recorded_as_such_and_deleted(managed: Managed) -> None:
    """A PDU the codec rejects is recorded as undecodable (its raw bytes kept) and deleted,
    instead of taking a storage slot forever; the next text follows."""
    garbage = bytes.fromhex("07912801000000000004FF")
    assert managed.modem.deliver([garbage])
    managed.send("해독 불가 다음 메시지")
    await until(lambda: managed.modem.storage == {}, 5, "both deleted")
    conn = await schema.connect_pg(managed.config)
    try:
        rows = await conn.fetch(
            "SELECT * FROM hanjullo.modem_receipts WHERE node_id = $1 AND kind = 'undecodable'",
            managed.config.node.id,
        )
    finally:
        await conn.close()
    (row,) = rows
    assert row["raw_pdus"] == [garbage.hex().upper()] and row["deleted_from_modem"]
    assert not row["complete"] and row["text"] == ""
    assert len(await managed.rows("해독 불가 다음 메시지")) == 1
