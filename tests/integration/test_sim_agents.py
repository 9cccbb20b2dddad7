"""The QTmsg agent simulator and the carrier network, observed through the agent tables."""

from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import datetime

import pytest

from config.clock import KST
from simulators.harness import SimulatedNode, wait_for
from tests.integration.helpers import existing_tables, insert_rows, rows_by_tag

KT_PHONE, SKT_PHONE = "01090000002", "01090000001"


def tag() -> str:
    return uuid.uuid4().hex[:20]


def tables_of(number: int) -> list[str]:
    return existing_tables(f"SMSQ_SEND_{number}")


def finished(tag_: str, number: int, count: int = 1) -> list[dict[str, object]]:
    def done() -> list[dict[str, object]] | None:
        rows = rows_by_tag(tag_, tables_of(number))
        moved = [r for r in rows if r["rsv1"] == "5"]
        return moved if len(moved) == count else None

    return wait_for(done, 20, f"{count} row(s) tagged {tag_} in the log table")  # type: ignore[no-any-return]


def inbox(sim: SimulatedNode, target: str) -> list[dict[str, object]]:
    return json.loads(sim.sim_ctl("inbox", target, "--json").stdout)  # type: ignore[no-any-return]


def test_kt_row_reaches_the_handset_and_the_log_table(live_sim: SimulatedNode) -> None:
    t = tag()
    text = f"한줄로 테스트 {t}"
    insert_rows(
        "SMSQ_SEND_10",
        [{"dest_no": KT_PHONE, "call_back": "0212345678", "msg_contents": text, "app_etc1": t}],
    )
    (row,) = finished(t, 10)
    assert row["status_code"] == 6
    assert row["mob_company"] == "16"
    assert str(row["tbl"]).startswith("SMSQ_SEND_10_")
    # mobsend_time and repmsg_recvtm are UTC, msg_instm KST: nine hours apart.
    gap = (row["msg_instm"] - row["mobsend_time"]).total_seconds()  # type: ignore[operator]
    assert 8.9 * 3600 < gap < 9.1 * 3600
    wait_for(lambda: any(m["text"] == text for m in inbox(live_sim, "KT")), 10, "the KT inbox")


def test_blocked_keyword_reports_success_but_never_arrives(live_sim: SimulatedNode) -> None:
    live_sim.sim_ctl("rules", "KT", "--block-keyword", "대출")
    try:
        t, control = tag(), tag()
        blocked_text = f"저금리 대출 안내 {t}"
        insert_rows(
            "SMSQ_SEND_10",
            [
                {
                    "dest_no": KT_PHONE,
                    "call_back": "0212345678",
                    "msg_contents": blocked_text,
                    "app_etc1": t,
                },
                {
                    "dest_no": SKT_PHONE,
                    "call_back": "0212345678",
                    "msg_contents": blocked_text,
                    "app_etc1": control,
                },
            ],
        )
        (row,) = finished(t, 10)
        assert row["status_code"] == 6
        # SKT has no such rule: its copy arrives, which bounds how long KT's could take.
        wait_for(
            lambda: any(m["text"] == blocked_text for m in inbox(live_sim, "SKT")),
            10,
            "the SKT copy",
        )
        status = json.loads(live_sim.sim_ctl("status", "--json").stdout)
        decision = next(
            d
            for d in status["network"]["decisions"]
            if d["ref"] == f"{row['tbl'].rsplit('_', 1)[0]}#{row['seqno']}"
        )
        assert decision["blocked"] and decision["rule"] == "keyword:대출"
        time.sleep(1.0)  # KT's latency is at most 0.5 s here: anything on its way has landed
        assert not any(m["text"] == blocked_text for m in inbox(live_sim, "KT"))
    finally:
        live_sim.sim_ctl("rules", "KT", "--clear")


@pytest.mark.parametrize(
    ("row", "code"),
    [
        ({"call_back": "0299999999", "msg_contents": "unregistered sender"}, 9008),
        (
            {
                "call_back": "15886000",
                "msg_contents": "MMS without image",
                "msg_type": "M",
                "title_str": "제목",
            },
            9007,
        ),
        ({"call_back": "15886000", "msg_contents": "bad number", "dest_no": "0212"}, 9002),
    ],
)
def test_network_failure_codes(live_sim: SimulatedNode, row: dict[str, str], code: int) -> None:
    t = tag()
    insert_rows("SMSQ_SEND_1", [{"dest_no": "01055550000", **row, "app_etc1": t}])
    (result,) = finished(t, 1)
    assert result["status_code"] == code


