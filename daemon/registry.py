"""The central registry of nodes (docs/fleet.md): its table, who may write which row, a
node's heartbeat, and what a reader derives from a row.

Shared by the daemon (its `control-plane` component heartbeats) and `hanjulloctl fleet`
(init, add-node, status, place, targets). It holds the registry's SQL and pure functions
over its rows; it imports none of the daemon's runtime.

Who writes what:
- the control plane owns the table (it runs `fleet init` and owns `assigned_companies`);
- a node logs in as its own role, ``hanjullo_node_<node id>``, which may do one thing:
  call ``node_heartbeat(…)``. That function (SECURITY DEFINER) writes the row whose id is
  the caller's role's, and only the columns a heartbeat carries; ``last_heartbeat_at``
  and ``registered_at`` come from the central server's ``now()``, never from the node's
  (settable) clock. A node has no privilege on the table itself, so it can neither read
  nor touch another node's row, nor ``assigned_companies``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

NODE_ROLE_PREFIX = "hanjullo_node_"
# Every node role is a member of this one; it is granted the heartbeat function only.
NODE_GROUP_ROLE = "hanjullo_fleet_node"
# A row is stale once its heartbeat is older than this many of the node's intervals.
STALE_AFTER_INTERVALS = 3
# The heartbeat intervals node_heartbeat() accepts (as [control_plane] heartbeat_interval_s).
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 300

INIT_SQL = f"""
CREATE TABLE IF NOT EXISTS nodes (
    id text PRIMARY KEY,
    name text NOT NULL DEFAULT '',
    base_url text NOT NULL DEFAULT '',
    version text NOT NULL DEFAULT '',
    capacity jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    heartbeat_interval_s double precision NOT NULL DEFAULT 10,
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    registered_at timestamptz NOT NULL DEFAULT now(),
    assigned_companies integer NOT NULL DEFAULT 0
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{NODE_GROUP_ROLE}') THEN
        CREATE ROLE {NODE_GROUP_ROLE} NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON nodes FROM PUBLIC;
REVOKE ALL ON nodes FROM {NODE_GROUP_ROLE};
CREATE OR REPLACE FUNCTION node_heartbeat(
    p_id text, p_name text, p_base_url text, p_version text, p_capacity jsonb,
    p_interval_s double precision
) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    own text := substr(session_user, length('{NODE_ROLE_PREFIX}') + 1);
    stamped timestamptz;
BEGIN
    IF left(session_user, length('{NODE_ROLE_PREFIX}')) <> '{NODE_ROLE_PREFIX}' THEN
        RAISE EXCEPTION 'role % is not a node role ({NODE_ROLE_PREFIX}<node id>)', session_user
            USING ERRCODE = '42501';
    END IF;
    IF p_id <> own THEN
        RAISE EXCEPTION 'role % heartbeats for node %, not for node %', session_user, own, p_id
            USING ERRCODE = '42501',
                  HINT = 'give this node the DSN `hanjulloctl fleet add-node ' || p_id
                         || '` printed';
    END IF;
    -- The row's staleness is three of its intervals: a node must not be able to keep its
    -- row fresh for days, or make it unreadable with a NaN.
    IF p_interval_s IS NULL OR p_interval_s = 'NaN'::double precision
       OR p_interval_s < {MIN_INTERVAL_S} OR p_interval_s > {MAX_INTERVAL_S} THEN
        RAISE EXCEPTION 'heartbeat interval % s is outside {MIN_INTERVAL_S}-{MAX_INTERVAL_S} s',
            coalesce(p_interval_s::text, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'set [control_plane] heartbeat_interval_s between {MIN_INTERVAL_S} '
                         || 'and {MAX_INTERVAL_S}';
    END IF;
    INSERT INTO nodes AS n (id, name, base_url, version, capacity, heartbeat_interval_s,
                            last_heartbeat_at, registered_at)
    VALUES (own, p_name, p_base_url, p_version, p_capacity, p_interval_s, now(), now())
    ON CONFLICT (id) DO UPDATE SET
        name = EXCLUDED.name,
        base_url = EXCLUDED.base_url,
        version = EXCLUDED.version,
        capacity = EXCLUDED.capacity,
        heartbeat_interval_s = EXCLUDED.heartbeat_interval_s,
        last_heartbeat_at = now()
    RETURNING n.last_heartbeat_at INTO stamped;
    RETURN stamped;
END
$$;
REVOKE ALL ON FUNCTION node_heartbeat(text, text, text, text, jsonb, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION node_heartbeat(text, text, text, text, jsonb, double precision)
    TO {NODE_GROUP_ROLE};
"""

HEARTBEAT_SQL = "SELECT node_heartbeat($1, $2, $3, $4, $5::jsonb, $6)"

# Ages come from the central server's clock too: a reader's clock is not trusted either.
READ_SQL = """
SELECT id, name, base_url, version, capacity, heartbeat_interval_s, assigned_companies,
       registered_at, last_heartbeat_at,
       extract(epoch FROM now() - last_heartbeat_at)::double precision AS heartbeat_age_s
FROM nodes ORDER BY id
"""


def role_of(node_id: str) -> str:
    return NODE_ROLE_PREFIX + node_id


# The query keys of a libpq URL that are the caller's credentials: never shown, and never
# handed to a node (its DSN carries its own role and password).
CREDENTIAL_KEYS = frozenset({"password", "sslpassword", "user", "passfile"})
# Nor the control plane's client certificate: a node logs in with its password.
NOT_FOR_NODES = CREDENTIAL_KEYS | {"sslcert", "sslkey"}
_SECRET_QUERY = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")
_URL_USERINFO = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)([^/?#]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs (a URL, or libpq's
    ``key=value`` form). Text only, never a parse: it does not raise on a DSN libpq would
    refuse or that urllib cannot read (several hosts, a port that is no number)."""
    if "://" not in dsn:
        return _KEYWORD_PASSWORD.sub(r"\1***", dsn)

    def user_only(match: re.Match[str]) -> str:
        return match.group(1) + match.group(2).split(":", 1)[0] + "@"

    return _SECRET_QUERY.sub(r"\1***", _URL_USERINFO.sub(user_only, dsn, count=1))


def node_dsn(fleet_dsn: str, node_id: str, password: str) -> str:
    """The DSN a node logs in with: the registry's server(s), database and connection
    options, the node's role; none of the control plane's own credentials."""
    parts = urlsplit(fleet_dsn)
    hosts = parts.netloc.rpartition("@")[2] or "127.0.0.1"
    query = urlencode(
        [
            (key, value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
            if key.lower() not in NOT_FOR_NODES
        ]
    )
    netloc = f"{quote(role_of(node_id), safe='')}:{quote(password, safe='')}@{hosts}"
    return urlunsplit((parts.scheme or "postgresql", netloc, parts.path, query, ""))


async def init_registry(conn: asyncpg.Connection) -> None:
    """Create or bring up to date the table, the node group role and the heartbeat
    function; running it again changes nothing."""
    async with conn.transaction():
        # Two `fleet init` at once would race on CREATE ROLE; one waits for the other.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('hanjullo fleet init'))")
        await conn.execute(INIT_SQL)


async def add_node(conn: asyncpg.Connection, node_id: str) -> str:
    """Create the node's login role (or give it a new password); return the password."""
    password = secrets.token_urlsafe(24)
    role = role_of(node_id)
    async with conn.transaction():
        exists = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER ROLE %I LOGIN PASSWORD %L" if exists else "CREATE ROLE %I LOGIN PASSWORD %L"
        statement = await conn.fetchval(
            "SELECT format($1::text, $2::text, $3::text)", verb, role, password
        )
        await conn.execute(statement)
        grant = await conn.fetchval(
            "SELECT format('GRANT %I TO %I', $1::text, $2::text)", NODE_GROUP_ROLE, role
        )
        await conn.execute(grant)
    return password


async def remove_node(conn: asyncpg.Connection, node_id: str) -> bool:
    """Drop the node's row and its role; whether there was a role."""
    role = role_of(node_id)
    async with conn.transaction():
        await conn.execute("DELETE FROM nodes WHERE id = $1", node_id)
        exists = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role)
        if exists:
            await conn.execute(await conn.fetchval("SELECT format('DROP ROLE %I', $1::text)", role))
    return bool(exists)


@dataclass(frozen=True, slots=True)
class NodeRow:
    id: str
    name: str
    base_url: str
    version: str
    capacity: dict[str, Any]
    heartbeat_interval_s: float
    assigned_companies: int
    registered_at: datetime
    last_heartbeat_at: datetime
    heartbeat_age_s: float

    @property
    def stale(self) -> bool:
        return self.heartbeat_age_s > STALE_AFTER_INTERVALS * self.heartbeat_interval_s

    def stale_reason(self) -> str:
        return (
            f"last heartbeat {self.heartbeat_age_s:.1f} s ago, more than "
            f"{STALE_AFTER_INTERVALS} × its {self.heartbeat_interval_s:g} s interval"
        )


async def read_nodes(conn: asyncpg.Connection) -> list[NodeRow]:
    rows = await conn.fetch(READ_SQL)
    out = []
    for row in rows:
        capacity = row["capacity"]
        out.append(
            NodeRow(
                id=row["id"],
                name=row["name"],
                base_url=row["base_url"],
                version=row["version"],
                capacity=json.loads(capacity) if isinstance(capacity, str) else dict(capacity),
                heartbeat_interval_s=row["heartbeat_interval_s"],
                assigned_companies=row["assigned_companies"],
                registered_at=row["registered_at"],
                last_heartbeat_at=row["last_heartbeat_at"],
                heartbeat_age_s=max(0.0, row["heartbeat_age_s"]),
            )
        )
    return out


def headroom_of(row: NodeRow) -> tuple[float, str, list[str]]:
    """(score 0-1, verdict, reasons) as the node measured them; a node that sent no
    verdict has none (score 0)."""
    headroom = row.capacity.get("headroom")
    if not isinstance(headroom, dict) or not isinstance(headroom.get("score"), int | float):
        return 0.0, "unknown", ["the node sent no measured headroom"]
    reasons = [str(r) for r in headroom.get("reasons", [])]
    return float(headroom["score"]), str(headroom.get("verdict", "unknown")), reasons


def placement(rows: list[NodeRow]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(candidates best first, excluded): the fresh nodes ranked by measured headroom, and
    the stale ones, which are never proposed."""
    candidates: list[dict[str, Any]] = []
    excluded = []
    for row in rows:
        if row.stale:
            excluded.append({"id": row.id, "name": row.name, "reason": row.stale_reason()})
            continue
        score, verdict, reasons = headroom_of(row)
        candidates.append(
            {
                "id": row.id,
                "name": row.name,
                "score": round(score, 4),
                "verdict": verdict,
                "assigned_companies": row.assigned_companies,
                "companies_30d": row.capacity.get("companies_30d"),
                "reasons": reasons,
            }
        )
    # The most headroom first; on a tie, the node the control plane gave fewer companies.
    candidates.sort(key=lambda c: (-float(c["score"]), int(c["assigned_companies"]), str(c["id"])))
    return candidates, excluded
