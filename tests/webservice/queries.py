"""The Hanjullo web service's own queries, re-expressed in Python so a test can do what the web
does to the shared databases and see what the web would show.

Our code, written from hoyun5295-ctrl/TargetupAI at e7c1db7ae92076f26b5ee008aa1a1f2890411f5d;
each function names the lines it follows, with the short names of /work/shared/WEBSERVICE.md
(``sq`` = packages/backend/src/utils/sms-queue.ts, ``cl`` = utils/campaign-lifecycle.ts,
``cp`` = routes/campaigns.ts, ``stq`` = utils/spam-test-queue.ts, ``sf`` = routes/spam-filter.ts,
``SFM`` = packages/frontend/src/components/SpamFilterTestModal.tsx). Nothing is copied.

Conventions:
- ``pg`` is an asyncpg connection to a database holding the web's tables (``schema.sql``);
  ``my`` an aiomysql connection in autocommit, its session in KST, as the web's pool is.
- ``now`` is the web's Node process clock (``Date.now()``/``new Date()``): JavaScript-side
  arithmetic (timeouts, the 15-minute rule, log-table months) takes it; SQL ``NOW()`` stays the
  database's clock, as in the web. The Node process runs in KST (status/OPS.md:238), so its
  ``getMonth()`` months are KST months.
- Only the SMS/LMS/MMS channel is re-expressed: the Kakao branches (``kakao*``) add zero for
  campaigns without Kakao rows and are left out. Personalisation and ad wrapping
  (``messageUtils.prepareSendMessage``) are not re-expressed: callers pass final texts.
- Where the web answers an HTTP 4xx, these functions raise :class:`WebRefusal` with the web's
  error code (or a short name of the check when the web gives none).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import aiomysql
import asyncpg
import pymysql.err

from config.clock import KST

# ---- constants of the web service -----------------------------------------------------------
SUCCESS_CODES = (6, 1000, 1800, 7830, 7831)  # utils/sms-result-map.ts:137
PENDING_CODES = (100, 104)  # utils/sms-result-map.ts:140 (7305 is NOT pending here)
_SUCCESS_SQL = ",".join(map(str, SUCCESS_CODES))
_PENDING_SQL = ",".join(map(str, PENDING_CODES))
_FINAL_SQL = ",".join(map(str, SUCCESS_CODES + PENDING_CODES))

BATCH_ROWS = 5000  # config/defaults.ts:78 (BATCH_SIZES.smsSend)
TIMEOUT_MINUTES = 30  # cl:218-222, 339-343: pending only, 30 min after the send → failed
SYNC_WINDOW = "7 days"  # cl:177, 302
CANCEL_LOCK_MINUTES = 15  # cl:67-76
SPAM_TEST_TIMEOUT_S = 60  # config/defaults.ts:58 (TIMEOUTS.spamFilterTest)
ZERO_UUID = uuid.UUID(int=0)  # cp:339, the reference of manager test sends
SPLIT_START_HOUR, SPLIT_END_HOUR = 8, 21  # config/defaults.ts:141-146 (SEND_HOURS)

# utils/sms-table-validator.ts:6. JavaScript's \d is ASCII and its $ (no m flag) ends the
# string, hence [0-9] and fullmatch.
_SMS_TABLE = re.compile(r"SMSQ_SEND(_[0-9]{1,3})?(_[0-9]{4,8})?")
_LOG_TABLE = re.compile(r"SMSQ_SEND_[0-9]+_[0-9]{6}")  # sq:440
# JavaScript's \s (ECMAScript WhiteSpace + LineTerminator), for regexes written with \s.
_JS_SPACE_CHARS = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_SPACE = re.escape(_JS_SPACE_CHARS)  # for use inside a character class
_JS_SPACE_RUN = re.compile(f"[{_JS_SPACE}]+")


class WebRefusal(Exception):
    """The web service refuses the request (an HTTP 4xx); `code` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class WebEnv:
    """The web's process environment that decides table choice."""

    # SMS_TABLES (sq:12): every agent table. The code's default is 'SMSQ_SEND'; production
    # lists SMSQ_SEND_1..11 (SCHEMA.md:1023).
    sms_tables: tuple[str, ...] = tuple(f"SMSQ_SEND_{n}" for n in range(1, 12))

    @property
    def bulk_only_tables(self) -> list[str]:
        """The fallback for a company without a line group: all tables minus the literal
        test and auth names (sq:18), whatever the test/auth groups hold."""
        return [t for t in self.sms_tables if t not in ("SMSQ_SEND_10", "SMSQ_SEND_11")]


class RoundRobin:
    """The web's one process-wide table counter (sq:19, 206-210): never reset, advanced per
    row, shared by every send of the process."""

    def __init__(self) -> None:
        self.index = 0

    def next(self, tables: Sequence[str]) -> str:
        table = tables[self.index % len(tables)]
        self.index += 1
        return table


def is_valid_sms_table(name: str) -> bool:
    """utils/sms-table-validator.ts:6, as `isValidSmsTable` applies it."""
    return _SMS_TABLE.fullmatch(name.strip()) is not None


def normalize_phone(phone: str | None) -> str:
    """utils/normalize-phone.ts:16-19: every non-digit removed."""
    return re.sub(r"[^0-9]", "", phone or "")


def kst_wall(moment: datetime) -> str:
    """`toKoreaTimeStr` (sq:28-30): the KST wall clock as 'YYYY-MM-DD HH:MM:SS'."""
    return moment.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S")


def to_qtmsg_type(message_type: str) -> str:
    """`toQtmsgType` (sq:38-42): SMS → S, LMS → L, anything else → M."""
    return {"SMS": "S", "LMS": "L"}.get(message_type, "M")


def _month(moment: datetime, offset: int) -> str:
    """The Node process's `new Date(y, m + offset, 1)` as YYYYMM (KST, see module doc)."""
    local = moment.astimezone(KST)
    index = local.year * 12 + local.month - 1 + offset
    return f"{index // 12:04d}{index % 12 + 1:02d}"


def _require_autocommit(my: aiomysql.Connection) -> None:
    if not my.get_autocommit():
        raise ValueError("the web's MySQL sessions autocommit; pass an autocommit connection")


# ---- line groups (sq:47-133) ----------------------------------------------------------------
async def company_sms_tables(
    pg: asyncpg.Connection, company_id: uuid.UUID, user_id: uuid.UUID | None, env: WebEnv
) -> list[str]:
    """`getCompanySmsTables` (sq:47-108): the user's active bulk group, else the company's,
    else the fallback (:attr:`WebEnv.bulk_only_tables`). Invalid names are dropped; a group
    left with none falls through (user) or falls back (company). The web caches the answer
    for 60 s (config/defaults.ts:94); this reads fresh."""
    if user_id is not None:
        tables = await pg.fetchval(
            """SELECT lg.sms_tables FROM sms_line_groups lg JOIN users u ON u.line_group_id = lg.id
               WHERE u.id = $1 AND lg.is_active = true AND lg.group_type = 'bulk'""",
            user_id,
        )
        valid = [t for t in tables or [] if is_valid_sms_table(t)]
        if valid:
            return valid
    tables = await pg.fetchval(
        """SELECT lg.sms_tables FROM sms_line_groups lg JOIN companies c ON c.line_group_id = lg.id
           WHERE c.id = $1 AND lg.is_active = true AND lg.group_type = 'bulk'""",
        company_id,
    )
    if not tables:
        return env.bulk_only_tables
    return [t for t in tables if is_valid_sms_table(t)] or env.bulk_only_tables


async def has_company_line_group(pg: asyncpg.Connection, company_id: uuid.UUID) -> bool:
    """`hasCompanyLineGroup` (sq:111-119): the company (not the user) has an active bulk
    group with a non-empty table list — checked before the names are validated, so a group of
    invalid names still counts. Sends without it are refused LINE_GROUP_NOT_SET
    (cp:558-563, 1251-1257)."""
    tables = await pg.fetchval(
        """SELECT lg.sms_tables FROM sms_line_groups lg JOIN companies c ON c.line_group_id = lg.id
           WHERE c.id = $1 AND lg.is_active = true AND lg.group_type = 'bulk'""",
        company_id,
    )
    return bool(tables)


async def sms_tables_for_tests(pg: asyncpg.Connection) -> list[str]:
    """`getTestSmsTables` (sq:122-133): the first active test group (no ORDER BY, names not
    validated), else SMSQ_SEND_10. Test and spam-test sends use its first table only."""
    tables = await pg.fetchval(
        "SELECT sms_tables FROM sms_line_groups WHERE group_type = 'test' AND is_active = true"
        " LIMIT 1"
    )
    return list(tables) if tables else ["SMSQ_SEND_10"]


async def existing_log_tables(my: aiomysql.Connection) -> set[str]:
    """`getExistingLogTables` (sq:432-445, cached 5 min there): SMSQ_SEND_<n>_<YYYYMM>."""
    async with my.cursor() as cur:
        await cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'SMSQ_SEND_%'"
        )
        return {r[0] for r in await cur.fetchall() if _LOG_TABLE.fullmatch(r[0])}


async def tables_with_logs(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    company_id: uuid.UUID,
    user_id: uuid.UUID | None,
    now: datetime,
    env: WebEnv,
) -> list[str]:
    """`getCompanySmsTablesWithLogs` (sq:491-510): the group's live tables, then for each
    its log tables of this and last month by the Node clock — only those that exist."""
    live = await company_sms_tables(pg, company_id, user_id, env)
    logs = await existing_log_tables(my)
    months = (_month(now, 0), _month(now, -1))
    return live + [f"{t}_{m}" for t in live for m in months if f"{t}_{m}" in logs]


# ---- results --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Counts:
    """One campaign's rows by the web's code sets (NULL status_code counts nowhere)."""

    success: int = 0
    fail: int = 0
    pending: int = 0
    total: int = 0


async def result_counts(
    my: aiomysql.Connection, tables: Sequence[str], campaign_ids: Iterable[str | uuid.UUID]
) -> dict[str, Counts]:
    """The web's result query (`smsBatchAggByGroup`, sq:367-400, with the aggregate of
    cl:313-316): per table `WHERE app_etc1 IN (…) GROUP BY app_etc1`, one UNION ALL, summed."""
    ids = [str(i) for i in campaign_ids]
    if not tables or not ids:
        return {}
    for table in tables:
        if not is_valid_sms_table(table):
            raise ValueError(f"{table!r} is not an agent table name")
    marks = ",".join(["%s"] * len(ids))
    agg = (
        "COUNT(*) AS total_count,"
        f" COUNT(CASE WHEN status_code IN ({_SUCCESS_SQL}) THEN 1 END) AS success_count,"
        f" COUNT(CASE WHEN status_code NOT IN ({_FINAL_SQL}) THEN 1 END) AS fail_count,"
        f" COUNT(CASE WHEN status_code IN ({_PENDING_SQL}) THEN 1 END) AS pending_count"
    )
    sql = " UNION ALL ".join(
        f"SELECT app_etc1 AS _grp, {agg} FROM {t} WHERE app_etc1 IN ({marks}) GROUP BY app_etc1"
        for t in tables
    )
    sums: dict[str, list[int]] = {}
    async with my.cursor() as cur:
        await cur.execute(sql, ids * len(tables))
        for grp, total, success, fail, pending in await cur.fetchall():
            acc = sums.setdefault(str(grp), [0, 0, 0, 0])
            for i, value in enumerate((success, fail, pending, total)):
                acc[i] += int(value or 0)
    return {k: Counts(*v) for k, v in sums.items()}


