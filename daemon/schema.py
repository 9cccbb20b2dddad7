"""Storage bootstrap: the node's PostgreSQL schema and the MySQL agent tables.

PostgreSQL changes are numbered migrations recorded in
``hanjullo_schema_versions``; each runs once, in its own transaction, under an
advisory lock so two `db init` calls never race. Reference tables of the web
service keep its names (``campaign_runs``, ``spam_filter_tests`` …) and are
created only when missing, so the node can share a database with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

import asyncpg

from config.model import NodeConfig
from dispatch import agent_tables, ledger

T = TypeVar("T")

# Any fixed 64-bit number; it only has to be the same for every `db init`.
_MIGRATION_LOCK = 0x48414E4A554C4C4F  # "HANJULLO"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "node registry and reference tables",
        """
        CREATE TABLE IF NOT EXISTS hanjullo_nodes (
            node_id text PRIMARY KEY,
            name text NOT NULL DEFAULT '',
            version text NOT NULL DEFAULT '',
            started_at timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS sms_line_groups (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            group_name text NOT NULL,
            group_type text NOT NULL CHECK (group_type IN ('bulk', 'test', 'auth')),
            sms_tables text[] NOT NULL DEFAULT '{}',
            is_active boolean NOT NULL DEFAULT true,
            sort_order integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS unsubscribes (
            id bigserial PRIMARY KEY,
            company_id text NOT NULL,
            user_id text,
            phone text NOT NULL,
            source text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS unsubscribes_company_phone ON unsubscribes (company_id, phone);
        CREATE TABLE IF NOT EXISTS ai_training_logs (
            id bigserial PRIMARY KEY,
            source_ref text UNIQUE NOT NULL,
            company_id text,
            channel text,
            sent_count integer NOT NULL DEFAULT 0,
            success_count integer NOT NULL DEFAULT 0,
            fail_count integer NOT NULL DEFAULT 0,
            spam_blocked integer NOT NULL DEFAULT 0,
            metrics_updated_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS spam_filter_devices (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            carrier text NOT NULL CHECK (carrier IN ('SKT', 'KT', 'LGU')),
            phone text NOT NULL UNIQUE,
            is_active boolean NOT NULL DEFAULT true
        );
        """,
    ),
    Migration(
        2,
        "test-phone receipts",
        """
        CREATE TABLE IF NOT EXISTS modem_receipts (
            id bigserial PRIMARY KEY,
            node_id text NOT NULL,
            modem text NOT NULL,
            carrier text NOT NULL,
            phone text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('sms', 'mms-notification')),
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
            created_at timestamptz NOT NULL DEFAULT now()
        );
        -- One row per message while it sits on the modem: a restart that finds it again
        -- (recorded, not yet deleted) does not record it twice.
        CREATE UNIQUE INDEX IF NOT EXISTS modem_receipts_on_modem
            ON modem_receipts (node_id, modem, pdu_digest, storage_indices)
            WHERE NOT deleted_from_modem;
        CREATE INDEX IF NOT EXISTS modem_receipts_received ON modem_receipts (received_at);
        CREATE INDEX IF NOT EXISTS modem_receipts_match
            ON modem_receipts (carrier, sender, text_hash, received_at);
        """,
    ),
    Migration(
        3,
        "campaign runs and their recipients",
        """
        CREATE TABLE IF NOT EXISTS campaign_runs (
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
            created_at timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE campaign_runs
            ADD COLUMN IF NOT EXISTS node_id text,
            ADD COLUMN IF NOT EXISTS company_id text,
            ADD COLUMN IF NOT EXISTS user_id text,
            ADD COLUMN IF NOT EXISTS callback_number text,
            ADD COLUMN IF NOT EXISTS message_subject text,
            ADD COLUMN IF NOT EXISTS is_ad boolean NOT NULL DEFAULT false,
            ADD COLUMN IF NOT EXISTS queued_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS line_group text,
            ADD COLUMN IF NOT EXISTS group_since timestamptz,
            ADD COLUMN IF NOT EXISTS status_reason text,
            ADD COLUMN IF NOT EXISTS prepared boolean NOT NULL DEFAULT false,
            ADD COLUMN IF NOT EXISTS next_seq integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS inserted_count integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS skipped jsonb NOT NULL DEFAULT '{}'::jsonb,
            ADD COLUMN IF NOT EXISTS systemic_count integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS spam_count integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS breaker_checked boolean NOT NULL DEFAULT false,
            ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
        CREATE INDEX IF NOT EXISTS campaign_runs_node_status ON campaign_runs (node_id, status);
        CREATE TABLE IF NOT EXISTS campaign_run_recipients (
            run_id uuid NOT NULL REFERENCES campaign_runs (id) ON DELETE CASCADE,
            seq integer NOT NULL,
            phone text NOT NULL,
            message_text text NOT NULL,
            subject text,
            attachments text[],
            phone_norm text,
            state text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'skipped', 'inserted', 'final')),
            skip_reason text,
            agent integer,
            status_code integer,
            mob_company text,
            delivered_at timestamptz,
            PRIMARY KEY (run_id, seq)
        );
        CREATE INDEX IF NOT EXISTS campaign_run_recipients_phone
            ON campaign_run_recipients (run_id, phone_norm);
        CREATE TABLE IF NOT EXISTS line_group_assignments (
            node_id text NOT NULL,
            subject_kind text NOT NULL CHECK (subject_kind IN ('company', 'user')),
            subject_id text NOT NULL,
            line_group text NOT NULL,
            PRIMARY KEY (node_id, subject_kind, subject_id)
        );
        """,
    ),
    Migration(
        4,
        "implicit insert state: checkpoint by sequence, verify windows after pull-backs",
        """
        ALTER TABLE campaign_runs
            ADD COLUMN IF NOT EXISTS verify_until integer NOT NULL DEFAULT 0;
        -- A recipient's number as the agent tables know it: normalised only when it differs.
        CREATE INDEX IF NOT EXISTS campaign_run_recipients_number
            ON campaign_run_recipients (run_id, (coalesce(phone_norm, phone)));
        """,
    ),
    Migration(
        5,
        "guard pass streamed ahead of the handoff",
        """
        ALTER TABLE campaign_runs
            ADD COLUMN IF NOT EXISTS prepared_upto integer NOT NULL DEFAULT 0;
        """,
    ),
    Migration(
        6,
        "recipients pulled back from the agent tables",
        """
        ALTER TABLE campaign_run_recipients
            DROP CONSTRAINT IF EXISTS campaign_run_recipients_state_check;
        -- 'inserted' (schema 3) is what 'pending' at or below the checkpoint means now.
        UPDATE campaign_run_recipients SET state = 'pending' WHERE state = 'inserted';
        ALTER TABLE campaign_run_recipients ADD CONSTRAINT campaign_run_recipients_state_check
            CHECK (state IN ('pending', 'skipped', 'pulled', 'final'));
        CREATE INDEX IF NOT EXISTS campaign_run_recipients_pulled
            ON campaign_run_recipients (run_id, seq) WHERE state = 'pulled';
        """,
    ),
    Migration(
        7,
        "spam-filter tests, their per-carrier results and receipt matching",
        """
        CREATE TABLE IF NOT EXISTS spam_filter_tests (
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
        CREATE INDEX IF NOT EXISTS spam_filter_tests_node_status
            ON spam_filter_tests (node_id, status, created_at);
        CREATE INDEX IF NOT EXISTS spam_filter_tests_batch ON spam_filter_tests (batch_id);
        CREATE TABLE IF NOT EXISTS spam_filter_test_results (
            id bigserial PRIMARY KEY,
            test_id uuid NOT NULL REFERENCES spam_filter_tests (id) ON DELETE CASCADE,
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
        CREATE INDEX IF NOT EXISTS spam_filter_test_results_late
            ON spam_filter_test_results (modem, decided_at) WHERE NOT received;
        -- How each receipt was attributed: test, late, unmatched (NULL: not looked at yet).
        ALTER TABLE modem_receipts ADD COLUMN IF NOT EXISTS match text;
        CREATE INDEX IF NOT EXISTS modem_receipts_unmatched
            ON modem_receipts (node_id, id) WHERE match IS NULL;
        ALTER TABLE ai_training_logs
            ADD COLUMN IF NOT EXISTS spam_test_blocked integer NOT NULL DEFAULT 0;
        """,
    ),
    Migration(
        8,
        "recipients take their one result update in place (HOT)",
        """
        -- Result sync updates every recipient once (pending -> final). With room left on
        -- each page and no index on the columns it changes, PostgreSQL writes the new
        -- version next to the old one without touching any index (a HOT update). The
        -- table ends no larger than with full pages, where each update moved its row.
        ALTER TABLE campaign_run_recipients SET (fillfactor = 50);
        -- Superseded by the (run_id, coalesce(phone_norm, phone)) index of schema 4.
        DROP INDEX IF EXISTS campaign_run_recipients_phone;
        -- Pulled-back rows are found by a flag of their own, so that no index mentions
        -- the state column the result sync changes.
        ALTER TABLE campaign_run_recipients
            ADD COLUMN IF NOT EXISTS is_pulled boolean NOT NULL DEFAULT false;
        UPDATE campaign_run_recipients SET is_pulled = true WHERE state = 'pulled';
        DROP INDEX IF EXISTS campaign_run_recipients_pulled;
        CREATE INDEX IF NOT EXISTS campaign_run_recipients_pulled_rows
            ON campaign_run_recipients (run_id, seq) WHERE is_pulled;
        """,
    ),
    Migration(
        9,
        "a receipt whose PDU cannot be decoded is recorded as such",
        """
        -- Recorded (raw PDUs kept) and deleted from the modem like any other, instead of
        -- taking a storage slot for good; it matches no test.
        ALTER TABLE modem_receipts DROP CONSTRAINT IF EXISTS modem_receipts_kind_check;
        ALTER TABLE modem_receipts ADD CONSTRAINT modem_receipts_kind_check
            CHECK (kind IN ('sms', 'mms-notification', 'undecodable'));
        """,
    ),
    Migration(
        10,
        "a WAP push that is not an MMS notification is recorded as a wap-push",
        """
        -- A Service Indication/Loading or other push was recorded as 'sms' with an empty
        -- text; it is kept under its own kind and matches no test.
        ALTER TABLE modem_receipts DROP CONSTRAINT IF EXISTS modem_receipts_kind_check;
        ALTER TABLE modem_receipts ADD CONSTRAINT modem_receipts_kind_check
            CHECK (kind IN ('sms', 'mms-notification', 'wap-push', 'undecodable'));
        """,
    ),
    Migration(
        11,
        "a run records when it released its line group",
        """
        -- Set when a run leaves sending/draining (dispatch/store/runs.py set_status): the
        -- end of its hold for the capacity measurement. completed_at can come 48 h later,
        -- after the results, and updated_at moves with every result sync.
        ALTER TABLE campaign_runs ADD COLUMN IF NOT EXISTS group_released_at timestamptz;
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


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    exists = await conn.fetchval("SELECT to_regclass('hanjullo_schema_versions') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT version FROM hanjullo_schema_versions ORDER BY version")
    return [row["version"] for row in rows]


async def migrate_pg(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not yet recorded; return the ones applied now."""
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS hanjullo_schema_versions (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = set(await applied_versions(conn))
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO hanjullo_schema_versions (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration)
    return applied


def latest_version() -> int:
    return MIGRATIONS[-1].version


@dataclass(frozen=True, slots=True)
class InitReport:
    pg_applied: list[str]  # applied now, or (dry run) what would be
    pg_version: int  # the version after this init (dry run: after the real one)
    mysql_created: list[str]
    dry_run: bool = False
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


async def _init_pg(conn: asyncpg.Connection, config: NodeConfig) -> tuple[list[Migration], int]:
    applied = await migrate_pg(conn)
    await conn.execute(
        """INSERT INTO spam_filter_devices (carrier, phone)
           SELECT * FROM unnest($1::text[], $2::text[])
           ON CONFLICT (phone) DO UPDATE SET carrier = EXCLUDED.carrier""",
        [m.carrier.value for m in config.modems],
        [m.phone for m in config.modems],
    )
    return applied, max(await applied_versions(conn))


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
    else:
        conn = await connect_pg(config)
        try:
            if not dry_run:
                applied, version = await _init_pg(conn, config)
            else:
                trial = conn.transaction()
                await trial.start()
                try:
                    applied, version = await _init_pg(conn, config)
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
        [f"{m.version}: {m.name}" for m in applied], version, created, dry_run, databases
    )
