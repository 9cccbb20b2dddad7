"""The node's test phones in the web's ``spam_filter_devices`` (`dispatch/spamtests/devices.py`)
on the web's fixture database (daemon/web_schema.sql), read back with the web's own queries
(tests/webservice/queries.py): the web's queue gives each configured phone a result row,
a refresh keeps ids and bumps ``last_seen_at``, a removed phone is deactivated, a phone
moved to another label keeps its row, and no row of another prefix (the Android app's,
another node's) nor the table's definition changes. Last, a running simulated node: its
engine registers every phone, one whose modem is unplugged too, and says so in the status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from config.model import ModemConfig
from dispatch.spamtests import devices
from simulators.harness import SimulatedNode, wait_for
from tests import webservice as web
from tests.integration.helpers import pg_fetch
from tests.integration.test_webservice_fixture import tenant
from tests.webservice import queries as q

# A node id with '_' (a LIKE wildcard) beside one it would match if the prefix were a
# pattern rather than a prefix.
NODE = "node_6"
LOOKALIKE = "nodeX6"
CONFIGURED = {"SKT": "01090000001", "KT": "01090000002", "LGU": "01090000003"}
# The web's queue query (stq:120-229, WEBSERVICE.md §4).
WEB_QUEUE = "SELECT id, carrier, phone FROM spam_filter_devices WHERE is_active = true"


def modem(carrier: str, phone: str, name: str = "") -> ModemConfig:
    return ModemConfig.model_validate(
        {
            "carrier": carrier,
            "device": f"/dev/serial/by-id/usb-{carrier}-{phone}",
            "phone": phone,
            "mcc_mnc": ["45005"],
            "name": name,
        }
    )


MODEMS = [modem(c, p) for c, p in CONFIGURED.items()]


@pytest.fixture(scope="module")
def web_database() -> str:
    """A fresh fixture database (`<instance db>_web`), once per module."""
    import asyncio

    return asyncio.run(web.create_web_postgres())


@pytest.fixture
async def pg(web_database: str) -> AsyncIterator[asyncpg.Connection]:
    async with web.emptied_web_postgres(web_database) as conn:
        yield conn


async def rows(pg: asyncpg.Connection, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every device row (of `prefix`), by device_id."""
    found = await pg.fetch(
        "SELECT * FROM spam_filter_devices WHERE starts_with(device_id, $1)", prefix
    )
    return {r["device_id"]: dict(r) for r in found}


async def foreign_devices(pg: asyncpg.Connection) -> None:
    """What is not this node's: the Android app's phones (one deactivated by the web's
    operator) and a node whose id this node's prefix must not match."""
    await q.register_device(pg, "android-SKT", "SKT", "01070000001", "SKT phone")
    spare = await q.register_device(pg, "android-KT", "KT", "01070000002", "spare")
    await pg.execute("UPDATE spam_filter_devices SET is_active = false WHERE id = $1", spare)
    await devices.register(pg, LOOKALIKE, [modem("LGU", "01080000003")])


async def test_the_webs_queue_gives_each_configured_phone_a_result_row(
    pg: asyncpg.Connection,
) -> None:
    before = await web.catalog(pg)
    await foreign_devices(pg)
    done = await devices.register(pg, NODE, MODEMS)
    assert done == devices.Registration(active=3, deactivated=0)
    listed = {(r["carrier"], r["phone"]) for r in await pg.fetch(WEB_QUEUE)}
    assert {(c, p) for c, p in CONFIGURED.items()} <= listed
    ours = await rows(pg, devices.node_prefix(NODE))
    assert sorted(ours) == sorted(f"hanjullo-node:{NODE}:{p}" for p in CONFIGURED.values())
    assert all(len(i) <= 100 for i in ours)
    assert {r["device_name"] for r in ours.values()} == {f"hanjullo {NODE} {c}" for c in CONFIGURED}
    assert all(r["is_active"] and r["last_seen_at"] is not None for r in ours.values())

    # The web's queue creates one result row per active device and type: ours among them.
    a = await tenant(pg, "DEV")
    test_id = await q.enqueue_spam_test(pg, a.company, a.user, a.callback, "SMS", sms="안내")
    results = await pg.fetch(
        "SELECT carrier, message_type, phone FROM spam_filter_test_results WHERE test_id = $1",
        test_id,
    )
    assert {(c, "SMS", p) for c, p in CONFIGURED.items()} <= {tuple(r) for r in results}
    # Registering added no column, index, constraint or trigger to the web's tables.
    assert await web.catalog(pg) == before


async def test_a_refresh_keeps_every_id_and_bumps_last_seen_at(pg: asyncpg.Connection) -> None:
    await devices.register(pg, NODE, MODEMS)
    first = await rows(pg, devices.node_prefix(NODE))
    again = await devices.register(pg, NODE, MODEMS)
    assert again == devices.Registration(active=3, deactivated=0)
    later = await rows(pg, devices.node_prefix(NODE))
    assert {i: r["id"] for i, r in later.items()} == {i: r["id"] for i, r in first.items()}
    assert all(later[i]["last_seen_at"] > first[i]["last_seen_at"] for i in first)
    assert all(later[i]["created_at"] == first[i]["created_at"] for i in first)