async def campaign_result(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    campaign_id: uuid.UUID,
    now: datetime,
    env: WebEnv,
) -> Counts:
    """What the web's sync counts for one campaign: its company's tables resolved with the
    campaign's `created_by` (cl:184-202), live and this/last month's logs."""
    row = await pg.fetchrow(
        "SELECT company_id, created_by FROM campaigns WHERE id = $1", campaign_id
    )
    if row is None:
        raise LookupError(f"no campaign {campaign_id}")
    tables = await tables_with_logs(pg, my, row["company_id"], row["created_by"], now, env)
    return (await result_counts(my, tables, [campaign_id])).get(str(campaign_id), Counts())


@dataclass(frozen=True, slots=True)
class Charts:
    """The results detail page's chart data (routes/results.ts:309-391)."""

    success: int  # campaigns.success_count
    fail: int  # campaigns.fail_count
    # GROUP BY status_code, fail codes only; None is a NULL code, "코드 NaN" on the page
    failures_by_code: dict[int | None, int]
    successes_by_carrier: dict[str, int]  # GROUP BY mob_company, success codes only


async def result_charts(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    campaign_id: uuid.UUID,
    company_id: uuid.UUID,
    viewer_id: uuid.UUID | None,
    now: datetime,
    env: WebEnv,
) -> Charts:
    """GET /api/v1/results/campaigns/:id (routes/results.ts:266-406, SMS channel): the
    success/fail chart is the campaigns row's counters; the two breakdowns read the viewer's
    tables (:281). The web caches the breakdowns in Redis (5 min; 24 h once completed)."""
    camp = await pg.fetchrow(
        "SELECT success_count, fail_count FROM campaigns WHERE id = $1 AND company_id = $2",
        campaign_id,
        company_id,
    )
    if camp is None:
        raise WebRefusal("NOT_FOUND", "캠페인을 찾을 수 없습니다.")
    tables = await tables_with_logs(pg, my, company_id, viewer_id, now, env)
    codes = await _group_by(my, tables, "status_code", "app_etc1 = %s", [str(campaign_id)])
    carriers = await _group_by(
        my,
        tables,
        "mob_company",
        f"app_etc1 = %s AND status_code IN ({_SUCCESS_SQL})",
        [str(campaign_id)],
    )
    fails = {
        (None if code is None else int(code)): n
        for code, n in codes.items()
        if code is None or int(code) not in SUCCESS_CODES + PENDING_CODES
    }
    return Charts(
        camp["success_count"] or 0,
        camp["fail_count"] or 0,
        fails,
        {str(k or ""): v for k, v in carriers.items()},
    )


async def _group_by(
    my: aiomysql.Connection, tables: Sequence[str], column: str, where: str, params: list[Any]
) -> dict[Any, int]:
    """`smsGroupByAll` (sq:402-418): one UNION ALL, one outer GROUP BY."""
    if not tables:
        return {}
    inner = " UNION ALL ".join(f"SELECT {column} AS _grp FROM {t} WHERE {where}" for t in tables)
    async with my.cursor() as cur:
        await cur.execute(
            f"SELECT _grp, COUNT(*) FROM ({inner}) AS _u GROUP BY _grp", params * len(tables)
        )
        return {grp: int(n) for grp, n in await cur.fetchall()}


@dataclass(frozen=True, slots=True)
class Summary:
    campaigns: int
    target: int
    sent: int
    success: int
    fail: int


async def results_summary(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    from_date: date,
    to_date: date,
    created_by: uuid.UUID | None = None,
) -> Summary:
    """GET /api/v1/results/summary (routes/results.ts:83-128): sums of the campaigns rows,
    not cancelled, whose COALESCE(sent_at, created_at) falls in the KST days given
    (`buildPeriodFilter`, utils/stats-aggregation.ts:108-130)."""
    row = await pg.fetchrow(
        """SELECT COUNT(*), COALESCE(SUM(target_count), 0), COALESCE(SUM(sent_count), 0),
                  COALESCE(SUM(success_count), 0), COALESCE(SUM(fail_count), 0)
           FROM campaigns WHERE company_id = $1 AND status NOT IN ('cancelled')
             AND COALESCE(sent_at, created_at) >= ($2::date::text || ' 00:00:00+09')::timestamptz
             AND COALESCE(sent_at, created_at)
                 < (($3::date + interval '1 day')::date::text || ' 00:00:00+09')::timestamptz
             AND ($4::uuid IS NULL OR created_by = $4)""",
        company_id,
        from_date,
        to_date,
        created_by,
    )
    assert row is not None
    return Summary(*(int(v) for v in row))


# ---- prepaid (utils/prepaid.ts) -------------------------------------------------------------
_PRICE_COLUMN = {"SMS": "cost_per_sms", "LMS": "cost_per_lms", "MMS": "cost_per_mms"}
_PRICE_COLUMN["KAKAO"] = "cost_per_kakao"


def _cents(value: Decimal) -> Decimal:
    """Math.round(x * 100) / 100 (prepaid.ts:29, 92): halves round up."""
    return (value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP) / 100


@dataclass(frozen=True, slots=True)
class Deduction:
    ok: bool
    amount: Decimal = Decimal(0)
    balance: Decimal | None = None


async def prepaid_deduct(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    count: int,
    message_type: str,
    reference_id: uuid.UUID,
    created_by: uuid.UUID | None = None,
) -> Deduction:
    """`prepaidDeduct` (prepaid.ts:12-57): only for billing_type 'prepaid'; an atomic
    `balance >= amount` update, then a `deduct` ledger row referencing the campaign/test."""
    co = await pg.fetchrow(
        "SELECT billing_type, balance, cost_per_sms, cost_per_lms, cost_per_mms, cost_per_kakao"
        " FROM companies WHERE id = $1",
        company_id,
    )
    if co is None:
        raise WebRefusal("COMPANY_NOT_FOUND", "회사 정보를 찾을 수 없습니다")
    if co["billing_type"] != "prepaid":
        return Deduction(True)
    column = _PRICE_COLUMN.get(message_type)
    price = Decimal(co[column] or 0) if column else Decimal(0)
    amount = _cents(price * count)
    if amount == 0:
        return Deduction(True)
    balance = await pg.fetchval(
        "UPDATE companies SET balance = balance - $1, updated_at = NOW()"
        " WHERE id = $2 AND balance >= $1 RETURNING balance",
        amount,
        company_id,
    )
    if balance is None:
        return Deduction(False, amount, co["balance"])
    await pg.execute(
        """INSERT INTO balance_transactions (company_id, type, amount, balance_after, description,
               reference_type, reference_id, payment_method, created_by)
           VALUES ($1, 'deduct', $2, $3, $4, 'campaign', $5, 'system', $6)""",
        company_id,
        amount,
        balance,
        f"{message_type} {count}건 발송 차감 (건당 {price}원)",
        reference_id,
        created_by,
    )
    return Deduction(True, amount, balance)


async def prepaid_refund(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    count: int,
    message_type: str,
    reference_id: uuid.UUID,
    reason: str,
) -> Decimal:
    """`prepaidRefund` (prepaid.ts:60-110): price × count, capped at what was deducted minus
    what was already refunded for that reference; a `refund` ledger row."""
    co = await pg.fetchrow(
        "SELECT billing_type, cost_per_sms, cost_per_lms, cost_per_mms, cost_per_kakao"
        " FROM companies WHERE id = $1",
        company_id,
    )
    if co is None or co["billing_type"] != "prepaid" or count <= 0:
        return Decimal(0)
    column = _PRICE_COLUMN.get(message_type)
    price = Decimal(co[column] or 0) if column else Decimal(0)
    ledger = await pg.fetchrow(
        """SELECT COALESCE(SUM(amount) FILTER (WHERE type = 'refund'), 0),
                  COALESCE(SUM(amount) FILTER (WHERE type = 'deduct'), 0)
           FROM balance_transactions
           WHERE company_id = $1 AND reference_type = 'campaign' AND reference_id = $2""",
        company_id,
        reference_id,
    )
    assert ledger is not None
    refunded, deducted = ledger[0], ledger[1]
    amount = _cents(min(price * count, deducted - refunded))
    if amount <= 0:
        return Decimal(0)
    balance = await pg.fetchval(
        "UPDATE companies SET balance = balance + $1, updated_at = NOW() WHERE id = $2"
        " RETURNING balance",
        amount,
        company_id,
    )
    if balance is not None:
        await pg.execute(
            """INSERT INTO balance_transactions (company_id, type, amount, balance_after,
                   description, reference_type, reference_id, payment_method)
               VALUES ($1, 'refund', $2, $3, $4, 'campaign', $5, 'system')""",
            company_id,
            amount,
            balance,
            f"{reason} ({message_type} {count}건 × {price}원)",
            reference_id,
        )
    return amount


# ---- the result sync (cl:166-391) -----------------------------------------------------------
async def sync_campaign_results(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    company_id: uuid.UUID,
    now: datetime,
    env: WebEnv,
    training_secret: str,
) -> int:
    """`POST /api/campaigns/sync-results` → `syncCampaignResults` (cl:166-391), run when a
    browser opens the dashboard or the results modal. Returns how many runs/campaigns it wrote.

    Runs pass (cl:170-294): every run `sending|scheduled` created ≤ 7 days ago, counted by
    its *campaign* id (all runs of a campaign get the campaign's totals). Timed out when more
    than 30 minutes passed since campaigns.sent_at ?? scheduled_at ?? created_at with only
    pending rows: fail += pending. Written only when success > 0, fail > 0 or timed out:
    `sending` while pending, else `completed`; the same counts to the run and the campaign;
    a refund of the (effective) fails; the training metrics keyed by the *run* id.

    Direct pass (cl:296-388): send_type 'direct', `sending|completed` or a due `scheduled`,
    success_count NULL or 0, ≤ 7 days old; the same rule on campaigns only; training metrics
    keyed by the campaign id. Never re-synced once success_count > 0.
    """
    synced = 0
    runs = await pg.fetch(
        """SELECT cr.id, cr.campaign_id, c.company_id, c.created_by
           FROM campaign_runs cr JOIN campaigns c ON c.id = cr.campaign_id
           WHERE c.company_id = $1 AND cr.status IN ('sending', 'scheduled')
             AND cr.created_at >= NOW() - INTERVAL '7 days'""",
        company_id,
    )
    run_counts = await _counts_by_creator(pg, my, runs, "campaign_id", now, env)
    for run in runs:
        counts = run_counts.get(str(run["campaign_id"]), Counts())
        times = await pg.fetchrow(
            "SELECT sent_at, scheduled_at, created_at FROM campaigns WHERE id = $1",
            run["campaign_id"],
        )
        timed_out = _timed_out(times, counts, now)
        if not (counts.success > 0 or counts.fail > 0 or timed_out):
            continue
        fail = counts.fail + counts.pending if timed_out else counts.fail
        pending = 0 if timed_out else counts.pending
        status = "sending" if pending > 0 else ("completed" if counts.success + fail else "failed")
        await pg.execute(
            """UPDATE campaign_runs SET success_count = $1, fail_count = $2, status = $3::text,
                   sent_at = CASE WHEN $3::text = 'completed' AND sent_at IS NULL
                                  THEN COALESCE(scheduled_at, NOW()) ELSE sent_at END
               WHERE id = $4""",
            counts.success,
            fail,
            status,
            run["id"],
        )
        await _write_campaign(pg, run["campaign_id"], counts.success, fail, status)
        if fail > 0:
            await _refund_fails(pg, run["campaign_id"], fail, timed_out)
        await _auto_campaign_runs(pg, run["campaign_id"], counts.success, fail)
        await update_training_metrics(
            pg,
            source_ref(training_secret, run["id"]),
            counts.success + fail,
            counts.success,
            counts.fail,  # cl:286: the fail count before the timeout was added
        )
        synced += 1

    direct = await pg.fetch(
        """SELECT id, company_id, scheduled_at, created_at, sent_at, created_by FROM campaigns
           WHERE company_id = $1 AND send_type = 'direct'
             AND (status IN ('sending', 'completed')
                  OR (status = 'scheduled' AND scheduled_at <= NOW()))
             AND (success_count IS NULL OR success_count = 0)
             AND created_at >= NOW() - INTERVAL '7 days'""",
        company_id,
    )
    direct_counts = await _counts_by_creator(pg, my, direct, "id", now, env)
    for camp in direct:
        counts = direct_counts.get(str(camp["id"]), Counts())
        timed_out = _timed_out(camp, counts, now)
        if not (counts.success > 0 or counts.fail > 0 or timed_out):
            continue
        fail = counts.fail + counts.pending if timed_out else counts.fail
        pending = 0 if timed_out else counts.pending
        if pending == 0:
            status = "completed" if counts.success + fail > 0 else "failed"
        else:
            status = "sending"
        await _write_campaign(pg, camp["id"], counts.success, fail, status)
        if fail > 0:
            await _refund_fails(pg, camp["id"], fail, timed_out)
        await update_training_metrics(
            pg,
            source_ref(training_secret, camp["id"]),
            counts.success + fail,
            counts.success,
            counts.fail,
        )
        synced += 1
    return synced


