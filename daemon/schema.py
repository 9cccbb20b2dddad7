"""Storage bootstrap: the node's PostgreSQL schema and the MySQL agent tables.

The node shares PostgreSQL with the Hanjullo web service, and the two own different
tables. The node's own bookkeeping (runs, their recipients, receipts, exact verdicts)
lives in the schema ``hanjullo``, created by numbered migrations recorded in
``hanjullo.schema_versions``; each runs once, in its own transaction, under an advisory
lock so two `db init` calls never race. The web's tables (public) are never altered:
on a database without them, `db init` creates the missing ones from ``web_schema.sql``
(`daemon.webschema`) so the node runs alone (docs/webservice-contract.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

import asyncpg

from config.model import NodeConfig
from daemon import webschema
from dispatch import agent_tables, ledger
from dispatch.spamtests import devices
from dispatch.store import web

T = TypeVar("T")

# Any fixed 64-bit number; it only has to be the same for every `db init`.
_MIGRATION_LOCK = 0x48414E4A554C4C4F  # "HANJULLO"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# The node's own tables live in this schema; the web service's stay where the web keeps
# them (public) and are never altered (`daemon.webschema`).
SCHEMA = "hanjullo"
# Before the node had a schema of its own, `db init` put its tables into public under the
# web's names (a database where that ran could never hold the web's own tables: that
# init failed on them and rolled back). The first migration moves such tables aside.
LEGACY_SCHEMA = "hanjullo_legacy"
_LEGACY_TABLES = (
    "hanjullo_schema_versions",
    "hanjullo_nodes",
    "modem_receipts",
    "campaign_run_recipients",
    "campaign_runs",
    "line_group_assignments",
    "spam_filter_test_results",
    "spam_filter_tests",
    "unsubscribes",
    "ai_training_logs",
    "spam_filter_devices",
    "sms_line_groups",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "the node's own schema; tables of the layout before it moved aside",
        f"""
        CREATE SCHEMA IF NOT EXISTS hanjullo;
        DO $$
        DECLARE t text;
        BEGIN
            IF to_regclass('public.hanjullo_schema_versions') IS NULL THEN
                RETURN;
            END IF;
            CREATE SCHEMA IF NOT EXISTS {LEGACY_SCHEMA};
            FOREACH t IN ARRAY ARRAY{list(_LEGACY_TABLES)!r}::text[] LOOP
                IF to_regclass('public.' || t) IS NOT NULL THEN
                    EXECUTE format('ALTER TABLE public.%I SET SCHEMA {LEGACY_SCHEMA}', t);
                END IF;
            END LOOP;
        END $$;
        """,
    ),
    Migration(
        2,
        "node registry and test-phone receipts",
        """
        CREATE TABLE IF NOT EXISTS hanjullo.nodes (
            node_id text PRIMARY KEY,
            name text NOT NULL DEFAULT '',
            version text NOT NULL DEFAULT '',
            started_at timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS hanjullo.modem_receipts (
            id bigserial PRIMARY KEY,
            node_id text NOT NULL,
            modem text NOT NULL,
            carrier text NOT NULL,
            phone text NOT NULL,
            -- undecodable: recorded (raw PDUs kept) and deleted from the modem like any
            -- other, matching no test; wap-push: a push that is not an MMS notification.
            kind text NOT NULL
                CHECK (kind IN ('sms', 'mms-notification', 'wap-push', 'undecodable')),
            sender text NOT NULL,
            sender_raw text NOT NULL,
            text text NOT NULL,
            text_hash text NOT NULL,
            subject text,
            mms_size integer,
            mms_location text,
            complete boolean NOT NULL,
            sent_at timestamptz,
            received_at timestamptz NOT NULL DEFAULT now(),
            storage_indices integer[] NOT NULL,
            raw_pdus text[] NOT NULL,
            pdu_digest text NOT NULL,
            via text NOT NULL,
            deleted_from_modem boolean NOT NULL DEFAULT false,
            test_id uuid,
            -- How the receipt was attributed: test, late, unmatched (NULL: not looked at yet).
            match text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        -- One row per message while it sits on the modem: a restart that finds it again
        -- (recorded, not yet deleted) does not record it twice.
        CREATE UNIQUE INDEX IF NOT EXISTS modem_receipts_on_modem
            ON hanjullo.modem_receipts (node_id, modem, pdu_digest, storage_indices)
            WHERE NOT deleted_from_modem;
        CREATE INDEX IF NOT EXISTS modem_receipts_received
            ON hanjullo.modem_receipts (received_at);
        CREATE INDEX IF NOT EXISTS modem_receipts_match
            ON hanjullo.modem_receipts (carrier, sender, text_hash, received_at);
        CREATE INDEX IF NOT EXISTS modem_receipts_unmatched
            ON hanjullo.modem_receipts (node_id, id) WHERE match IS NULL;
        """,
    ),
    Migration(
        3,
        "runs and their recipients",
        """
        CREATE TABLE IF NOT EXISTS hanjullo.runs (
            id uuid PRIMARY KEY,
            campaign_id uuid,
            run_number integer NOT NULL DEFAULT 1,
            status text NOT NULL DEFAULT 'queued',
            scheduled_at timestamptz,
            sent_at timestamptz,
            started_at timestamptz,
            completed_at timestamptz,
            target_count integer NOT NULL DEFAULT 0,
            sent_count integer NOT NULL DEFAULT 0,
            success_count integer NOT NULL DEFAULT 0,
            fail_count integer NOT NULL DEFAULT 0,
            message_type text NOT NULL DEFAULT 'SMS',
            message_content text,
            node_id text,
            company_id text,
            user_id text,
            callback_number text,
            message_subject text,
            is_ad boolean NOT NULL DEFAULT false,
            queued_at timestamptz NOT NULL DEFAULT now(),
            line_group text,
            group_since timestamptz,
            -- When the run left sending/draining (dispatch/store/runs.py set_status): the end
            -- of its hold for the capacity measurement; completed_at can come 48 h later.
            group_released_at timestamptz,
            status_reason text,
            prepared boolean NOT NULL DEFAULT false,
            -- The guard pass streams ahead of the handoff up to here.
            prepared_upto integer NOT NULL DEFAULT 0,
            -- Recipients up to next_seq are in the agent tables (or pulled back / skipped).
            next_seq integer NOT NULL DEFAULT 0,
            -- Recipients up to verify_until are checked against the tables after a pull-back.
            verify_until integer NOT NULL DEFAULT 0,
            inserted_count integer NOT NULL DEFAULT 0,
            skipped jsonb NOT NULL DEFAULT '{}'::jsonb,
            systemic_count integer NOT NULL DEFAULT 0,
            spam_count integer NOT NULL DEFAULT 0,
            breaker_checked boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS runs_node_status ON hanjullo.runs (node_id, status);
        -- Result sync updates every recipient once (pending -> final). With room left on
        -- each page and no index on the columns it changes, PostgreSQL writes the new
        -- version next to the old one without touching any index (a HOT update). The
        -- table ends no larger than with full pages, where each update moved its row.
        CREATE TABLE IF NOT EXISTS hanjullo.run_recipients (
            run_id uuid NOT NULL REFERENCES hanjullo.runs (id) ON DELETE CASCADE,
            seq integer NOT NULL,
            phone text NOT NULL,
            message_text text NOT NULL,
            subject text,
            attachments text[],
            phone_norm text,
            state text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'skipped', 'pulled', 'final')),
            -- Pulled-back rows are found by a flag of their own, so that no index mentions
            -- the state column the result sync changes.
            is_pulled boolean NOT NULL DEFAULT false,
            skip_reason text,
            agent integer,
            status_code integer,
            mob_company text,
            delivered_at timestamptz,
            PRIMARY KEY (run_id, seq)
        ) WITH (fillfactor = 50);
        -- A recipient's number as the agent tables know it: normalised only when it differs.
        CREATE INDEX IF NOT EXISTS run_recipients_number
            ON hanjullo.run_recipients (run_id, (coalesce(phone_norm, phone)));
        CREATE INDEX IF NOT EXISTS run_recipients_pulled
            ON hanjullo.run_recipients (run_id, seq) WHERE is_pulled;
        """,
    ),
    Migration(
        4,
        "spam-filter tests and their per-carrier results",
        """
        CREATE TABLE IF NOT EXISTS hanjullo.spam_tests (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            node_id text NOT NULL,
            company_id text,
            user_id text,
            callback_number text NOT NULL,
            message_content_sms text,
            message_content_lms text,
            message_subject text,
            message_hash text,
            spam_check_number text,
            source text NOT NULL DEFAULT 'manual'
                CHECK (source IN ('manual', 'auto_ai', 'canary')),
            variant_id text,
            batch_id uuid,
            run_id uuid,
            target_modem text,
            status text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'active', 'completed', 'cancelled')),
            overall text
                CHECK (overall IN ('pass', 'blocked', 'failed', 'device_error', 'timeout')),
            status_reason text,
            started_at timestamptz,
            completed_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            CHECK (message_content_sms IS NOT NULL OR message_content_lms IS NOT NULL),
            CHECK (message_content_lms IS NULL OR message_subject IS NOT NULL)
        );
        CREATE INDEX IF NOT EXISTS spam_tests_node_status
            ON hanjullo.spam_tests (node_id, status, created_at);
        CREATE INDEX IF NOT EXISTS spam_tests_batch ON hanjullo.spam_tests (batch_id);
        CREATE TABLE IF NOT EXISTS hanjullo.spam_test_results (
            id bigserial PRIMARY KEY,
            test_id uuid NOT NULL REFERENCES hanjullo.spam_tests (id) ON DELETE CASCADE,
            carrier text NOT NULL CHECK (carrier IN ('SKT', 'KT', 'LGU')),
            message_type text NOT NULL CHECK (message_type IN ('SMS', 'LMS')),
            phone text,
            modem text,
            sms_table text,
            sms_msgkey bigint,
            message_hash text,
            received boolean NOT NULL DEFAULT false,
            received_at timestamptz,
            receipt_id bigint,
            result text
                CHECK (result IN ('pass', 'blocked', 'failed', 'timeout', 'device_error')),
            status_code integer,
            inserted_at timestamptz,
            success_seen_at timestamptz,
            receipt_delay_s double precision,
            late boolean NOT NULL DEFAULT false,
            late_receipt_id bigint,
            late_delay_s double precision,
            detail text,
            decided_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (test_id, carrier, message_type)
        );
        CREATE INDEX IF NOT EXISTS spam_test_results_late
            ON hanjullo.spam_test_results (modem, decided_at) WHERE NOT received;
        """,
    ),
    Migration(
        5,
        "spam tests taken from the web service's tables; late receipts pass",
        """
        -- The test is the web's spam_filter_tests row of the same id: its result rows are
        -- written there too (dispatch/spamtests/web.py).
        ALTER TABLE hanjullo.spam_tests ADD COLUMN IF NOT EXISTS web boolean NOT NULL
            DEFAULT false;
        -- The verdict a late receipt turned into pass (late = true).
        ALTER TABLE hanjullo.spam_test_results ADD COLUMN IF NOT EXISTS late_from text;
        """,
    ),
)


async def connect_pg(config: NodeConfig) -> asyncpg.Connection:
    section = config.postgres
    return await asyncpg.connect(
        host=section.host,
        port=section.port,
        user=section.user,
        password=section.password.get_secret_value() or None,
        database=section.database,
        timeout=section.connect_timeout_s,
    )


def run_with_pg(config: NodeConfig, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """For the command-line tools: `work` on one fresh connection, closed afterwards."""

    async def main() -> T:
        conn = await connect_pg(config)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


async def create_pg_pool(config: NodeConfig, max_size: int = 5) -> asyncpg.Pool:
    section = config.postgres
    pool = await asyncpg.create_pool(
        host=section.host,
        port=section.port,
        user=section.user,
        password=section.password.get_secret_value() or None,
        database=section.database,
        timeout=section.connect_timeout_s,
        min_size=1,
        max_size=max_size,
    )
    assert pool is not None
    return pool


class MigrationFailed(Exception):
    """A migration the database refused: which one, on which object, and the server's
    words. The migrations before it stay applied; this one left nothing behind."""

    def __init__(self, migration: Migration, target: str, error: asyncpg.PostgresError):
        self.migration = migration
        self.target = target
        self.error = error
        super().__init__(
            f"migration {migration.version} ({migration.name}) failed on {target}: "
            f"{type(error).__name__}: {error}"
        )


def statements(sql: str) -> list[str]:
    """`sql` cut into its statements, without their comments: at each `;` outside a
    dollar-quoted body (the migrations hold no `--` or `;` inside a string literal)."""
    out: list[str] = []
    current: list[str] = []
    for i, part in enumerate(sql.split("$$")):
        if i % 2:  # inside $$ … $$
            current.append("$$" + part + "$$")
            continue
        pieces = _COMMENT_LINES.sub("", part).split(";")  # a comment may hold a `;`
        current.append(pieces[0])
        for piece in pieces[1:]:
            out.append("".join(current))
            current = [piece]
    out.append("".join(current))
    return [text.strip() for text in out if text.strip()]


_COMMENT_LINES = re.compile(r"--[^\n]*")
_OBJECT = re.compile(
    r"^\s*(?:--[^\n]*\n\s*)*(?P<verb>CREATE|ALTER|DROP)\s+(?:UNIQUE\s+)?"
    r"(?P<kind>TABLE|INDEX|SCHEMA)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(?P<name>[\w.]+)"
    r"(?:\s+ON\s+(?P<on>[\w.]+))?",
    re.IGNORECASE,
)


def statement_target(statement: str) -> str:
    """What a statement works on, for an error message: "index x on table y", "table z"."""
    match = _OBJECT.match(statement)
    if match is None:
        first = _COMMENT_LINES.sub("", statement).strip().splitlines()[0]
        return f"the statement {first[:60]!r}"
    kind, name = match["kind"].lower(), match["name"]
    return f"{kind} {name} on table {match['on']}" if match["on"] else f"{kind} {name}"


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    exists = await conn.fetchval(f"SELECT to_regclass('{VERSIONS_TABLE}') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(f"SELECT version FROM {VERSIONS_TABLE} ORDER BY version")
    return [row["version"] for row in rows]


VERSIONS_TABLE = f"{SCHEMA}.schema_versions"


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    """One migration and its record, in one transaction of its own."""
    async with conn.transaction():
        for statement in statements(migration.sql):
            try:
                await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                raise MigrationFailed(migration, statement_target(statement), exc) from exc
        await conn.execute(
            f"INSERT INTO {VERSIONS_TABLE} (version, name) VALUES ($1, $2)",
            migration.version,
            migration.name,
        )


async def migrate_pg(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not yet recorded, each in its own transaction; return the
    ones applied now. A session advisory lock keeps two `db init` calls from racing."""
    applied: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        done = set(await applied_versions(conn))
        for migration in MIGRATIONS:
            if migration.version not in done:
                await _apply(conn, migration)
                applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def create_web_tables(conn: asyncpg.Connection) -> list[str]:
    """The web service's tables this database lacks, created from ``web_schema.sql``, each
    in its own transaction; a table that exists is left exactly as it is. Their names."""
    created: list[str] = []
    for table in webschema.web_tables():
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{table.name}")
        if exists:
            continue
        async with conn.transaction():
            for statement in table.statements:
                try:
                    await conn.execute(statement)
                except asyncpg.PostgresError as exc:
                    raise MigrationFailed(
                        _WEB_TABLES_STEP, statement_target(statement), exc
                    ) from exc
        created.append(table.name)
    return created


