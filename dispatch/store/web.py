"""The web service's ``campaigns`` and ``campaign_runs`` rows of the runs the node sends.

The web's readers (results, billing, the scheduled list, the training sync) read only
those tables, with the web's own values (docs/webservice-contract.md §2-§4). A run of the
node is linked to them by ``hanjullo.runs.campaign_id`` (campaigns.id) and its own id,
which is the ``campaign_runs`` id where one exists. `mirror` writes what the web would:

- status: only the web's words. A run waiting for a line group, held for the night or
  paused reads ``sending``; one whose time has not come ``scheduled``; a rejected one
  ``failed``; the node's finer state stays in ``hanjullo.runs``;
- ``sent_count`` = rows handed to the agents (``inserted_count``), ``success_count`` and
  ``fail_count`` by the web's code sets (6/1000/1800/7830/7831 succeed, 100/104 wait,
  everything else fails): what the web's own result query counts for the campaign;
- ``sent_at`` once, when the first row is handed over (UTC wall clock in the
  ``timestamp`` column of campaign_runs, an absolute time in campaigns');
- a campaign the web cancelled is never written again.

Each ``campaign_runs`` row carries its own run's counts; the ``campaigns`` row the sum
over every run of the campaign on this node (the web's result query counts every agent row
whose ``app_etc1`` is the campaign id, so the two agree). Owns no engine state.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from config.clock import KST
from dispatch.guards import RunRejected
from dispatch.store.runs import Conn

# hanjullo.runs.status -> the web's word, in SQL (docs/webservice-contract.md §2).
_WEB_STATUS = """CASE r.status
        WHEN 'completed' THEN 'completed'
        WHEN 'cancelled' THEN 'cancelled'
        WHEN 'rejected' THEN 'failed'
        WHEN 'queued' THEN CASE WHEN r.scheduled_at > now() THEN 'scheduled' ELSE 'sending' END
        ELSE 'sending' END"""

MIRROR_SQL = f"""
WITH run AS (
    SELECT s.*,
           -- The web's cancel of a campaign nothing was sent of: every target failed.
           CASE WHEN s.web_status = 'cancelled' AND s.inserted_count = 0
                THEN s.target_count ELSE s.fail_count END AS web_fail
    FROM (SELECT r.id, r.campaign_id, r.target_count, r.inserted_count, r.success_count,
                 r.fail_count, {_WEB_STATUS} AS web_status
          FROM hanjullo.runs r WHERE r.id = $1 AND r.campaign_id IS NOT NULL) s
), run_row AS (
    UPDATE campaign_runs c SET status = r.web_status, sent_count = r.inserted_count,
        success_count = r.success_count, fail_count = r.web_fail,
        sent_at = CASE WHEN c.sent_at IS NULL AND r.inserted_count > 0
                       THEN now() AT TIME ZONE 'UTC' ELSE c.sent_at END
    FROM run r
    WHERE c.id = r.id AND c.status IS DISTINCT FROM 'cancelled'
    AND (c.status, c.sent_count, c.success_count, c.fail_count, c.sent_at IS NULL)
        IS DISTINCT FROM (r.web_status, r.inserted_count, r.success_count, r.web_fail,
                          r.inserted_count = 0 AND c.sent_at IS NULL)
    RETURNING c.id
), totals AS (
    SELECT sum(t.inserted_count)::int AS sent, sum(t.success_count)::int AS ok,
           sum(t.fail_count)::int AS failed, sum(t.target_count)::int AS target
    FROM hanjullo.runs t WHERE t.campaign_id = (SELECT campaign_id FROM run)
), newest AS (  -- the campaign reads as its newest run
    SELECT {_WEB_STATUS} AS web_status
    FROM hanjullo.runs r WHERE r.campaign_id = (SELECT campaign_id FROM run)
    ORDER BY r.run_number DESC, r.queued_at DESC LIMIT 1
)
UPDATE campaigns k SET status = n.web_status, sent_count = t.sent, success_count = t.ok,
    fail_count = CASE WHEN n.web_status = 'cancelled' AND t.sent = 0
                      THEN t.target ELSE t.failed END,
    sent_at = CASE WHEN k.sent_at IS NULL AND t.sent > 0 THEN now() ELSE k.sent_at END,
    cancelled_at = CASE WHEN n.web_status = 'cancelled' AND k.cancelled_at IS NULL
                        THEN now() AT TIME ZONE 'UTC' ELSE k.cancelled_at END,
    cancelled_by_type = CASE WHEN n.web_status = 'cancelled' AND k.cancelled_at IS NULL
                             THEN 'node' ELSE k.cancelled_by_type END