async def _counts_by_creator(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    rows: Sequence[asyncpg.Record],
    id_column: str,
    now: datetime,
    env: WebEnv,
) -> dict[str, Counts]:
    """cl:184-202, 307-325: tables resolved per (company, campaigns.created_by)."""
    groups: dict[tuple[uuid.UUID, uuid.UUID | None], list[uuid.UUID]] = {}
    for row in rows:
        groups.setdefault((row["company_id"], row["created_by"]), []).append(row[id_column])
    found: dict[str, Counts] = {}
    for (company, creator), ids in groups.items():
        tables = await tables_with_logs(pg, my, company, creator, now, env)
        found.update(await result_counts(my, tables, ids))
    return found


def _timed_out(times: asyncpg.Record | None, counts: Counts, now: datetime) -> bool:
    """cl:219-222, 341-343: campaigns.sent_at ?? scheduled_at ?? created_at."""
    if times is None:
        return False
    since = times["sent_at"] or times["scheduled_at"] or times["created_at"]
    minutes = (now - since).total_seconds() / 60 if since else 0.0
    return minutes > TIMEOUT_MINUTES and counts.pending > 0 and counts.success == counts.fail == 0


async def _write_campaign(
    pg: asyncpg.Connection, campaign_id: uuid.UUID, success: int, fail: int, status: str
) -> None:
    await pg.execute(
        """UPDATE campaigns SET success_count = $1, fail_count = $2, status = $3::text,
               sent_at = CASE WHEN $3::text = 'completed' AND sent_at IS NULL
                              THEN COALESCE(scheduled_at, NOW()) ELSE sent_at END
           WHERE id = $4""",
        success,
        fail,
        status,
        campaign_id,
    )


async def _refund_fails(
    pg: asyncpg.Connection, campaign_id: uuid.UUID, fail: int, timed_out: bool
) -> None:
    info = await pg.fetchrow(
        "SELECT company_id, message_type FROM campaigns WHERE id = $1", campaign_id
    )
    if info is not None:
        reason = "타임아웃 실패 환불" if timed_out else "발송 실패 환불"
        await prepaid_refund(
            pg, info["company_id"], fail, info["message_type"], campaign_id, reason
        )


async def _auto_campaign_runs(
    pg: asyncpg.Connection, campaign_id: uuid.UUID, success: int, fail: int
) -> None:
    """cl:268-278, inside a try/catch there: the fixture has no auto-campaign tables."""
    try:
        async with pg.transaction():
            await pg.execute(
                "UPDATE auto_campaign_runs SET success_count = $1, fail_count = $2"
                " WHERE campaign_id = $3",
                success,
                fail,
                campaign_id,
            )
    except asyncpg.UndefinedTableError:
        pass


# ---- cancel (cl:38-151) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cancelled:
    deleted: int  # waiting rows removed (status_code 100)
    marked: int  # picked-up rows set to 9999 (neither 100 nor a success)
    refunded: Decimal


async def cancel_campaign(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    campaign_id: uuid.UUID,
    company_id: uuid.UUID,
    now: datetime,
    env: WebEnv,
    *,
    reason: str | None = None,
    cancelled_by: uuid.UUID | None = None,
    cancelled_by_type: str | None = None,
    skip_time_check: bool = False,
) -> Cancelled:
    """`cancelCampaign` (cl:38-151), behind POST /api/campaigns/:id/cancel (cp:1841-1862) and
    manage-scheduled: only `scheduled|draft`; refused from 15 minutes before scheduled_at
    until it (a past scheduled_at is allowed) unless a super admin skips the check. In the
    company group's live tables only (no user group, no logs): DELETE the `status_code = 100`
    rows, set 9999 on rows neither 100 nor a success, refund the deleted count; the campaign
    and its `scheduled|sending` runs → cancelled with fail_count = COALESCE(target_count,
    sent_count, 0) and success_count 0."""
    _require_autocommit(my)
    camp = await pg.fetchrow(
        "SELECT * FROM campaigns WHERE id = $1 AND company_id = $2", campaign_id, company_id
    )
    if camp is None:
        raise WebRefusal("NOT_FOUND", "캠페인을 찾을 수 없습니다")
    if camp["status"] not in ("scheduled", "draft"):
        raise WebRefusal("NOT_CANCELLABLE", "취소 가능한 상태가 아닙니다")
    if not skip_time_check and camp["scheduled_at"] is not None:
        minutes = (camp["scheduled_at"] - now).total_seconds() / 60
        if 0 < minutes < CANCEL_LOCK_MINUTES:
            raise WebRefusal("TOO_LATE", "발송 15분 전에는 취소할 수 없습니다")
    tables = await company_sms_tables(pg, company_id, None, env)
    waiting = await _count(my, tables, "app_etc1 = %s AND status_code = 100", [str(campaign_id)])
    picked = await _count(my, tables, "app_etc1 = %s AND status_code != 100", [str(campaign_id)])
    async with my.cursor() as cur:
        for table in tables:
            await cur.execute(
                f"DELETE FROM {table} WHERE app_etc1 = %s AND status_code = 100",
                (str(campaign_id),),
            )
        marked = 0
        if picked > 0:
            for table in tables:
                marked += await cur.execute(
                    f"UPDATE {table} SET status_code = 9999 WHERE app_etc1 = %s"
                    f" AND status_code NOT IN ({_SUCCESS_SQL}) AND status_code != 100",
                    (str(campaign_id),),
                )
    refunded = Decimal(0)
    if waiting > 0:
        refunded = await prepaid_refund(
            pg, company_id, waiting, camp["message_type"], campaign_id, "예약 취소 환불"
        )
    await pg.execute(
        """UPDATE campaigns SET status = 'cancelled',
               fail_count = COALESCE(target_count, sent_count, 0),
               success_count = 0, cancelled_by = $1, cancelled_by_type = $2, cancel_reason = $3,
               cancelled_at = NOW(), updated_at = NOW()
           WHERE id = $4""",
        cancelled_by,
        cancelled_by_type,
        reason,
        campaign_id,
    )
    await pg.execute(
        """UPDATE campaign_runs SET status = 'cancelled',
               fail_count = COALESCE(target_count, sent_count, 0), success_count = 0
           WHERE campaign_id = $1 AND status IN ('scheduled', 'sending')""",
        campaign_id,
    )
    return Cancelled(waiting, marked, refunded)


async def _count(
    my: aiomysql.Connection, tables: Sequence[str], where: str, params: list[Any]
) -> int:
    """`smsCountAll` (sq:297-305)."""
    if not tables:
        return 0
    inner = " UNION ALL ".join(f"SELECT COUNT(*) AS cnt FROM {t} WHERE {where}" for t in tables)
    async with my.cursor() as cur:
        await cur.execute(f"SELECT SUM(cnt) FROM ({inner}) AS _u", params * len(tables))
        row = await cur.fetchone()
    return int(row[0] or 0)


async def list_scheduled(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    company_id: uuid.UUID,
    viewer_id: uuid.UUID | None,
    now: datetime,
    env: WebEnv,
    *,
    viewer_is_company_user: bool = False,
) -> list[uuid.UUID]:
    """GET /api/campaigns?status=scheduled (cp:91-173): before listing, every `scheduled`
    campaign whose scheduled_at has passed and which has no 100/104 row in the viewer's live
    tables is marked `completed` with sent/success/fail counted over the *company's* live and
    log tables, sent_at = COALESCE(sent_at, scheduled_at, NOW()), fails refunded. Returns the
    ids still `scheduled` afterwards."""
    live = await company_sms_tables(pg, company_id, viewer_id, env)
    creator = viewer_id if viewer_is_company_user else None
    scheduled = await pg.fetch(
        """SELECT id, scheduled_at FROM campaigns WHERE company_id = $1 AND status = 'scheduled'
             AND ($2::uuid IS NULL OR created_by = $2)""",
        company_id,
        creator,
    )
    for camp in scheduled:
        pending = await _count(
            my, live, f"app_etc1 = %s AND status_code IN ({_PENDING_SQL})", [str(camp["id"])]
        )
        if camp["scheduled_at"] is not None and camp["scheduled_at"] > now:
            continue
        if pending:
            continue
        tables = await tables_with_logs(pg, my, company_id, None, now, env)
        key = [str(camp["id"])]
        sent = await _count(my, tables, "app_etc1 = %s", key)
        success = await _count(
            my, tables, f"app_etc1 = %s AND status_code IN ({_SUCCESS_SQL})", key
        )
        fail = await _count(my, tables, f"app_etc1 = %s AND status_code NOT IN ({_FINAL_SQL})", key)
        await pg.execute(
            """UPDATE campaigns SET status = 'completed', sent_count = $1, success_count = $2,
                   fail_count = $3, sent_at = COALESCE(sent_at, scheduled_at, NOW()),
                   updated_at = NOW() WHERE id = $4""",
            sent,
            success,
            fail,
            camp["id"],
        )
        if fail > 0:
            await _refund_fails(pg, camp["id"], fail, False)
    rows = await pg.fetch(
        """SELECT id FROM campaigns WHERE company_id = $1 AND status = 'scheduled'
             AND ($2::uuid IS NULL OR created_by = $2) ORDER BY created_at""",
        company_id,
        creator,
    )
    return [r["id"] for r in rows]


# ---- the agent rows (sq:910-963) ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AgentRow:
    """One row of `bulkInsertSmsQueue`'s input, in its order (sq:902-906)."""

    dest_no: str
    call_back: str
    msg_contents: str
    msg_type: str  # S | L | M
    title_str: str  # the subject or ''
    send_time: str  # KST wall clock 'YYYY-MM-DD HH:MM:SS'; ignored when inserted with NOW()
    app_etc1: str  # campaigns.id on every send path
    app_etc2: str  # companies.id
    file_name1: str = ""
    file_name2: str = ""
    file_name3: str = ""