def test_advertising_at_night_fails_9012(live_sim: SimulatedNode) -> None:
    live_sim.sim_ctl("clock", "set", datetime(2026, 11, 27, 22, 0, tzinfo=KST).isoformat())
    try:
        t, plain = tag(), tag()
        insert_rows(
            "SMSQ_SEND_2",
            [
                {
                    "dest_no": "01055550001",
                    "call_back": "15886000",
                    "msg_contents": "(광고) 한줄로 세일 무료거부 0801234567",
                    "app_etc1": t,
                },
                {
                    "dest_no": "01055550002",
                    "call_back": "15886000",
                    "msg_contents": "주문하신 상품이 발송되었습니다",
                    "app_etc1": plain,
                },
            ],
        )
        assert finished(t, 2)[0]["status_code"] == 9012
        assert finished(plain, 2)[0]["status_code"] in (6, 7, 8, 9)
    finally:
        live_sim.sim_ctl("clock", "reset")


def test_same_recipient_same_text_within_a_second_is_refused(live_sim: SimulatedNode) -> None:
    t = tag()
    row = {
        "dest_no": "01055550003",
        "call_back": "15886000",
        "msg_contents": f"dup {t}",
        "app_etc1": t,
    }
    insert_rows("SMSQ_SEND_3", [row, row])
    codes = sorted(int(r["status_code"]) for r in finished(t, 3, count=2))  # type: ignore[call-overload]
    assert 5004 in codes and len(codes) == 2


def test_lms_reaches_the_handset_as_an_mms_notification(live_sim: SimulatedNode) -> None:
    t = tag()
    subject = f"한줄로 공지 {t[:6]}"
    body = "가나다라마바사 " * 80
    insert_rows(
        "SMSQ_SEND_10",
        [
            {
                "dest_no": SKT_PHONE,
                "call_back": "15886000",
                "msg_contents": body,
                "msg_type": "L",
                "title_str": subject,
                "app_etc1": t,
            }
        ],
    )
    assert finished(t, 10)[0]["status_code"] == 1000
    message = wait_for(
        lambda: next((m for m in inbox(live_sim, "SKT") if m.get("subject") == subject), None),
        10,
        "the MMS notification",
    )
    assert message["kind"] == "mms-notification"
    assert message["sender"] == "+8215886000"
    assert int(message["size"]) >= len(body.encode())


def test_rate_limit_per_agent(live_sim: SimulatedNode) -> None:
    t = tag()
    start = time.monotonic()
    before = _agent(live_sim, 4)["picked"]
    insert_rows(
        "SMSQ_SEND_4",
        [
            {
                "dest_no": f"0105555{i:04d}",
                "call_back": "15886000",
                "msg_contents": f"rate {t} {i}",
                "app_etc1": t,
            }
            for i in range(400)
        ],
    )
    time.sleep(1.5)
    picked = _agent(live_sim, 4)["picked"] - before
    elapsed = time.monotonic() - start
    # 100 rows/s configured, with a burst of at most half a second's worth.
    assert 0 < picked <= 100 * elapsed + 50
    finished(t, 4, count=400)


def _agent(sim: SimulatedNode, number: int) -> dict[str, int]:
    status = json.loads(sim.sim_ctl("status", "--json").stdout)
    return next(a for a in status["agents"] if a["number"] == number)  # type: ignore[no-any-return]


def _port_accepts(sim: SimulatedNode, number: int) -> bool:
    admin = next(a for a in sim.status_config()["agents"] if a["number"] == number)["admin"]
    host, _, port = admin.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("fault", "port_open"), [("stop", False), ("hang", True), ("unbind", True)]
)
def test_agent_faults_leave_rows_waiting(
    live_sim: SimulatedNode, fault: str, port_open: bool
) -> None:
    live_sim.sim_ctl("agent", "5", fault)
    try:
        assert _port_accepts(live_sim, 5) is port_open
        t = tag()
        insert_rows(
            "SMSQ_SEND_5",
            [
                {
                    "dest_no": "01055551111",
                    "call_back": "15886000",
                    "msg_contents": f"{fault} {t}",
                    "app_etc1": t,
                }
            ],
        )
        time.sleep(1.0)  # many poll intervals: a working agent would have picked it
        (row,) = rows_by_tag(t, tables_of(5))
        assert row["rsv1"] == "1" and row["status_code"] == 100
    finally:
        live_sim.sim_ctl("agent", "5", "ok")
    assert _port_accepts(live_sim, 5)
    finished(t, 5)


def test_slow_agent_sends_at_a_tenth_of_its_rate(live_sim: SimulatedNode) -> None:
    live_sim.sim_ctl("agent", "6", "slow")
    try:
        t = tag()
        before = _agent(live_sim, 6)["picked"]
        start = time.monotonic()
        insert_rows(
            "SMSQ_SEND_6",
            [
                {
                    "dest_no": f"0105556{i:04d}",
                    "call_back": "15886000",
                    "msg_contents": f"slow {t} {i}",
                    "app_etc1": t,
                }
                for i in range(100)
            ],
        )
        time.sleep(1.5)
        picked = _agent(live_sim, 6)["picked"] - before
        assert 0 < picked <= 10 * (time.monotonic() - start) + 10
    finally:
        live_sim.sim_ctl("agent", "6", "ok")
    finished(t, 6, count=100)
