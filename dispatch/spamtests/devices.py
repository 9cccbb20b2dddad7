"""This node's test phones in the web service's ``spam_filter_devices``: the registration
that makes the web create a result row for each of them in every test it creates.

The web gives every *active* device one result row per message type of a new test
(WEBSERVICE.md §4) and upserts a device on ``device_id`` (routes/spam-filter.ts:712-719),
as the Android app registers itself. The node registers each configured phone the same
way under an id of its own prefix, and deactivates its rows whose phone is no longer
configured. A phone whose modem is not ready stays active: its row then reads `timeout`,
so the web never silently tests fewer carriers. Rows of any other prefix (the web's
Android phones, other nodes) are never read or written; no column, index or constraint is
added to the web's table. Functions take a connection; no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from config.model import ModemConfig
from dispatch.store.runs import Conn

# Every device id of the node's phones starts with this, then the node id and ':'. A node
# id has no ':' (config/model.py), so one node's prefix is never another's.
PREFIX = "hanjullo-node"
# The web's device_name is varchar(100) (daemon/web_schema.sql).
DEVICE_NAME_MAX = 100


def node_prefix(node_id: str) -> str:
    """What every device id of this node's phones starts with."""
    return f"{PREFIX}:{node_id}:"


def device_id(node_id: str, phone: str) -> str:
    """The stable ``device_id`` of one of this node's test phones.

    Keyed by the phone number, not the modem label: the web tests a number (its result
    rows carry the device's phone), so a phone moved to another label or modem keeps its
    row, and a row never changes its number under the same id. Numbers are unique within a
    node (config/loader.py). It is also the id `db init` has always written, so the rows
    of a node registered before stay the same rows. At most 14 + 40 + 1 + 11 characters,
    well within the web's varchar(100)."""
    return f"{node_prefix(node_id)}{phone}"


def device_name(node_id: str, modem: ModemConfig) -> str:
    """What the web's device list shows: the node and the phone's label."""
    return f"hanjullo {node_id} {modem.label}"[:DEVICE_NAME_MAX]


@dataclass(frozen=True, slots=True)
class Registration:
    """What one registration did: rows upserted active, rows of removed phones deactivated."""

    active: int
    deactivated: int


# One statement: a refresh is atomic and costs one round trip. The two parts touch
# disjoint rows (the deactivation skips every configured id), so the one snapshot both
# see is enough. A row already inactive is not rewritten.
REGISTER_SQL = """
WITH configured (device_id, carrier, phone, device_name) AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
), upserted AS (
    INSERT INTO spam_filter_devices (device_id, carrier, phone, device_name, is_active,
                                     last_seen_at)
    SELECT device_id, carrier, phone, device_name, true, now() FROM configured
    ON CONFLICT (device_id) DO UPDATE SET carrier = EXCLUDED.carrier, phone = EXCLUDED.phone,
        device_name = EXCLUDED.device_name, is_active = true, last_seen_at = now()
    RETURNING 1
), deactivated AS (
    UPDATE spam_filter_devices SET is_active = false
    WHERE starts_with(device_id, $1) AND is_active
      AND device_id <> ALL($2::text[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted) AS active,
       (SELECT count(*) FROM deactivated) AS deactivated
"""


async def register(conn: Conn, node_id: str, phones: Sequence[ModemConfig]) -> Registration:
    """Upsert one active row per configured phone (``last_seen_at`` now) and deactivate
    this node's rows of phones no longer configured; nothing else is touched."""
    row = await conn.fetchrow(
        REGISTER_SQL,
        node_prefix(node_id),
        [device_id(node_id, m.phone) for m in phones],
        [m.carrier.value for m in phones],
        [m.phone for m in phones],
        [device_name(node_id, m) for m in phones],
    )
    assert row is not None  # an aggregate query always returns its one row
    return Registration(int(row["active"]), int(row["deactivated"]))