async def bulk_insert_sms_queue(
    my: aiomysql.Connection,
    tables: Sequence[str],
    rows: Sequence[AgentRow],
    use_now: bool,
    rr: RoundRobin,
) -> int:
    """`bulkInsertSmsQueue` (sq:910-963): each row takes the next table of the process-wide
    round robin; then table after table, ≤ 5000-row multi-row INSERTs with status_code 100 and
    rsv1 '1', `sendreq_time` = NOW() (immediate) or the row's KST string. A failed batch is
    dropped and not counted (the caller refunds it). Returns the rows inserted."""
    _require_autocommit(my)
    if not rows:
        return 0
    batches: dict[str, list[list[AgentRow]]] = {t: [[]] for t in tables}
    for row in rows:
        table = rr.next(tables)
        if len(batches[table][-1]) >= BATCH_ROWS:
            batches[table].append([])
        batches[table][-1].append(row)
    inserted = 0
    columns = (
        "dest_no, call_back, msg_contents, msg_type, title_str, sendreq_time, status_code, rsv1,"
        " app_etc1, app_etc2, file_name1, file_name2, file_name3"
    )
    for table, chunks in batches.items():
        if not is_valid_sms_table(table):
            raise ValueError(f"{table!r} is not an agent table name")
        for chunk in chunks:
            if not chunk:
                continue
            time_mark = "NOW()" if use_now else "%s"
            marks = ", ".join(
                [f"(%s, %s, %s, %s, %s, {time_mark}, 100, '1', %s, %s, %s, %s, %s)"] * len(chunk)
            )
            values: list[str] = []
            for r in chunk:
                values += [r.dest_no, r.call_back, r.msg_contents, r.msg_type, r.title_str]
                if not use_now:
                    values.append(r.send_time)
                values += [r.app_etc1, r.app_etc2, r.file_name1, r.file_name2, r.file_name3]
            try:
                async with my.cursor() as cur:
                    await cur.execute(f"INSERT INTO {table} ({columns}) VALUES {marks}", values)
            except pymysql.err.MySQLError:
                continue  # sq:955-958: logged there, dropped, refunded by the caller
            inserted += len(chunk)
    return inserted


def split_send_time(
    base: datetime, index: int, start_hour: int = SPLIT_START_HOUR, end_hour: int = SPLIT_END_HOUR
) -> datetime:
    """`calcSplitSendTime` (cp:51-78), on a Node process in KST: base + `index` minutes; at or
    past `end_hour` KST it moves to the next day at `start_hour`, plus the minutes it ran over
    (seconds kept). The caller uses ⌊i / splitCount⌋ as the index (cp:1565-1578)."""
    moved = base + timedelta(minutes=index)
    local = moved.astimezone(KST)
    if local.hour < end_hour:
        return moved
    over = (local.hour - end_hour) * 60 + local.minute
    day = local.replace(hour=start_hour, minute=0) + timedelta(days=1)
    return (day + timedelta(minutes=over)).astimezone(moved.tzinfo or UTC)


# ---- callbacks and unsubscribes -------------------------------------------------------------
async def check_callback(pg: asyncpg.Connection, company_id: uuid.UUID, callback: str) -> str:
    """The callback check of every send (cp:612-638, 1337-1362): digits only, 8-11 of them
    (INVALID_CALLBACK_FORMAT), and present hyphen-free among the company's *active*
    sender_numbers or any of its callback_numbers (INVALID_SENDER_NUMBER). Returns the digits."""
    digits = normalize_phone(callback)
    if not 8 <= len(digits) <= 11:
        raise WebRefusal("INVALID_CALLBACK_FORMAT", "유효하지 않은 회신번호입니다.")
    found = await pg.fetchval(
        """SELECT phone FROM (
               SELECT REPLACE(phone_number, '-', '') AS phone FROM sender_numbers
               WHERE company_id = $1 AND is_active = true
               UNION SELECT REPLACE(phone, '-', '') AS phone FROM callback_numbers
               WHERE company_id = $1) t
           WHERE phone = $2 LIMIT 1""",
        company_id,
        digits,
    )
    if found is None:
        raise WebRefusal("INVALID_SENDER_NUMBER", "등록되지 않은 회신번호입니다.")
    return digits


async def registered_callbacks(
    pg: asyncpg.Connection, company_id: uuid.UUID, user_id: uuid.UUID | None
) -> set[str]:
    """The per-recipient callback rule (utils/callback-filter.ts:100-135): active sender
    numbers plus callback numbers; with a (non-admin) user, a callback number whose
    assignment_scope is 'assigned' counts only when assigned to that user."""
    rows = await pg.fetch(
        """SELECT REPLACE(phone_number, '-', '') AS phone FROM sender_numbers
           WHERE company_id = $1 AND is_active = true
           UNION SELECT REPLACE(cn.phone, '-', '') FROM callback_numbers cn
           WHERE cn.company_id = $1 AND ($2::uuid IS NULL OR cn.assignment_scope = 'all'
                 OR cn.assignment_scope IS NULL
                 OR EXISTS (SELECT 1 FROM callback_number_assignments cna
                            WHERE cna.callback_number_id = cn.id AND cna.user_id = $2))""",
        company_id,
        user_id,
    )
    return {r["phone"] for r in rows}


async def unsubscribed(
    pg: asyncpg.Connection, user_id: uuid.UUID | None, phones: Iterable[str]
) -> set[str]:
    """The direct send's unsubscribe filter (cp:1440-1451): per sending *user*, on digits."""
    numbers = [normalize_phone(p) for p in phones]
    rows = await pg.fetch(
        "SELECT DISTINCT phone FROM unsubscribes WHERE user_id = $1 AND phone = ANY($2::text[])",
        user_id,
        numbers,
    )
    return {r["phone"] for r in rows}


async def register_unsubscribe(
    pg: asyncpg.Connection, company_id: uuid.UUID, user_id: uuid.UUID, phone: str, source: str
) -> bool:
    """A brand user's own opt-out (utils/unsubscribe-helper.ts:186-195; a company admin's
    is spread to the matching brand users instead, :150-185). True if new."""
    result = await pg.execute(
        """INSERT INTO unsubscribes (company_id, user_id, phone, source) VALUES ($1, $2, $3, $4)
           ON CONFLICT (user_id, phone) DO NOTHING""",
        company_id,
        user_id,
        normalize_phone(phone),
        source,
    )
    return str(result).endswith(" 1")


async def ai_send_customers(
    pg: asyncpg.Connection, company_id: uuid.UUID, user_id: uuid.UUID
) -> list[str]:
    """The AI send's recipients without a target filter (cp:676-685): active customers with
    sms_opt_in, minus the sending user's unsubscribes (`buildUnsubscribeFilter`,
    unsubscribe-helper.ts:28-30). Phones as stored."""
    rows = await pg.fetch(
        """SELECT c.phone FROM customers c
           WHERE c.company_id = $1 AND c.is_active = true AND c.sms_opt_in = true
             AND NOT EXISTS (SELECT 1 FROM unsubscribes u
                             WHERE u.user_id = $2 AND u.phone = c.phone)
           ORDER BY c.phone""",
        company_id,
        user_id,
    )
    return [r["phone"] for r in rows]


# ---- direct send (cp:1239-1830) -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Recipient:
    phone: str
    text: str  # the final text (ad prefix and 080 line already in)
    subject: str = ""


@dataclass(frozen=True, slots=True)
class DirectSend:
    campaign_id: uuid.UUID
    sent: int
    failed: int
    unsubscribed: int
    duplicates: int


def _ko_kr_now(now: datetime) -> str:
    """`new Date().toLocaleString('ko-KR')` in KST, as the direct send names its campaign."""
    local = now.astimezone(KST)
    noon = "오후" if local.hour >= 12 else "오전"
    hour = local.hour % 12 or 12
    return f"{local.year}. {local.month}. {local.day}. {noon} {hour}:{local:%M}:{local:%S}"