# How a failure to create a web table is named (it is no numbered migration: what it does
# depends on the database).
_WEB_TABLES_STEP = Migration(0, "the web service's tables missing here", "")


def latest_version() -> int:
    return MIGRATIONS[-1].version


@dataclass(frozen=True, slots=True)
class InitReport:
    pg_applied: list[str]  # applied now, or (dry run) what would be
    pg_version: int  # the version after this init (dry run: after the real one)
    mysql_created: list[str]
    dry_run: bool = False
    web_created: list[str] = field(default_factory=list)  # the web service's tables made here
    databases_created: list[str] = field(default_factory=list)  # "postgres:NAME", "mysql:NAME"


async def _pg_database_exists(config: NodeConfig) -> bool:
    try:
        conn = await connect_pg(config)
    except asyncpg.InvalidCatalogNameError:
        return False
    await conn.close()
    return True


async def _pg_database_created(config: NodeConfig) -> bool:
    """Create the configured PostgreSQL database when the server lacks it."""
    if await _pg_database_exists(config):
        return False
    section = config.postgres
    admin = await asyncpg.connect(
        host=section.host,
        port=section.port,
        user=section.user,
        password=section.password.get_secret_value() or None,
        database="postgres",
        timeout=section.connect_timeout_s,
    )
    try:
        # An identifier cannot be a parameter; quote_ident does the quoting server-side.
        quoted = await admin.fetchval("SELECT quote_ident($1)", section.database)
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await admin.execute(f"CREATE DATABASE {quoted}")
    finally:
        await admin.close()
    return True