async def test_a_removed_phone_is_deactivated_and_comes_back_as_the_same_row(
    pg: asyncpg.Connection,
) -> None:
    await devices.register(pg, NODE, MODEMS)
    lgu = devices.device_id(NODE, CONFIGURED["LGU"])
    registered = (await rows(pg, lgu))[lgu]
    done = await devices.register(pg, NODE, MODEMS[:2])
    assert done == devices.Registration(active=2, deactivated=1)
    retired = (await rows(pg, lgu))[lgu]
    assert retired["is_active"] is False
    # Last seen when it was last registered, not when it was retired.
    assert retired["last_seen_at"] == registered["last_seen_at"]
    assert "LGU" not in {r["carrier"] for r in await pg.fetch(WEB_QUEUE)}
    # Already inactive: not rewritten by the next refresh.
    assert await devices.register(pg, NODE, MODEMS[:2]) == devices.Registration(2, 0)
    # No phone configured: every row of the node is retired.
    assert await devices.register(pg, NODE, []) == devices.Registration(0, 2)
    assert not any(r["is_active"] for r in (await rows(pg, devices.node_prefix(NODE))).values())
    # Configured again: the same row, active again.
    await devices.register(pg, NODE, MODEMS)
    back = (await rows(pg, lgu))[lgu]
    assert (back["id"], back["is_active"]) == (registered["id"], True)


async def test_a_phone_moved_to_another_label_keeps_its_row(pg: asyncpg.Connection) -> None:
    await devices.register(pg, NODE, MODEMS)
    before = await rows(pg, devices.node_prefix(NODE))
    # The KT phone is now the modem named "KT-spare" (another label, another device).
    moved = [MODEMS[0], modem("KT", CONFIGURED["KT"], name="KT-spare"), MODEMS[2]]
    assert await devices.register(pg, NODE, moved) == devices.Registration(3, 0)
    after = await rows(pg, devices.node_prefix(NODE))
    kt = devices.device_id(NODE, CONFIGURED["KT"])
    assert {i: r["id"] for i, r in after.items()} == {i: r["id"] for i, r in before.items()}
    assert after[kt]["device_name"] == f"hanjullo {NODE} KT-spare"
    kt_listed = [r for r in await pg.fetch(WEB_QUEUE) if r["phone"] == CONFIGURED["KT"]]
    assert len(kt_listed) == 1  # the web tests the phone once, not once per label
    # The SIM of that modem replaced by another number: the old number's row is retired.
    swapped = [MODEMS[0], modem("KT", "01090000009", name="KT-spare"), MODEMS[2]]
    assert await devices.register(pg, NODE, swapped) == devices.Registration(3, 1)
    kt_active = {r["phone"] for r in await pg.fetch(WEB_QUEUE) if r["carrier"] == "KT"}
    assert kt_active == {"01090000009"}


async def test_devices_not_of_this_node_are_never_touched(pg: asyncpg.Connection) -> None:
    await foreign_devices(pg)
    foreign = await rows(pg)
    await devices.register(pg, NODE, MODEMS)
    await devices.register(pg, NODE, MODEMS[:1])
    await devices.register(pg, NODE, [])
    everything = await rows(pg)
    assert {i: everything[i] for i in foreign} == foreign
    # The web's Android app still registers its phones as before.
    await q.register_device(pg, "android-SKT", "SKT", "01070000001", "SKT phone")
    listed = {r["phone"] for r in await pg.fetch(WEB_QUEUE)}
    assert {"01070000001", "01080000003"} <= listed


def test_the_running_engine_registers_every_phone_even_one_whose_modem_is_unplugged(
    sim_node: SimulatedNode,
) -> None:
    node_id = sim_node.status_config()["node"]["id"]
    prefix = devices.node_prefix(node_id)
    query = (
        "SELECT carrier, is_active, last_seen_at FROM spam_filter_devices"
        " WHERE starts_with(device_id, $1) ORDER BY carrier"
    )
    at_init = {c: seen for c, _, seen in pg_fetch(query, prefix)}
    assert sorted(at_init) == ["KT", "LGU", "SKT"]
    sim_node.start_sim()
    sim_node.sim_ctl("modem", "LGU", "unplug")
    sim_node.start_daemon()
    status = wait_for(
        lambda: (s := sim_node.status()["spam_tests"]["web_devices"])["registered_at"] and s,
        20,
        "the engine's first registration",
    )
    assert (status["active"], status["error"]) == (3, None)
    modems = {m["name"]: m["state"] for m in sim_node.status()["modems"]}
    assert modems["LGU"] != "ready"
    rows = pg_fetch(query, prefix)
    assert [(c, active) for c, active, _ in rows] == [("KT", True), ("LGU", True), ("SKT", True)]
    assert all(seen > at_init[c] for c, _, seen in rows)