async def create_direct_campaign(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    message_type: str,
    message: str,
    callback: str,
    target_count: int,
    now: datetime,
    *,
    subject: str | None = None,
    scheduled_at: datetime | None = None,
    is_ad: bool = False,
    mms_image_paths: Sequence[str] = (),
) -> uuid.UUID:
    """The direct send's campaigns INSERT (cp:1466-1498): send_type 'direct', status
    `scheduled` or `sending`, created_by the sender (user_id left NULL), the callback as typed,
    target_count = recipients after the filters, send_channel 'sms'."""
    campaign_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO campaigns (company_id, campaign_name, message_type, message_content, subject,
               callback_number, target_count, send_type, status, scheduled_at, message_template,
               message_subject, created_by, mms_image_paths, send_channel, kakao_bubble_type,
               kakao_sender_key, kakao_targeting, kakao_attachment_json, kakao_carousel_json,
               kakao_resend_type, is_ad, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'direct', $8, $9, $4, $5, $10, $11, 'sms', NULL,
                   NULL, 'I', NULL, NULL, 'SM', $12, NOW())
           RETURNING id""",
        company_id,
        f"직접발송 {_ko_kr_now(now)}",
        message_type,
        message,
        subject or None,
        callback,
        target_count,
        "scheduled" if scheduled_at else "sending",
        scheduled_at,
        user_id,
        json.dumps(list(mms_image_paths)) if mms_image_paths else None,
        is_ad,
    )
    return campaign_id


async def record_immediate_direct_send(
    pg: asyncpg.Connection, campaign_id: uuid.UUID, target: int, sent: int
) -> None:
    """After an immediate direct send's bulk insert (cp:1771-1792): the campaign gets
    status `sending` (`failed` if nothing went in), sent_count, fail_count = insert failures,
    sent_at = NOW(); run 1 is inserted `sending` with sent_at = NOW() (a failure there is
    swallowed). A scheduled direct send writes neither: no run row."""
    status = "failed" if sent == 0 else "sending"
    await pg.execute(
        """UPDATE campaigns SET status = $1, sent_count = $2, fail_count = $3, sent_at = NOW(),
               updated_at = NOW() WHERE id = $4""",
        status,
        sent,
        target - sent,
        campaign_id,
    )
    try:
        async with pg.transaction():
            await pg.execute(
                """INSERT INTO campaign_runs (campaign_id, run_number, target_count, sent_count,
                       status, sent_at, created_at) VALUES ($1, 1, $2, $3, $4, NOW(), NOW())""",
                campaign_id,
                target,
                sent,
                status,
            )
    except asyncpg.PostgresError:
        pass


async def direct_send(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    message_type: str,
    callback: str,
    recipients: Sequence[Recipient],
    now: datetime,
    env: WebEnv,
    rr: RoundRobin,
    training_secret: str,
    *,
    subject: str | None = None,
    scheduled_at: datetime | None = None,
    split_count: int = 0,
    is_ad: bool = False,
    dedup: bool = True,
    unsubscribe_filter: bool = True,
    mms_image_paths: Sequence[str] = (),
) -> DirectSend:
    """POST /api/campaigns/direct-send (cp:1239-1830), SMS channel, one callback for all:
    the company-line-group gate, the subject rule, the callback check, de-duplication by
    digits, the sender's unsubscribes, the campaigns row, the prepaid deduction, the bulk
    insert into the *user's* tables (`getCompanySmsTables(company, user)`, cp:1248), a refund
    of what failed to insert, the immediate-send bookkeeping and the training row keyed by the
    campaign id (cp:1795-1808)."""
    if not await has_company_line_group(pg, company_id):
        raise WebRefusal("LINE_GROUP_NOT_SET", "발송 라인그룹이 설정되지 않았습니다.")
    tables = await company_sms_tables(pg, company_id, user_id, env)
    if not recipients:
        raise WebRefusal("NO_RECIPIENTS", "수신자가 없습니다")
    if message_type == "MMS" and not mms_image_paths:
        raise WebRefusal("MMS_IMAGE_REQUIRED", "MMS는 이미지 첨부가 필수입니다")
    if scheduled_at is not None and scheduled_at <= now:
        raise WebRefusal("INVALID_SCHEDULE", "과거 시각으로 예약할 수 없습니다.")
    chosen = list(recipients)
    duplicates = 0
    if dedup:  # utils/deduplicate.ts:29-51
        seen: set[str] = set()
        unique = []
        for r in chosen:
            digits = normalize_phone(r.phone)
            if digits and digits not in seen:
                seen.add(digits)
                unique.append(r)
        duplicates = len(chosen) - len(unique)
        chosen = unique
    if message_type in ("LMS", "MMS") and not (subject or "").strip():
        raise WebRefusal("SUBJECT_REQUIRED", "LMS/MMS 발송 시 제목을 입력해주세요.")
    await check_callback(pg, company_id, callback)
    opted = 0
    if unsubscribe_filter:
        out = await unsubscribed(pg, user_id, (r.phone for r in chosen))
        kept = [r for r in chosen if normalize_phone(r.phone) not in out]
        opted = len(chosen) - len(kept)
        chosen = kept
    if not chosen:
        raise WebRefusal(
            "ALL_FILTERED", "모든 수신자가 수신거부 상태이거나 필터 조건에 해당하지 않습니다"
        )
    campaign_id = await create_direct_campaign(
        pg,
        company_id,
        user_id,
        message_type,
        recipients[0].text,
        callback,
        len(chosen),
        now,
        subject=subject,
        scheduled_at=scheduled_at,
        is_ad=is_ad,
        mms_image_paths=mms_image_paths,
    )
    deduction = await prepaid_deduct(
        pg, company_id, len(chosen), message_type, campaign_id, user_id
    )
    if not deduction.ok:
        await pg.execute("DELETE FROM campaigns WHERE id = $1", campaign_id)
        raise WebRefusal("INSUFFICIENT_BALANCE", "잔액이 부족합니다.")
    use_now = scheduled_at is None and split_count <= 0
    images = [*mms_image_paths, "", "", ""][:3]
    rows = []
    for i, r in enumerate(chosen):
        if scheduled_at is not None:
            base = (
                split_send_time(scheduled_at, i // split_count) if split_count > 0 else scheduled_at
            )
            send_time = kst_wall(base)
        elif split_count > 0:
            send_time = kst_wall(split_send_time(now, i // split_count))
        else:
            send_time = ""
        rows.append(
            AgentRow(
                normalize_phone(r.phone),
                normalize_phone(callback),  # resolveCustomerCallback (callback-filter.ts:214-223)
                r.text,
                to_qtmsg_type(message_type),
                r.subject or subject or "",
                send_time,
                str(campaign_id),
                str(company_id),
                *images,
            )
        )
    sent = await bulk_insert_sms_queue(my, tables, rows, use_now, rr)
    if len(chosen) - sent > 0:
        await prepaid_refund(
            pg,
            company_id,
            len(chosen) - sent,
            message_type,
            campaign_id,
            f"직접발송 SMS 부분실패 {len(chosen) - sent}건 환불",
        )
    if scheduled_at is None:
        await record_immediate_direct_send(pg, campaign_id, len(chosen), sent)
    company = await pg.fetchrow("SELECT name, brand_tone FROM companies WHERE id = $1", company_id)
    await log_training_data(
        pg,
        training_secret,
        source_id=campaign_id,
        company_id=company_id,
        message_type=message_type,
        is_ad=is_ad,
        final_message=recipients[0].text,
        final_source="manual",
        company_name=company["name"] if company else None,
        brand_tone=company["brand_tone"] if company else None,
        target_count=len(chosen),
        send_at=scheduled_at or now,
    )
    return DirectSend(campaign_id, sent, len(chosen) - sent, opted, duplicates)


# ---- AI send (cp:441-960) -------------------------------------------------------------------
async def create_ai_campaign(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str,
    message_type: str,
    message: str,
    *,
    callback: str | None = None,
    subject: str | None = None,
    scheduled_at: datetime | None = None,
    is_ad: bool = False,
    target_filter: Mapping[str, Any] | None = None,
    target_count: int = 0,
) -> uuid.UUID:
    """POST /api/campaigns (cp:441-538): a `draft` (the column default), send_type unset,
    created_by the user."""
    campaign_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO campaigns (company_id, campaign_name, message_type, target_filter,
               message_content, subject, message_subject, message_template, scheduled_at, is_ad,
               target_count, created_by, send_channel, kakao_targeting, kakao_resend_type,
               callback_number, use_individual_callback)
           VALUES ($1, $2, $3, $4, $5, $6, $6, $5, $7, $8, $9, $10, 'sms', 'I', 'SM', $11, false)
           RETURNING id""",
        company_id,
        name,
        message_type,
        json.dumps(dict(target_filter)) if target_filter is not None else None,
        message,
        subject,
        scheduled_at,
        is_ad,
        target_count,
        user_id,
        callback,
    )
    return campaign_id


async def start_ai_run(
    pg: asyncpg.Connection, campaign_id: uuid.UUID, target_count: int, now: datetime
) -> tuple[uuid.UUID, bool]:
    """The AI send's refusals and run row (cp:660-662, 729-768): refused while the campaign
    is `sending` or one of its runs is `sending|scheduled`; run_number = max + 1, status
    `scheduled` when scheduled_at is in the future else `sending`, target_filter and
    scheduled_at copied. scheduled_at goes in as node-postgres sends a Date: the KST wall
    clock, its offset dropped by the `timestamp` column. Returns (run id, scheduled)."""
    camp = await pg.fetchrow(
        "SELECT status, scheduled_at, target_filter FROM campaigns WHERE id = $1", campaign_id
    )
    if camp is None:
        raise WebRefusal("NOT_FOUND", "캠페인을 찾을 수 없습니다.")
    if camp["status"] == "sending":
        raise WebRefusal("ALREADY_SENDING", "이미 발송 중입니다.")
    busy = await pg.fetchval(
        "SELECT id FROM campaign_runs WHERE campaign_id = $1 AND status IN ('sending', 'scheduled')"
        " LIMIT 1",
        campaign_id,
    )
    if busy is not None:
        raise WebRefusal("RUN_IN_PROGRESS", "이미 발송이 진행 중이거나 예약되어 있습니다.")
    number = await pg.fetchval(
        "SELECT COALESCE(MAX(run_number), 0) + 1 FROM campaign_runs WHERE campaign_id = $1",
        campaign_id,
    )
    scheduled = camp["scheduled_at"] is not None and camp["scheduled_at"] > now
    wall = (
        camp["scheduled_at"].astimezone(KST).replace(tzinfo=None) if camp["scheduled_at"] else None
    )
    run_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO campaign_runs (campaign_id, run_number, target_filter, target_count, status,
               scheduled_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        campaign_id,
        number,
        camp["target_filter"],
        target_count,
        "scheduled" if scheduled else "sending",
        wall,
    )
    return run_id, scheduled


async def finish_ai_send(
    pg: asyncpg.Connection,
    run_id: uuid.UUID,
    campaign_id: uuid.UUID,
    sent: int,
    target: int,
    scheduled: bool,
) -> None:
    """After the AI send's bulk insert (cp:892-915): the run's sent_count and status
    (`failed` if nothing went in), sent_at = CURRENT_TIMESTAMP unless scheduled; the campaign's
    status, sent_count = COALESCE(sent_count, 0) + sent, target_count, sent_at likewise."""
    status = "failed" if sent == 0 else ("scheduled" if scheduled else "sending")
    stamp = "" if scheduled else ", sent_at = CURRENT_TIMESTAMP"
    await pg.execute(
        f"UPDATE campaign_runs SET sent_count = $1, status = $2{stamp} WHERE id = $3",
        sent,
        status,
        run_id,
    )
    await pg.execute(
        f"""UPDATE campaigns SET status = $1, sent_count = COALESCE(sent_count, 0) + $2,
               target_count = $3{stamp} WHERE id = $4""",
        status,
        sent,
        target,
        campaign_id,
    )


async def ai_send(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    campaign_id: uuid.UUID,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    recipients: Sequence[Recipient],
    now: datetime,
    env: WebEnv,
    rr: RoundRobin,
    training_secret: str,
) -> tuple[uuid.UUID, int]:
    """POST /api/campaigns/:id/send (cp:543-960), SMS channel, the campaign's own callback:
    the gate, the callback check, the run row, the deduction, the bulk insert (immediate:
    NOW(); scheduled: the KST string of scheduled_at), the bookkeeping, and the training row
    keyed by the *run* id (cp:917-931). Returns (run id, rows inserted)."""
    if not await has_company_line_group(pg, company_id):
        raise WebRefusal("LINE_GROUP_NOT_SET", "발송 라인그룹이 설정되지 않았습니다.")
    tables = await company_sms_tables(pg, company_id, user_id, env)
    camp = await pg.fetchrow(
        "SELECT * FROM campaigns WHERE id = $1 AND company_id = $2", campaign_id, company_id
    )
    if camp is None:
        raise WebRefusal("NOT_FOUND", "캠페인을 찾을 수 없습니다.")
    callback = camp["callback_number"] or await pg.fetchval(
        "SELECT phone FROM callback_numbers WHERE company_id = $1 AND is_default = true LIMIT 1",
        company_id,
    )
    if not callback:
        raise WebRefusal("NO_DEFAULT_CALLBACK", "기본 회신번호가 설정되지 않았습니다.")
    await check_callback(pg, company_id, callback)
    if not recipients:
        raise WebRefusal("NO_TARGETS", "발송 대상이 없습니다.")
    run_id, scheduled = await start_ai_run(pg, campaign_id, len(recipients), now)
    deduction = await prepaid_deduct(
        pg, company_id, len(recipients), camp["message_type"], campaign_id, user_id
    )
    if not deduction.ok:
        raise WebRefusal("INSUFFICIENT_BALANCE", "잔액이 부족합니다.")
    send_time = kst_wall(camp["scheduled_at"] if scheduled else now)
    rows = [
        AgentRow(
            normalize_phone(r.phone),
            normalize_phone(callback),
            r.text,
            to_qtmsg_type(camp["message_type"]),
            r.subject or camp["subject"] or "",
            send_time,
            str(campaign_id),
            str(company_id),
        )
        for r in recipients
    ]
    sent = await bulk_insert_sms_queue(my, tables, rows, not scheduled, rr)
    if len(recipients) - sent > 0:
        await prepaid_refund(
            pg,
            company_id,
            len(recipients) - sent,
            camp["message_type"],
            campaign_id,
            f"AI발송 부분실패 {len(recipients) - sent}건 환불",
        )
    await finish_ai_send(pg, run_id, campaign_id, sent, len(recipients), scheduled)
    company = await pg.fetchrow("SELECT name, brand_tone FROM companies WHERE id = $1", company_id)
    template = camp["message_template"]
    await log_training_data(
        pg,
        training_secret,
        source_id=run_id,
        company_id=company_id,
        message_type=camp["message_type"],
        is_ad=bool(camp["is_ad"]),
        final_message=camp["message_content"] or "",
        final_source="selected_as_is"
        if template and template == camp["message_content"]
        else "edited",
        company_name=company["name"] if company else None,
        brand_tone=company["brand_tone"] if company else None,
        user_prompt=camp["user_prompt"],
        target_filter=json.loads(camp["target_filter"]) if camp["target_filter"] else None,
        target_count=len(recipients),
        send_at=camp["scheduled_at"] or now,
    )
    return run_id, sent