async def _init_pg(
    conn: asyncpg.Connection, config: NodeConfig
) -> tuple[list[Migration], int, list[str]]:
    applied = await migrate_pg(conn)
    web_created = await create_web_tables(conn)
    if "sms_line_groups" in web_created or "simulator" in config.model_fields_set:
        # A standalone node: the web's line groups are its configured ones (an existing
        # group of the same name is left as it is).
        await web.seed_line_groups(
            conn,
            [
                web.WebGroup(g.name, g.type.value, tuple(config.agent(n).table for n in g.agents))
                for g in config.line_groups
            ],
        )
    # As the Android app registers a phone (routes/spam-filter.ts:712-719): the web gives
    # every active device a result row in each new test. The running engine keeps them
    # fresh (daemon/spamtest/web_devices.py); registering here too means the web tests
    # the node's carriers from the moment the tables exist.
    await devices.register(conn, config.node.id, config.modems)
    return applied, max(await applied_versions(conn)), web_created


async def init_storage(config: NodeConfig, today: date, dry_run: bool = False) -> InitReport:
    """`hanjulloctl db init`: create or upgrade everything the node stores (the databases
    themselves too, when the servers lack them).

    A dry run changes nothing and still tries everything it can: PostgreSQL's migrations
    run for real inside one transaction that is then rolled back (DDL is transactional
    there), so a migration that would fail on this database — one the web service already
    uses, say — fails the dry run with the server's own error; on MySQL it lists the
    databases and tables it would create.
    """
    databases: list[str] = []
    if dry_run:
        pg_exists = await _pg_database_exists(config)
    else:
        pg_exists = not await _pg_database_created(config)
    if not pg_exists:
        databases.append(f"postgres:{config.postgres.database}")
    mysql_missing = await agent_tables.create_database(config.mysql, create=not dry_run)
    if mysql_missing:
        databases.append(f"mysql:{config.mysql.database}")
    tables = [a.table for a in config.agents]
    if dry_run and not pg_exists:
        applied, version = list(MIGRATIONS), latest_version()
        web_created = list(webschema.WEB_TABLE_NAMES)
    else:
        conn = await connect_pg(config)
        try:
            if not dry_run:
                applied, version, web_created = await _init_pg(conn, config)
            else:
                trial = conn.transaction()
                await trial.start()
                try:
                    applied, version, web_created = await _init_pg(conn, config)
                finally:
                    await trial.rollback()
        finally:
            await conn.close()
    if dry_run and mysql_missing:
        created = [name for name, _ in agent_tables.wanted_tables(tables, today)]
        created += [name for name, _ in ledger.TABLES]
    else:
        mconn = await agent_tables.connect(config.mysql)
        try:
            created = await agent_tables.ensure_tables(mconn, tables, today, create=not dry_run)
            # The node's own: the writer role's fence and the commit ledger.
            created += await ledger.ensure_tables(mconn, create=not dry_run)
        finally:
            mconn.close()
    return InitReport(
        [f"{m.version}: {m.name}" for m in applied],
        version,
        created,
        dry_run,
        databases_created=databases,
        web_created=web_created,
    )
