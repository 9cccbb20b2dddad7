"""Both insert paths write identical agent rows, whatever the text holds."""

from __future__ import annotations

import uuid
from datetime import date

import aiomysql

from config.model import MySQLSection
from dispatch import agent_tables, handoff, infile
from dispatch.handoff import AgentRow

TEXTS = ["plain", "탭\t과 줄\n바꿈\r\n", "back\\slash \\N \\t", "(광고) 😀 null\0byte", ""]


async def test_load_data_and_insert_write_the_same_rows() -> None:
    pool = await infile.create_pool(MySQLSection(), 1)
    async with infile.guarded(pool) as conn:
        await _both_paths(conn)
    await agent_tables.close_pool(pool)


async def _both_paths(conn: aiomysql.Connection) -> None:
    campaign, run = str(uuid.uuid4()), str(uuid.uuid4())
    tables = ["SMSQ_SEND_98", "SMSQ_SEND_97"]
    try:
        await agent_tables.ensure_tables(conn, tables, date.today())
        rows = [
            AgentRow(
                f"0109000{i:04d}",
                "0212345678",
                text,
                "L",
                "" if i % 2 else "제목",
                "" if i % 3 else "a.jpg",
                "",
                "",
                campaign,
                "acme",
                run,
            )
            for i, text in enumerate(TEXTS)
        ]
        staged = handoff.stage(rows, as_data=True)  # as the dispatcher does: encode, then load
        assert staged.data is not None
        assert await handoff.load_rows(conn, "SMSQ_SEND_98", staged.data) == len(rows)
        assert await handoff.insert_rows(conn, "SMSQ_SEND_97", rows) == len(rows)
        written = {}
        for table in tables:
            async with conn.cursor() as cur:
                await cur.execute(
                    f"SELECT dest_no, msg_contents, title_str, msg_type, rsv1, status_code,"
                    f" app_etc1, app_etc2, sendreq_time IS NOT NULL, bill_id, file_name1,"
                    f" file_name2, file_name3 FROM `{table}`"
                    f" WHERE app_etc1 = %s AND bill_id = %s ORDER BY dest_no",
                    (campaign, run),
                )
                written[table] = await cur.fetchall()
        assert written["SMSQ_SEND_98"] == written["SMSQ_SEND_97"]
        assert [r[1] for r in written["SMSQ_SEND_98"]] == TEXTS
        assert all(r[4] == "1" and r[5] == 100 and r[8] for r in written["SMSQ_SEND_98"])
        assert [r[2] for r in written["SMSQ_SEND_98"]] == [
            "" if i % 2 else "제목" for i in range(len(TEXTS))
        ]
        assert [r[10:] for r in written["SMSQ_SEND_98"]] == [
            ("" if i % 3 else "a.jpg", "", "") for i in range(len(TEXTS))
        ]
        assert {(r[6], r[7], r[9]) for r in written["SMSQ_SEND_98"]} == {(campaign, "acme", run)}
    finally:
        async with conn.cursor() as cur:
            for table in tables:
                await cur.execute(f"DELETE FROM `{table}` WHERE app_etc1 = %s", (campaign,))