# ---- billing (routes/billing.ts) ------------------------------------------------------------
async def billing_message_rows(
    pg: asyncpg.Connection,
    my: aiomysql.Connection,
    company_id: uuid.UUID,
    start: date,
    end: date,
    env: WebEnv,
) -> int:
    """The invoice's count of campaign messages (routes/billing.ts:175-216): `completed` runs
    with sent_at in [start, end] (as dates, in the session's UTC), then the MySQL rows
    `app_etc1 IN (run ids)` in the company group's live tables and the period's log tables.
    The sends write campaigns.id into app_etc1, so this counts 0 for every send since
    e6ee94d5 (2026-02-05)."""
    runs = await pg.fetch(
        """SELECT cr.id FROM campaign_runs cr JOIN campaigns c ON c.id = cr.campaign_id
           WHERE c.company_id = $1 AND cr.sent_at >= $2::date
             AND cr.sent_at < ($3::date + interval '1 day') AND cr.status = 'completed'""",
        company_id,
        start,
        end,
    )
    if not runs:
        return 0
    live = await company_sms_tables(pg, company_id, None, env)
    logs = await existing_log_tables(my)
    tables = list(live)
    month = date(start.year, start.month, 1)
    while month <= end:  # billing.ts:37-54
        tables += [f"{t}_{month:%Y%m}" for t in live if f"{t}_{month:%Y%m}" in logs]
        month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return await _count(
        my, tables, f"app_etc1 IN ({','.join(['%s'] * len(runs))})", [str(r["id"]) for r in runs]
    )


async def billing_spam_units(
    pg: asyncpg.Connection, company_id: uuid.UUID, start: date, end: date
) -> tuple[int, int]:
    """The invoice's spam-filter units (routes/billing.ts:240-255): result rows of the
    company's tests created in the KST days given; (all rows, billed rows = result IS NOT NULL)."""
    row = await pg.fetchrow(
        """SELECT COUNT(*), COALESCE(SUM(CASE WHEN r.result IS NOT NULL THEN 1 ELSE 0 END), 0)
           FROM spam_filter_test_results r JOIN spam_filter_tests t ON r.test_id = t.id
           WHERE t.company_id = $1
             AND t.created_at >= ($2::date::text || ' 00:00:00+09')::timestamptz
             AND t.created_at
                 < (($3::date + INTERVAL '1 day')::date::text || ' 00:00:00+09')::timestamptz""",
        company_id,
        start,
        end,
    )
    assert row is not None
    return int(row[0]), int(row[1])


# ---- training data (utils/training-logger.ts) -----------------------------------------------
def source_ref(secret: str, value: uuid.UUID | str) -> str:
    """`hmacHash` (training-logger.ts:108-114): HMAC-SHA256 keyed with TRAINING_HMAC_SECRET of
    the id's text, first 32 hex digits. source_ref hashes campaign_runs.id for AI sends
    (cp:920) and campaigns.id for direct sends (cp:1797); tenant_ref hashes companies.id."""
    return hmac.new(secret.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:32]


_PHONE = re.compile(f"([0-9]{{2,4}}[-.{_JS_SPACE}]?[0-9]{{3,4}}[-.{_JS_SPACE}]?[0-9]{{4}})")
_WON = re.compile(f"₩?[{_JS_SPACE}]?[0-9]{{1,3}}(,[0-9]{{3}})*[{_JS_SPACE}]?원")
_COMMA_NUMBER = re.compile(r"[0-9]{1,3}(,[0-9]{3})+")
_URL = re.compile(f"https?://[^{_JS_SPACE})}}\\]]+")
_EMAIL = re.compile(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+\.[A-Za-z0-9_]+")


def mask_for_training(text: str | None, company_name: str | None = None) -> str:
    """`maskForTraining` (training-logger.ts:119-161): the company name (any case) → {brand},
    phone-like digit runs → {phone}, won amounts and comma numbers → {amount}, URLs → {url},
    e-mails → {email}, in that order (JavaScript's ASCII \\d and \\w)."""
    if not text:
        return ""
    masked = text
    if company_name:
        masked = re.sub(re.escape(company_name), "{brand}", masked, flags=re.IGNORECASE)
    masked = _PHONE.sub("{phone}", masked)
    masked = _WON.sub("{amount}", masked)
    masked = _COMMA_NUMBER.sub("{amount}", masked)
    masked = _URL.sub("{url}", masked)
    return _EMAIL.sub("{email}", masked)


_EMOJI = re.compile(
    "[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f1e0-\U0001f1ff"
    "\u2600-\u26ff\u2700-\u27bf\ufe00-\ufe0f\U0001f900-\U0001f9ff\U0001fa00-\U0001fa6f"
    "\U0001fa70-\U0001faff\u200d\u20e3]"
)


def message_features(text: str | None) -> dict[str, Any]:
    """`computeMessageFeatures` (training-logger.ts:166-214); char_length counts UTF-16 units
    (JavaScript's `length`)."""
    if not text:
        return {
            "emoji_count": 0,
            "sentence_count": 0,
            "char_length": 0,
            "has_link": False,
            "has_phone_cta": False,
            "cta_type": "none",
        }
    sentences = [s for s in re.split(r"[.!?\n]+", text) if s.strip(_JS_SPACE_CHARS)]
    has_link = re.search(r"https?://|\{url\}", text, re.IGNORECASE) is not None
    has_phone = re.search(r"[0-9]{2,4}[-.]?[0-9]{3,4}[-.]?[0-9]{4}|\{phone\}", text) is not None
    cta = "link" if has_link else "phone" if has_phone else "none"
    if cta == "none" and re.search("방문|매장|오세요|오셔서|들러", text):
        cta = "visit"
    return {
        "emoji_count": len(_EMOJI.findall(text)),
        "sentence_count": len(sentences),
        "char_length": len(text.encode("utf-16-le")) // 2,
        "has_link": has_link,
        "has_phone_cta": has_phone,
        "cta_type": cta,
    }


GUARDRAILS_PASSED = {"status": "passed", "actions": [], "flags": []}  # :275-279
TRAINING_VERSIONS = {"prompt": "v1", "persona": "v1", "policy": "v1", "redaction": "v1_regex"}


async def log_training_data(
    pg: asyncpg.Connection,
    secret: str,
    *,
    source_id: uuid.UUID,
    company_id: uuid.UUID,
    message_type: str,
    is_ad: bool,
    final_message: str,
    final_source: str,
    model_id: str = "claude-sonnet-4-5-20250929",  # config/defaults.ts:22 (CLAUDE_MODEL)
    company_name: str | None = None,
    brand_tone: str | None = None,
    user_prompt: str | None = None,
    target_filter: Mapping[str, Any] | None = None,
    target_count: int | None = None,
    segment_key: str | None = None,
    send_at: datetime | None = None,
) -> str:
    """`logTrainingData` (training-logger.ts:234-335), called fire-and-forget after queueing:
    one INSERT … ON CONFLICT (source_ref) DO NOTHING with source_ref = HMAC of `source_id`,
    tenant_ref = HMAC of the company id, the prompt and final message masked, features of
    the masked text, versions 'v1'/'v1_regex'. Errors are swallowed there; here they raise.
    Returns the source_ref."""
    ref = source_ref(secret, source_id)
    masked = mask_for_training(final_message, company_name)
    await pg.execute(
        """INSERT INTO ai_training_logs (source_ref, tenant_ref, industry_code, brand_tone,
               user_prompt, target_filter, target_count, segment_key, message_type, is_ad,
               candidates, selected_candidate_id, final_message, final_source, message_features,
               send_at, prompt_version, persona_version, policy_version, model_id, model_params,
               guardrail_actions, redaction_version)
           VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, $10, $11, $12, $13,
                   $14, $15, $16, $17, NULL, $18, $19)
           ON CONFLICT (source_ref) DO NOTHING""",
        ref,
        source_ref(secret, company_id),
        brand_tone or None,
        mask_for_training(user_prompt, company_name) if user_prompt else None,
        json.dumps(dict(target_filter)) if target_filter else None,
        target_count or None,
        segment_key,
        message_type,
        is_ad,
        masked,
        final_source or "manual",
        json.dumps(message_features(masked)),
        send_at or datetime.now(UTC),
        TRAINING_VERSIONS["prompt"],
        TRAINING_VERSIONS["persona"],
        TRAINING_VERSIONS["policy"],
        model_id,
        json.dumps(GUARDRAILS_PASSED),
        TRAINING_VERSIONS["redaction"],
    )
    return ref


async def update_training_metrics(
    pg: asyncpg.Connection,
    ref: str,
    sent: int,
    success: int,
    fail: int,
    spam_blocked: int = 0,
) -> int:
    """`updateTrainingMetrics` (training-logger.ts:341-365): by source_ref, never inserts;
    spam_blocked 0 unless given (the web's sync never gives it). Returns rows updated."""
    result = await pg.execute(
        """UPDATE ai_training_logs SET sent_count = $2, success_count = $3, fail_count = $4,
               spam_blocked = $5, metrics_updated_at = NOW() WHERE source_ref = $1""",
        ref,
        sent,
        success,
        fail,
        spam_blocked,
    )
    return int(str(result).rsplit(" ", 1)[-1])


# ---- spam tests -----------------------------------------------------------------------------
SPAM_RESULTS = ("pass", "blocked", "failed", "timeout")  # sms-result-map.ts:200-205


def message_hash(text: str | None) -> str:
    """`computeMessageHash` (stq:105-113): SHA-256 of the text with every run of JavaScript
    whitespace removed, first 16 hex digits; '' for an empty text."""
    stripped = _JS_SPACE_RUN.sub("", text or "")
    if not stripped:
        return ""
    return hashlib.sha256(stripped.encode("utf-8")).hexdigest()[:16]


async def register_device(
    pg: asyncpg.Connection, device_id: str, carrier: str, phone: str, device_name: str | None
) -> uuid.UUID:
    """POST /api/spam-filter/devices (sf:696-728), the Android app's registration: an upsert
    on device_id that (re)activates the device and stamps last_seen_at."""
    if not device_id or not carrier or not phone:
        raise WebRefusal("MISSING_FIELDS", "필수 항목 누락 (deviceId, carrier, phone)")
    if carrier not in ("SKT", "KT", "LGU"):
        raise WebRefusal("BAD_CARRIER", "통신사는 SKT, KT, LGU 중 하나여야 합니다.")
    device: uuid.UUID = await pg.fetchval(
        """INSERT INTO spam_filter_devices (device_id, carrier, phone, device_name, last_seen_at)
           VALUES ($1, $2, $3, $4, NOW())
           ON CONFLICT (device_id) DO UPDATE SET carrier = $2, phone = $3, device_name = $4,
               is_active = true, last_seen_at = NOW()
           RETURNING id""",
        device_id,
        carrier,
        phone,
        device_name,
    )
    return device


async def _opt080(pg: asyncpg.Connection, user_id: uuid.UUID, company_id: uuid.UUID) -> str | None:
    """`getOpt080Number` (utils/messageUtils.ts:325-334): the user's 080 number, else the
    company's (its reject_number when empty)."""
    own = await pg.fetchval("SELECT opt_out_080_number FROM users WHERE id = $1", user_id)
    if own:
        return str(own)
    value = await pg.fetchval(
        "SELECT COALESCE(NULLIF(opt_out_080_number, ''), reject_number) FROM companies"
        " WHERE id = $1",
        company_id,
    )
    return str(value) if value else None


def _types(message_type: str, sms: str | None, lms: str | None) -> list[str]:
    """stq:163-168, sf:142-147: LMS (and MMS) tests send the LMS text, others the SMS text."""
    if message_type in ("LMS", "MMS"):
        return ["LMS"] if lms else []
    return ["SMS"] if sms else []


async def _charge_test(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    test_id: uuid.UUID,
    devices: int,
    types: Sequence[str],
) -> None:
    """The test's deduction, devices × types of its first type (stq:195-209, sf:164-180);
    refused: the test is completed at once."""
    unit = types[0] if types else "SMS"
    deduction = await prepaid_deduct(pg, company_id, devices * len(types), unit, test_id, user_id)
    if not deduction.ok:
        await pg.execute(
            "UPDATE spam_filter_tests SET status = 'completed', completed_at = NOW() WHERE id = $1",
            test_id,
        )
        raise WebRefusal("INSUFFICIENT_BALANCE", "잔액이 부족합니다.")


async def _result_row(
    pg: asyncpg.Connection, test_id: uuid.UUID, device: asyncpg.Record, message_type: str
) -> None:
    """One pre-created result row (stq:211-220, sf:188-192): four columns, the rest default."""
    await pg.execute(
        "INSERT INTO spam_filter_test_results (test_id, carrier, message_type, phone)"
        " VALUES ($1, $2, $3, $4)",
        test_id,
        device["carrier"],
        message_type,
        device["phone"],
    )


async def enqueue_spam_test(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    callback: str,
    message_type: str,
    *,
    sms: str | None = None,
    lms: str | None = None,
    source: str = "auto_ai",
    variant_id: str | None = None,
    batch_id: uuid.UUID | None = None,
    skip_prepaid: bool = True,
) -> uuid.UUID:
    """`enqueueSpamTest` (stq:120-229), used by the AI route's automatic tests (source
    'auto_ai', skip_prepaid, stq:639-652): a `queued` test with the text's hash and the 080
    number, a deduction (devices × types) unless skipped, then one result row per *active*
    device and message type (carrier, type, phone; received false, result NULL). Texts are
    taken as final (the web personalises with its first customer before hashing)."""
    text = lms if message_type in ("LMS", "MMS") else sms
    devices = await pg.fetch(
        "SELECT id, carrier, phone FROM spam_filter_devices WHERE is_active = true ORDER BY carrier"
    )
    if not devices:
        raise WebRefusal("NO_DEVICES", "등록된 테스트폰이 없습니다.")
    types = _types(message_type, sms, lms)
    test_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO spam_filter_tests (company_id, user_id, callback_number, message_content_sms,
               message_content_lms, message_hash, spam_check_number, status, source, variant_id,
               batch_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10) RETURNING id""",
        company_id,
        user_id,
        callback,
        sms or None,
        lms or None,
        message_hash(text) or None,
        await _opt080(pg, user_id, company_id),
        source,
        variant_id,
        batch_id,
    )
    if not skip_prepaid:
        await _charge_test(pg, company_id, user_id, test_id, len(devices), types)
    for device in devices:
        for mtype in types:
            await _result_row(pg, test_id, device, mtype)
    return test_id


async def create_manual_spam_test(
    pg: asyncpg.Connection,
    my: aiomysql.Connection | None,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    callback: str,
    message_type: str,
    *,
    sms: str | None = None,
    lms: str | None = None,
    subject: str | None = None,
) -> uuid.UUID:
    """POST /api/spam-filter/test (sf:25-212), which bypasses the queue: the plan gate
    (PLAN_FEATURE_LOCKED), a stale sweep of every `active` test older than 60 s (its undecided
    rows → timeout, the test completed), one `pending|active` test per user (409), no
    `active` twin with the same hyphen-free callback and hash (409); an `active` test, a
    deduction unless the plan has auto_spam_test_enabled, and per active device and type a
    result row and — when `my` is given — a row in the test group's first table with
    app_etc1 = the test id (`insertTestSmsQueue`, sq:140-176). The web then polls every 15 s
    (grace 10 s) in-process; that part is what the node replaces and is not re-expressed."""
    if not callback:
        raise WebRefusal("NO_CALLBACK", "발신번호를 입력해주세요.")
    if not sms and not lms:
        raise WebRefusal("NO_MESSAGE", "테스트할 메시지를 입력해주세요.")
    plan = await pg.fetchrow(
        """SELECT p.spam_filter_enabled, p.auto_spam_test_enabled FROM companies c
           LEFT JOIN plans p ON c.plan_id = p.id WHERE c.id = $1""",
        company_id,
    )
    if plan is None or not plan["spam_filter_enabled"]:
        raise WebRefusal("PLAN_FEATURE_LOCKED", "스타터 이상 요금제에서 이용 가능합니다.")
    stale = [
        r["id"]
        for r in await pg.fetch(
            "SELECT id FROM spam_filter_tests WHERE status = 'active'"
            f" AND created_at < NOW() - INTERVAL '{SPAM_TEST_TIMEOUT_S} seconds'"
        )
    ]
    if stale:
        await pg.execute(
            """UPDATE spam_filter_test_results SET result = 'timeout'
               WHERE test_id = ANY($1::uuid[]) AND received = false AND result IS NULL""",
            stale,
        )
        await pg.execute(
            "UPDATE spam_filter_tests SET status = 'completed', completed_at = NOW()"
            " WHERE id = ANY($1::uuid[])",
            stale,
        )
    mine = await pg.fetchval(
        "SELECT id FROM spam_filter_tests WHERE user_id = $1 AND status IN ('pending', 'active')",
        user_id,
    )
    if mine is not None:
        raise WebRefusal("TEST_IN_PROGRESS", "이미 진행 중인 테스트가 있습니다.")
    text = lms if message_type in ("LMS", "MMS") else sms
    digest = message_hash(text)
    if digest:
        twin = await pg.fetchval(
            """SELECT id FROM spam_filter_tests WHERE status = 'active'
                 AND REPLACE(callback_number, '-', '') = $1 AND message_hash = $2""",
            callback.replace("-", ""),
            digest,
        )
        if twin is not None:
            raise WebRefusal(
                "TWIN_IN_PROGRESS", "동일한 발신번호와 메시지로 진행 중인 테스트가 있습니다."
            )
    devices = await pg.fetch(
        "SELECT id, carrier, phone FROM spam_filter_devices WHERE is_active = true ORDER BY carrier"
    )
    if not devices:
        raise WebRefusal("NO_DEVICES", "등록된 테스트폰이 없습니다.")
    types = _types(message_type, sms, lms)
    test_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO spam_filter_tests (company_id, user_id, callback_number, message_content_sms,
               message_content_lms, message_hash, spam_check_number, status)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'active') RETURNING id""",
        company_id,
        user_id,
        callback,
        sms or None,
        lms or None,
        digest or None,
        await _opt080(pg, user_id, company_id),
    )
    if not plan["auto_spam_test_enabled"]:
        await _charge_test(pg, company_id, user_id, test_id, len(devices), types)
    table = (await sms_tables_for_tests(pg))[0]
    for device in devices:
        for mtype in types:
            await _result_row(pg, test_id, device, mtype)
            if my is not None:
                content = sms if mtype == "SMS" else lms
                title = _ad_subject(subject or "", content or "") if mtype == "LMS" else ""
                await _insert_test_row(
                    my, table, device["phone"], callback, content or "", mtype, test_id, title
                )
    return test_id