FROM run, totals t, newest n
WHERE k.id = run.campaign_id AND k.status IS DISTINCT FROM 'cancelled'
    AND (k.status, k.sent_count, k.success_count, k.fail_count)
        IS DISTINCT FROM (n.web_status, t.sent, t.ok,
                          CASE WHEN n.web_status = 'cancelled' AND t.sent = 0
                               THEN t.target ELSE t.failed END)
"""


async def mirror(conn: Conn, run_id: uuid.UUID) -> None:
    """Bring the run's ``campaign_runs`` row and its campaign's row to what the web would
    read for it now (nothing for a run linked to no campaign). Also restores the node's
    values after the web's own result sync wrote its guess over them."""
    await conn.execute(MIRROR_SQL, run_id)


async def cancelled_by_web(conn: Conn, node_id: str, statuses: tuple[str, ...]) -> list[uuid.UUID]:
    """This node's runs in `statuses` whose campaign the web service cancelled (its cancel
    sets ``campaigns.status = 'cancelled'`` and deletes the waiting rows it can see).

    First, a queued run follows its campaign's ``scheduled_at`` (the web's reschedule,
    routes/campaigns.ts:2123): a time moved before the run starts moves the run; and one
    whose time has come has its web rows read ``sending``."""
    await conn.execute(
        """UPDATE hanjullo.runs r SET scheduled_at = k.scheduled_at, updated_at = now()
           FROM campaigns k
           WHERE k.id = r.campaign_id AND r.node_id = $1 AND r.status = 'queued'
           AND r.scheduled_at IS DISTINCT FROM k.scheduled_at""",
        node_id,
    )
    # A run whose time has come reads `sending` even while it waits for a line group (the
    # web's scheduled list would otherwise complete a past-due campaign without rows).
    for due in await conn.fetch(
        """SELECT r.id FROM hanjullo.runs r JOIN campaigns k ON k.id = r.campaign_id
           WHERE r.node_id = $1 AND r.status = 'queued' AND r.scheduled_at <= now()
           AND k.status = 'scheduled'""",
        node_id,
    ):
        await mirror(conn, due["id"])
    rows = await conn.fetch(
        """SELECT r.id FROM hanjullo.runs r JOIN campaigns k ON k.id = r.campaign_id
           WHERE r.node_id = $1 AND r.status = ANY($2::text[]) AND k.status = 'cancelled'""",
        node_id,
        list(statuses),
    )
    return [row["id"] for row in rows]


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