def _ad_subject(subject: str, content: str) -> str:
    """`buildAdSubject` (utils/messageUtils.ts:403-409) as sf:200-202 calls it for an LMS:
    a text starting with '(광고)' is an ad, whose subject gets '(광고) ' in front (or is
    '(광고)' when empty) unless it already starts with it."""
    if not content.startswith("(광고)"):
        return subject
    if not subject:
        return "(광고)"
    return subject if subject.startswith("(광고)") else f"(광고) {subject}"


async def _insert_test_row(
    my: aiomysql.Connection,
    table: str,
    dest_no: str,
    callback: str,
    content: str,
    message_type: str,
    test_id: uuid.UUID,
    subject: str,
) -> None:
    """`insertTestSmsQueue` without extras (sq:168-175): NOW(), 100, '1', app_etc1 = test id."""
    _require_autocommit(my)
    if not is_valid_sms_table(table):
        raise ValueError(f"{table!r} is not an agent table name")
    async with my.cursor() as cur:
        await cur.execute(
            f"INSERT INTO {table} (dest_no, call_back, msg_contents, msg_type, title_str,"
            " sendreq_time, status_code, rsv1, app_etc1) VALUES (%s, %s, %s, %s, %s, NOW(), 100,"
            " '1', %s)",
            (dest_no, callback, content, to_qtmsg_type(message_type), subject, str(test_id)),
        )


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One spam_filter_test_results row as the screens read it (sf:648-654)."""

    carrier: str
    message_type: str
    received: bool
    received_at: datetime | None
    result: str | None


@dataclass(frozen=True, slots=True)
class SpamTestView:
    status: str
    created_at: datetime
    completed_at: datetime | None
    results: tuple[ResultRow, ...]


async def read_spam_test(
    pg: asyncpg.Connection, test_id: uuid.UUID, company_id: uuid.UUID, now: datetime
) -> SpamTestView:
    """GET /api/spam-filter/tests/:id (sf:632-690), which the modal polls every 2 s (SFM:96):
    results ordered by carrier, message_type — read *before* the side effect; then, if the
    test is `active` and more than 60 s passed since created_at (Node clock), every undecided
    row (received false, result NULL) becomes `timeout` and the test `completed` (completed_at
    = NOW()). The returned status is the new one, the results the ones read first."""
    test = await pg.fetchrow(
        """SELECT t.* FROM spam_filter_tests t JOIN users u ON u.id = t.user_id
           WHERE t.id = $1 AND t.company_id = $2""",
        test_id,
        company_id,
    )
    if test is None:
        raise WebRefusal("NOT_FOUND", "테스트를 찾을 수 없습니다.")
    rows = await pg.fetch(
        """SELECT carrier, message_type, received, received_at, result
           FROM spam_filter_test_results WHERE test_id = $1 ORDER BY carrier, message_type""",
        test_id,
    )
    status = test["status"]
    if status == "active" and (now - test["created_at"]).total_seconds() > SPAM_TEST_TIMEOUT_S:
        await pg.execute(
            """UPDATE spam_filter_test_results SET result = 'timeout'
               WHERE test_id = $1 AND received = false AND result IS NULL""",
            test_id,
        )
        await pg.execute(
            "UPDATE spam_filter_tests SET status = 'completed', completed_at = NOW() WHERE id = $1",
            test_id,
        )
        status = "completed"
    return SpamTestView(
        status,
        test["created_at"],
        test["completed_at"],
        tuple(ResultRow(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows),
    )


def overall_result(results: Iterable[str | None]) -> str:
    """The overall result of a completed test (`waitForTestCompletion`, stq:561-575; the
    AI route's verdict): NULLs dropped, then the first of blocked, failed, timeout present,
    else 'pass' — so any other value (e.g. 'device_error') reads as a pass."""
    present = [r for r in results if r]
    for verdict in ("blocked", "failed", "timeout"):
        if verdict in present:
            return verdict
    return "pass"


def batch_overall(status: str, results: Iterable[str | None]) -> str:
    """A variant's overall in `getSpamTestBatchResults` (stq:511-526): 'pending' unless the
    test is active or completed; NULLs dropped; none left → 'pending'; blocked, failed,
    timeout in that order; 'pass' only when every value left is 'pass', else 'pending'."""
    if status not in ("completed", "active"):
        return "pending"
    present = [r for r in results if r]
    if not present:
        return "pending"
    for verdict in ("blocked", "failed", "timeout"):
        if verdict in present:
            return verdict
    return "pass" if all(r == "pass" for r in present) else "pending"


@dataclass(frozen=True, slots=True)
class Cell:
    icon: str
    text: str


@dataclass(frozen=True, slots=True)
class SpamScreen:
    """What the spam-test modal shows (SFM:233-380)."""

    grid: dict[tuple[str, str], Cell]  # (carrier, SMS|LMS) → the cell; absent: no row
    banner: str  # 'testing' | 'all_received' | 'problems'
    received: int
    blocked: int
    timeout: int
    failed: int


def spam_screen(status: str, results: Sequence[ResultRow]) -> SpamScreen:
    """The modal's grid and banner (SFM:233-260, 342-380) for a test `status` ('testing'
    while polling, 'completed' after): each cell shows the *first* row of its carrier and
    type (SFM:373); ✅ when received, else once completed 🚫 blocked, ❌ failed, ⚠️ timeout,
    ❓ "판정 중" for anything else (NULL, device_error); ⏳ while testing. The banner is green
    "전체 수신 성공" unless a blocked, failed or timeout row exists (SFM:352)."""
    grid: dict[tuple[str, str], Cell] = {}
    for carrier in ("SKT", "KT", "LGU"):
        for mtype in ("SMS", "LMS"):
            row = next(
                (r for r in results if r.carrier == carrier and r.message_type == mtype), None
            )
            if row is not None:
                grid[(carrier, mtype)] = _cell(status, row)
    done = status == "completed"
    blocked = sum(r.result == "blocked" for r in results) if done else 0
    timeout = sum(r.result == "timeout" for r in results) if done else 0
    failed = sum(r.result == "failed" for r in results) if done else 0
    if not done:
        banner = "testing"
    elif blocked or timeout or failed:
        banner = "problems"
    else:
        banner = "all_received"
    return SpamScreen(grid, banner, sum(r.received for r in results), blocked, timeout, failed)


def _cell(status: str, row: ResultRow) -> Cell:
    if row.received:
        return Cell("✅", "수신 완료")
    if status != "completed":
        return Cell("⏳", "확인 중...")
    return {
        "blocked": Cell("🚫", "스팸 차단"),
        "failed": Cell("❌", "발송 실패"),
        "timeout": Cell("⚠️", "시간 초과"),
    }.get(row.result or "", Cell("❓", "판정 중"))


@dataclass(frozen=True, slots=True)
class HistoryItem:
    test_id: uuid.UUID
    status: str
    received: int
    total: int
    all_normal: bool  # SFM:423: completed and received == total
    blocked_label: int  # SFM:422: the "차단 N" shown otherwise, N = total - received


async def spam_history(
    pg: asyncpg.Connection, company_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> list[HistoryItem]:
    """GET /api/spam-filter/tests (sf:578-627) as the history tab shows it (SFM:418-423):
    newest first, 10 per page (first page here), tests JOINed to users (a test without a
    valid user_id is not listed)."""
    rows = await pg.fetch(
        """SELECT t.id, t.status,
                  (SELECT COUNT(*) FROM spam_filter_test_results r
                   WHERE r.test_id = t.id AND r.received = true) AS received_count,
                  (SELECT COUNT(*) FROM spam_filter_test_results r
                   WHERE r.test_id = t.id) AS total_count
           FROM spam_filter_tests t JOIN users u ON u.id = t.user_id
           WHERE t.company_id = $1 AND ($2::uuid IS NULL OR t.user_id = $2)
           ORDER BY t.created_at DESC LIMIT 10""",
        company_id,
        user_id,
    )
    return [
        HistoryItem(
            r["id"],
            r["status"],
            int(r["received_count"]),
            int(r["total_count"]),
            r["status"] == "completed" and r["received_count"] == r["total_count"],
            int(r["total_count"]) - int(r["received_count"]),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Receipt:
    matched: bool
    test_id: uuid.UUID | None = None
    updated: bool = False


async def report_receipt(
    pg: asyncpg.Connection,
    *,
    token: str,
    expected_token: str,
    device_id: str,
    sender: str,
    content: str,
    message_type: str,
) -> Receipt:
    """POST /api/spam-filter/report (sf:378-502), the Android app's receipt: the x-spam-token
    must equal SPAM_APP_TOKEN; the device (active, by device_id) gets last_seen_at; candidates
    are the `active` tests whose hyphen-free callback equals the sender's digits — one: it;
    several: the one whose message_hash equals the reported text's, else the newest with an
    unresolved row for this phone and carrier. Then every row of (test, device carrier, type
    'LMS' if reported so, else 'SMS') with received = false becomes received, received_at
    NOW(), result 'pass' — also one already judged blocked/failed/timeout. The test completes
    when no row is left with received false and result NULL."""
    if token != expected_token:
        raise WebRefusal("UNAUTHORIZED", "인증 실패")
    if not device_id or not sender:
        raise WebRefusal("MISSING_FIELDS", "필수 항목 누락")
    device = await pg.fetchrow(
        """UPDATE spam_filter_devices SET last_seen_at = NOW() WHERE device_id = $1
             AND is_active = true RETURNING id, carrier, phone""",
        device_id,
    )
    if device is None:
        raise WebRefusal("UNKNOWN_DEVICE", "등록되지 않은 디바이스")
    candidates = await pg.fetch(
        """SELECT id, message_hash FROM spam_filter_tests WHERE status = 'active'
             AND REPLACE(callback_number, '-', '') = $1 ORDER BY created_at DESC""",
        normalize_phone(sender),
    )
    if not candidates:
        return Receipt(False)
    test_id: uuid.UUID | None = None
    if len(candidates) == 1:
        test_id = candidates[0]["id"]
    else:
        digest = message_hash(content)
        if digest:
            test_id = next((c["id"] for c in candidates if c["message_hash"] == digest), None)
        if test_id is None:
            test_id = await pg.fetchval(
                """SELECT tr.test_id FROM spam_filter_test_results tr
                   JOIN spam_filter_tests t ON t.id = tr.test_id
                   WHERE tr.test_id = ANY($1::uuid[]) AND tr.phone = $2 AND tr.carrier = $3
                     AND tr.received = false AND tr.result IS NULL
                   ORDER BY t.created_at DESC LIMIT 1""",
                [c["id"] for c in candidates],
                device["phone"],
                device["carrier"],
            )
        if test_id is None:
            return Receipt(False)
    updated = await pg.fetch(
        """UPDATE spam_filter_test_results SET received = true, received_at = NOW(), result = 'pass'
           WHERE test_id = $1 AND carrier = $2 AND message_type = $3 AND received = false
           RETURNING id""",
        test_id,
        device["carrier"],
        "LMS" if message_type == "LMS" else "SMS",
    )
    left = await pg.fetchval(
        """SELECT COUNT(*) FROM spam_filter_test_results
           WHERE test_id = $1 AND received = false AND result IS NULL""",
        test_id,
    )
    if left == 0:
        await pg.execute(
            "UPDATE spam_filter_tests SET status = 'completed', completed_at = NOW() WHERE id = $1",
            test_id,
        )
    return Receipt(True, test_id, bool(updated))


# ---- the web's own set-up writes (what its admin screens do) --------------------------------
async def create_plan(
    pg: asyncpg.Connection,
    code: str,
    *,
    spam_filter_enabled: bool = True,
    auto_spam_test_enabled: bool = False,
) -> uuid.UUID:
    """POST /api/admin/plans (routes/admin.ts:936-939) plus the feature flags its update
    sets (STATUS.md:3849-3857, 2650-2651)."""
    plan_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO plans (plan_code, plan_name, max_customers, monthly_price,
               spam_filter_enabled, auto_spam_test_enabled)
           VALUES ($1, $1, 100000, 0, $2, $3) RETURNING id""",
        code,
        spam_filter_enabled,
        auto_spam_test_enabled,
    )
    return plan_id


async def create_company(
    pg: asyncpg.Connection,
    name: str,
    code: str,
    plan_id: uuid.UUID | None = None,
    *,
    billing_type: str = "postpaid",
    balance: Decimal = Decimal(0),
    cost_per_sms: Decimal | None = None,
    cost_per_lms: Decimal | None = None,
) -> uuid.UUID:
    """POST /api/companies (routes/companies.ts:1254-1268): name, company_code,
    company_name, plan_id; the billing columns as the admin's company edit sets them
    (admin.ts:426 and SCHEMA.md:224-225)."""
    company_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO companies (name, company_code, company_name, plan_id, data_input_method,
               billing_type, balance, cost_per_sms, cost_per_lms)
           VALUES ($1, $2, $1, $3, 'file', $4, $5, $6, $7) RETURNING id""",
        name,
        code,
        plan_id,
        billing_type,
        balance,
        cost_per_sms,
        cost_per_lms,
    )
    return company_id


async def create_user(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    login_id: str,
    *,
    user_type: str = "user",
    opt_out_080_number: str | None = None,
) -> uuid.UUID:
    """POST /api/admin/users (routes/admin.ts:86-89): status 'active', must_change_password."""
    user_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO users (company_id, login_id, password_hash, name, user_type, status,
               must_change_password, opt_out_080_number)
           VALUES ($1, $2, 'x', $2, $3, 'active', true, $4) RETURNING id""",
        company_id,
        login_id,
        user_type,
        opt_out_080_number,
    )
    return user_id


async def create_line_group(
    pg: asyncpg.Connection, name: str, group_type: str, tables: Sequence[str], sort_order: int = 0
) -> uuid.UUID:
    """POST /api/admin/line-groups (routes/admin.ts:2368-2392): names validated, active by
    the column default."""
    for table in tables:
        if not is_valid_sms_table(table):
            raise WebRefusal("BAD_TABLE", f"잘못된 테이블명: {table}")
    group_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO sms_line_groups (group_name, group_type, sms_tables, sort_order)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        name,
        group_type,
        list(tables),
        sort_order,
    )
    return group_id


async def assign_company_group(
    pg: asyncpg.Connection, company_id: uuid.UUID, group_id: uuid.UUID | None
) -> None:
    """The company edit's `line_group_id = COALESCE($29, line_group_id)` (admin.ts:426)."""
    await pg.execute(
        "UPDATE companies SET line_group_id = COALESCE($2, line_group_id), updated_at = NOW()"
        " WHERE id = $1",
        company_id,
        group_id,
    )


async def assign_user_group(
    pg: asyncpg.Connection, user_id: uuid.UUID, group_id: uuid.UUID | None
) -> None:
    """The user edit's `line_group_id = $8` (admin.ts:104-118): NULL clears it."""
    await pg.execute(
        "UPDATE users SET line_group_id = $2, updated_at = NOW() WHERE id = $1", user_id, group_id
    )


async def add_callback_number(
    pg: asyncpg.Connection,
    company_id: uuid.UUID,
    phone: str,
    *,
    is_default: bool = False,
    assignment_scope: str = "all",
) -> uuid.UUID:
    """POST /api/manage-callbacks (routes/manage-callbacks.ts:110-113); assignment_scope as
    the D87 screens set it."""
    callback_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO callback_numbers (company_id, phone, label, is_default, assignment_scope)
           VALUES ($1, $2, NULL, $3, $4) RETURNING id""",
        company_id,
        phone,
        is_default,
        assignment_scope,
    )
    return callback_id


async def assign_callback(
    pg: asyncpg.Connection, callback_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    """utils/sender-registration.ts:518-521."""
    await pg.execute(
        """INSERT INTO callback_number_assignments (callback_number_id, user_id, assigned_by)
           VALUES ($1, $2, NULL) ON CONFLICT (callback_number_id, user_id) DO NOTHING""",
        callback_id,
        user_id,
    )


async def add_sender_number(
    pg: asyncpg.Connection, company_id: uuid.UUID, phone: str, *, is_active: bool = True
) -> uuid.UUID:
    """A sender number as schema.sql:222-237 keeps it (unique per company)."""
    sender_id: uuid.UUID = await pg.fetchval(
        """INSERT INTO sender_numbers (company_id, phone_number, is_active) VALUES ($1, $2, $3)
           RETURNING id""",
        company_id,
        phone,
        is_active,
    )
    return sender_id