async def callback_problem(conn: Conn, company_id: str, callback: str) -> str | None:
    """Why a run's sender number may not be used, or None. The web's rule
    (routes/campaigns.ts:612-638, 1337-1362): the digits must equal an *active*
    ``sender_numbers`` row's or *any* ``callback_numbers`` row's of the company. A run of a
    company the web does not know is refused as well: no number is registered for it."""
    try:
        company = uuid.UUID(company_id)
    except ValueError:
        company = None
    known = company is not None and await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM companies WHERE id = $1)", company
    )
    if not known:
        return (
            f"company {company_id!r} is no companies row of the web service, so no sender"
            " number is registered for it; fix: hand the run over with its companies.id"
        )
    digits = _digits(callback)
    registered = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM sender_numbers WHERE company_id = $1 AND is_active = true
                          AND REPLACE(phone_number, '-', '') = $2)
               OR EXISTS (SELECT 1 FROM callback_numbers WHERE company_id = $1
                          AND REPLACE(phone, '-', '') = $2)""",
        company,
        digits,
    )
    if registered:
        return None
    return (
        f"callback {digits} is registered for the company in neither its active sender_numbers"
        " nor its callback_numbers; fix: register the number in the web service"
    )


async def company_of(conn: Conn, value: str, callback: str | None, *, simulated: bool) -> uuid.UUID:
    """The ``companies`` row `value` names: its id, or (a simulated node) its code. On a
    `simulated` node an unknown value becomes a company of that name and code, with no
    line group, and `callback` is registered for it, so demos and tests need no set-up;
    elsewhere an unknown company is refused, by name."""
    company, made = await company_made(conn, value, create=simulated)
    if made and callback:
        await register_callback(conn, company, callback)
    return company


async def company_made(conn: Conn, value: str, *, create: bool) -> tuple[uuid.UUID, bool]:
    """The company `value` names (made with `create` when unknown), and whether it was
    made now."""
    try:
        found = await conn.fetchval("SELECT id FROM companies WHERE id = $1", uuid.UUID(value))
    except ValueError:
        found = await conn.fetchval("SELECT id FROM companies WHERE company_code = $1", value)
    if found is not None:
        return uuid.UUID(str(found)), False
    if not create:
        raise RunRejected(
            f"unknown company {value!r}: no companies row has that id; fix: pass the web"
            " service's companies.id"
        )
    if len(value) > 20:  # companies.company_code is varchar(20)
        raise RunRejected(
            f"unknown company {value!r}: a simulated node makes a new company under that name"
            " as its company_code, at most 20 characters; fix: a shorter name"
        )
    # As routes/companies.ts:1255 creates one (name, company_code and company_name).
    made = await conn.fetchval(
        """INSERT INTO companies (name, company_code, company_name) VALUES ($1, $1, $1)
           ON CONFLICT (company_code) DO UPDATE SET name = companies.name RETURNING id""",
        value,
    )
    return uuid.UUID(str(made)), True


async def register_callback(conn: Conn, company: uuid.UUID, callback: str) -> None:
    """A simulated node's `--callback`: registered for the company as the web's callback
    management does (utils/manage-callbacks.ts:110), unless it already is."""
    await conn.execute(
        """INSERT INTO callback_numbers (company_id, phone, label, is_default)
           SELECT $1, $2, 'hanjulloctl send', false
           WHERE NOT EXISTS (SELECT 1 FROM callback_numbers
                             WHERE company_id = $1 AND REPLACE(phone, '-', '') = $3)""",
        company,
        callback,
        _digits(callback),
    )


async def user_of(conn: Conn, value: str | None) -> uuid.UUID | None:
    """The users.id `value` is, if it is one (created_by of the campaign)."""
    if not value:
        return None
    try:
        user = uuid.UUID(value)
    except ValueError:
        return None
    found = await conn.fetchval("SELECT id FROM users WHERE id = $1", user)
    return None if found is None else user


async def create_direct_campaign(
    conn: Conn,
    run_id: uuid.UUID,
    *,
    company: uuid.UUID,
    user: uuid.UUID | None,
    message_type: str,
    subject: str | None,
    callback: str,
    is_ad: bool,
    scheduled_at: datetime | None,
    campaign_name: str,
) -> uuid.UUID:
    """What the web's direct send writes before its rows (routes/campaigns.ts:1466-1498,
    1786): a ``campaigns`` row (send_type 'direct', status scheduled or sending, created_by
    the sender) and its ``campaign_runs`` row, whose id is the node's run id. The target
    counts and the message are set once the recipients are stored (`set_targets`).
    Returns the campaign id."""
    status = "scheduled" if scheduled_at is not None else "sending"
    campaign: uuid.UUID = await conn.fetchval(
        """INSERT INTO campaigns (company_id, campaign_name, message_type, subject,
               message_subject, callback_number, target_count, send_type, status, scheduled_at,
               created_by, send_channel, kakao_targeting, kakao_resend_type, is_ad)
           VALUES ($1, $2, $3, $4, $4, $5, 0, 'direct', $6, $7, $8, 'sms', 'I', 'SM', $9)
           RETURNING id""",
        company,
        campaign_name,
        message_type,
        subject,
        callback,
        status,
        scheduled_at,
        user,
        is_ad,
    )
    await conn.execute(
        """INSERT INTO campaign_runs (id, campaign_id, run_number, target_count, sent_count,
               success_count, fail_count, status, created_at)
           VALUES ($1, $2, 1, 0, 0, 0, 0, $3, now() AT TIME ZONE 'UTC')""",
        run_id,
        campaign,
        status,
    )
    return campaign


async def set_targets(conn: Conn, run_id: uuid.UUID, campaign: uuid.UUID) -> None:
    """Once the recipients are stored: their count as both rows' target_count, and the
    first recipient's text as the campaign's message (the browser's message)."""
    await conn.execute(
        """UPDATE campaign_runs c SET target_count = r.target_count
           FROM hanjullo.runs r WHERE r.id = $1 AND c.id = r.id""",
        run_id,
    )
    await conn.execute(
        """UPDATE campaigns k SET target_count = r.target_count,
               message_content = r.message_content, message_template = r.message_content
           FROM hanjullo.runs r WHERE r.id = $1 AND k.id = $2""",
        run_id,
        campaign,
    )


def direct_campaign_name(now: datetime) -> str:
    """`직접발송 ` and the moment as JavaScript's ``toLocaleString('ko-KR')`` writes it in
    KST (routes/campaigns.ts:1475): ``2026. 12. 3. 오후 3:07:09``."""
    kst = now.astimezone(KST)
    half = "오전" if kst.hour < 12 else "오후"
    hour = kst.hour % 12 or 12
    return (
        f"직접발송 {kst.year}. {kst.month}. {kst.day}. {half} {hour}:{kst.minute:02d}:"
        f"{kst.second:02d}"
    )


# ---- line groups ---------------------------------------------------------------------------
# The web's table-name rule (utils/sms-table-validator.ts:6, 59-65): names are trimmed, then
# must match; invalid ones are dropped.
_WEB_TABLE_NAME = re.compile(r"SMSQ_SEND(_\d{1,3})?(_\d{4,8})?")


@dataclass(frozen=True, slots=True)
class WebGroup:
    """One of the web's ``sms_line_groups`` rows: its name and its valid table names."""

    name: str
    group_type: str
    tables: tuple[str, ...]


def _valid_tables(raw: list[str] | None) -> tuple[str, ...]:
    names = (t.strip() for t in raw or [])
    return tuple(t for t in names if _WEB_TABLE_NAME.fullmatch(t))


async def assigned_groups(conn: Conn) -> dict[tuple[str, str], WebGroup]:
    """The web's bulk-group assignments, as its getCompanySmsTables reads them (sq:47-108):
    ('user', users.id) and ('company', companies.id) → the active bulk group. A group left
    with no valid table name assigns nothing (the web then falls back)."""
    rows = await conn.fetch(
        """SELECT 'user' AS kind, u.id::text AS subject, g.group_name, g.group_type, g.sms_tables
           FROM users u JOIN sms_line_groups g ON g.id = u.line_group_id
           WHERE g.is_active = true AND g.group_type = 'bulk'
           UNION ALL
           SELECT 'company', c.id::text, g.group_name, g.group_type, g.sms_tables
           FROM companies c JOIN sms_line_groups g ON g.id = c.line_group_id
           WHERE g.is_active = true AND g.group_type = 'bulk'"""
    )
    out: dict[tuple[str, str], WebGroup] = {}
    for r in rows:
        tables = _valid_tables(r["sms_tables"])
        if tables:
            out[(r["kind"], r["subject"])] = WebGroup(r["group_name"] or "", "bulk", tables)
    return out


async def line_groups(conn: Conn) -> list[WebGroup]:
    """Every active group the web service has, in its admin order."""
    rows = await conn.fetch(
        """SELECT group_name, group_type, sms_tables FROM sms_line_groups
           WHERE is_active = true ORDER BY sort_order, created_at, group_name"""
    )
    return [
        WebGroup(r["group_name"] or "", r["group_type"] or "", _valid_tables(r["sms_tables"]))
        for r in rows
    ]


async def seed_line_groups(conn: Conn, groups: list[WebGroup]) -> list[str]:
    """A standalone node's configured groups as the web's admin creates them (its four
    columns, admin.ts:2382-2385), each unless a group of that name exists. Their names."""
    created: list[str] = []
    for order, group in enumerate(groups):
        made = await conn.fetchval(
            """INSERT INTO sms_line_groups (group_name, group_type, sms_tables, sort_order)
               SELECT $1::varchar, $2::varchar, $3::text[], $4::integer
               WHERE NOT EXISTS (SELECT 1 FROM sms_line_groups WHERE group_name = $1::varchar)
               RETURNING id""",
            group.name,
            group.group_type,
            list(group.tables),
            order,
        )
        if made is not None:
            created.append(group.name)
    return created
