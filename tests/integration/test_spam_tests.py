"""Spam-filter tests against the simulators: verdicts, device errors, restarts, canaries."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.names import message_hash
from drivers import pdu
from simulators.harness import SimulatedNode, wait_for
from tests import services
from tests.config_edits import overrides
from tests.integration.conftest import FAST_NETWORK
from tests.integration.helpers import (
    kst_next_month_first,
    month_of,
    mysql,
    rows_by_tag,
    set_node_clock,
)
from tests.integration.helpers import pg_fetch as fetch

CALLBACK = "0212345678"


FAST_SPAM = {
    "spam_tests": {
        "grace_initial_s": 4.0,
        "grace_min_s": 1.0,
        "timeout_s": 20.0,
        "poll_interval_s": 0.2,
    }
}
fast_spam = overrides(FAST_NETWORK, FAST_SPAM)


def with_grace(initial_s: float) -> Callable[[str], str]:
    return overrides(fast_spam, {"spam_tests": {"grace_initial_s": initial_s}})


def start(directory: Path, overrides: Any = fast_spam, phones: int = 1) -> SimulatedNode:
    node = SimulatedNode(directory, phones_per_carrier=phones, overrides=overrides)
    node.db_init()
    node.start_sim()
    node.start_daemon()
    node.wait_components(
        lambda states: (
            all(v == "running" for k, v in states.items() if k.startswith("modem:"))
            and states.get("spam-tests") == "running"
        ),
        30,
        "phones ready",
    )
    return node


@pytest.fixture
def node(node_dir: Path) -> Iterator[SimulatedNode]:
    sim = start(node_dir)
    try:
        yield sim
    finally:
        sim.close()


def spam_test(node: SimulatedNode, *args: str, wait: bool = True) -> dict[str, Any]:
    argv = ["spam-test", "--callback", CALLBACK, *args, "--json"]
    if wait:
        argv += ["--wait", "--timeout", "90"]
    out = node.ctl(*argv, timeout=120)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {c: v["verdict"] for c, v in report["carriers"].items()}


def show(node: SimulatedNode, test_id: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(node.ctl("spam-test", "show", test_id, "--json").stdout)
    return report


def completed(node: SimulatedNode, test_id: str, timeout_s: float = 60) -> dict[str, Any]:
    report: dict[str, Any] = wait_for(
        lambda: (r := show(node, test_id))["status"] == "completed" and r,
        timeout_s,
        f"spam test {test_id} to complete",
        interval_s=0.25,
    )
    return report


def results(test_id: str) -> dict[str, dict[str, Any]]:
    rows = fetch(
        """SELECT r.carrier, r.result, r.status_code, r.decided_at, r.received_at,
                  r.late, r.detail, t.started_at, t.completed_at
           FROM hanjullo.spam_test_results r JOIN hanjullo.spam_tests t ON t.id = r.test_id
           WHERE r.test_id = $1::uuid""",
        test_id,
    )
    keys = (
        "result",
        "status_code",
        "decided_at",
        "received_at",
        "late",
        "detail",
        "started_at",
        "completed_at",
    )
    return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}


def agent_rows(test_id: str) -> int:
    """Rows of a test in the test agent's live and log tables, counted in one statement."""
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_10%'")
            tables = [r[0] for r in cur.fetchall()]
            union = " UNION ALL ".join(
                f"SELECT seqno FROM `{t}` WHERE app_etc1 = %s" for t in tables
            )
            cur.execute(f"SELECT COUNT(*) FROM ({union}) AS a", [test_id] * len(tables))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def handset_copies(test_id: str) -> dict[str, int]:
    """Messages of a test each phone's modem received (from the receipts recorded)."""
    rows = fetch(
        "SELECT modem, count(*) FROM hanjullo.modem_receipts"
        " WHERE test_id = $1::uuid GROUP BY modem",
        test_id,
    )
    return {r[0]: int(r[1]) for r in rows}


def test_a_word_kt_blocks_is_blocked_on_kt_only(node: SimulatedNode) -> None:
    node.sim_ctl("rules", "KT", "--block-keyword", "무료")
    run_id = str(uuid.uuid4())
    # The web's training logger inserts the run's row when it queues the send; the node
    # only ever updates it, under the logger's key (32 hex characters of the HMAC).
    secret = node.status_config()["dispatch"]["training_secret"].encode()
    reference = hmac.new(secret, run_id.encode(), hashlib.sha256).hexdigest()[:32]
    fetch("INSERT INTO ai_training_logs (source_ref, message_type) VALUES ($1, 'SMS')", reference)
    report = spam_test(
        node, "--message", "한줄로 무료 체험 안내", "--company", "acme", "--run", run_id
    )
    assert verdicts(report) == {"SKT": "pass", "KT": "blocked", "LGU": "pass"}
    assert report["overall"] == "blocked"
    # The run the test belongs to gets the blocked count, under its untraceable reference.
    blocked = fetch("SELECT spam_blocked FROM ai_training_logs WHERE source_ref = $1", reference)
    assert blocked == [(1,)]
    assert report["carriers"]["KT"]["status_code"] == 6
    assert report["carriers"]["SKT"]["receipt_delay_s"] is not None
    assert report["carriers"]["KT"]["receipt_delay_s"] is None
    # The same verdicts in the web service's table and in the status.
    rows = results(report["test_id"])
    assert {c: r["result"] for c, r in rows.items()} == verdicts(report)
    recent = node.status()["spam_tests"]["recent"]
    assert recent[0]["test_id"] == report["test_id"] and recent[0]["overall"] == "blocked"
    # The human form: one line per carrier and the overall verdict; exit 0.
    text = node.ctl("spam-test", "show", report["test_id"]).stdout
    assert "KT   blocked" in text and "overall blocked" in text


def test_an_unplugged_modem_is_a_device_error_never_blocked(node: SimulatedNode) -> None:
    node.sim_ctl("rules", "KT", "--block-keyword", "무료")
    node.sim_ctl("network", "LGU", "--latency", "3", "3.5")
    queued = spam_test(node, "--message", "무료 상담 예약", wait=False)
    node.sim_ctl("modem", "LGU", "unplug")
    report = completed(node, queued["test_id"])
    assert verdicts(report) == {"SKT": "pass", "KT": "blocked", "LGU": "device_error"}
    assert report["overall"] == "blocked"
    # The message the network held reaches the phone after the replug: a late receipt,
    # recorded against the test, turns LGU into a pass (as the web's receipt route would),
    # marked late with what it had been judged; KT still blocks.
    node.sim_ctl("modem", "LGU", "replug")
    wait_for(lambda: results(queued["test_id"])["LGU"]["late"], 30, "the late LGU receipt")
    assert results(queued["test_id"])["LGU"]["result"] == "pass"
    lgu = show(node, queued["test_id"])["carriers"]["LGU"]
    assert lgu["late"] is True and lgu["late_from"] == "device_error"
    assert show(node, queued["test_id"])["overall"] == "blocked"

    # Unplugged before the test starts: device_error at once, nothing sent to it.
    node.sim_ctl("modem", "LGU", "unplug")
    wait_for(
        lambda: {m["name"]: m["state"] for m in node.status()["modems"]}["LGU"] != "ready",
        20,
        "LGU not ready",
    )
    report = spam_test(node, "--message", "가을 신상품 안내")
    assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "device_error"}
    rows = results(report["test_id"])
    assert rows["LGU"]["decided_at"] <= rows["LGU"]["started_at"]  # decided as it started
    assert "LGU" in rows["LGU"]["detail"]
    assert agent_rows(report["test_id"]) == 2


def test_a_failed_delete_and_a_nul_text_never_make_the_next_test_blocked(
    node: SimulatedNode,
) -> None:
    """Issue 13, acceptance 2: KT's modem fails one AT+CMGD, SKT's receives a UCS2 text
    containing U+0000, both before a test. The test ends pass (device_error on a phone
    still recovering), never blocked; the phones are ready again afterwards."""
    stranger = f"0299{uuid.uuid4().int % 10**6:06d}"
    node.sim_ctl("modem", "KT", "cmgd-fail-once")
    node.sim_ctl("deliver", "KT", "--from", stranger, "--text", "지우기 실패 메시지")
    node.sim_ctl("deliver", "SKT", "--from", stranger, "--escapes", "--text", "널\\u0000문자")
    report = spam_test(node, "--message", "정직한 판정 확인")
    assert "blocked" not in verdicts(report).values(), report
    assert verdicts(report)["SKT"] == "pass" and verdicts(report)["LGU"] == "pass"
    assert verdicts(report)["KT"] in ("pass", "device_error")
    stored = fetch(
        "SELECT carrier, text FROM hanjullo.modem_receipts WHERE sender = $1 ORDER BY carrier",
        stranger,
    )
    assert [tuple(r) for r in stored] == [("KT", "지우기 실패 메시지"), ("SKT", "널\\0문자")]
    wait_for(
        lambda: all(m["state"] == "ready" for m in node.status()["modems"]),
        20,
        "every phone ready again",
    )


def test_an_unknown_sender_fails_everywhere_with_9008(node: SimulatedNode) -> None:
    out = node.ctl(
        "spam-test",
        "--callback",
        "0299998888",
        "--message",
        "안녕하세요",
        "--wait",
        "--json",
        timeout=120,
    )
    report = json.loads(out.stdout)
    assert verdicts(report) == {"SKT": "failed", "KT": "failed", "LGU": "failed"}
    assert {c["status_code"] for c in report["carriers"].values()} == {9008}
    assert report["overall"] == "failed"


def test_an_lms_passes_through_mms_notifications(node: SimulatedNode) -> None:
    body = "한" * 300  # 600 bytes in EUC-KR
    report = spam_test(node, "--lms", "--subject", "가을 정기 세일", "--message", body)
    assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
    assert report["message_type"] == "LMS"
    kinds = fetch(
        "SELECT DISTINCT kind FROM hanjullo.modem_receipts WHERE test_id = $1::uuid",
        report["test_id"],
    )
    assert kinds == [("mms-notification",)]


def test_a_killed_daemon_resumes_the_test_without_sending_again(node: SimulatedNode) -> None:
    node.sim_ctl("rules", "KT", "--block-keyword", "무료")
    node.sim_ctl("network", "SKT", "--latency", "2", "2.5")
    queued = spam_test(node, "--message", "무료 시식회 초대", wait=False)
    test_id = queued["test_id"]
    wait_for(lambda: agent_rows(test_id) == 3, 20, "the test's rows in the agent table")
    node.stop_daemon(signal.SIGKILL)
    node.start_daemon()
    report = completed(node, test_id)
    assert verdicts(report) == {"SKT": "pass", "KT": "blocked", "LGU": "pass"}
    assert agent_rows(test_id) == 3
    assert handset_copies(test_id) == {"SKT": 1, "LGU": 1}
    decisions = [
        d
        for d in json.loads(node.sim_ctl("status", "--json").stdout)["network"]["decisions"]
        if d["ref"].startswith("SMSQ_SEND_10")
    ]
    assert len([d for d in decisions if d["carrier"] == "KT" and d["blocked"]]) == 1


def test_queued_tests_complete_at_their_last_receipt(node_dir: Path) -> None:
    node = start(
        node_dir,
        overrides=with_grace(25.0),
    )
    try:
        for carrier, low, high in (
            ("SKT", "1.8", "2.2"),
            ("KT", "12.5", "13.5"),
            ("LGU", "3.8", "4.2"),
        ):
            node.sim_ctl("network", carrier, "--latency", low, high)
        ids = [
            spam_test(node, "--message", f"정기 점검 안내 {i}", "--company", f"co{i}", wait=False)[
                "test_id"
            ]
            for i in range(3)
        ]
        for test_id in ids:
            report = completed(node, test_id, 90)
            assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
            rows = results(test_id)
            last_receipt = max(r["received_at"] for r in rows.values())
            # Done at the last receipt: nobody waited out the 25 s grace.
            assert (rows["KT"]["completed_at"] - last_receipt).total_seconds() < 2.0
            assert 11.0 < report["carriers"]["KT"]["receipt_delay_s"] < 16.0
    finally:
        node.close()


def test_a_missed_canary_flags_the_phone(node_dir: Path) -> None:
    canaries = overrides(
        fast_spam, {"spam_tests": {"canary_interval_s": 2.0, "canary_callback": "0212345678"}}
    )

    node = start(node_dir, overrides=canaries)
    try:
        node.sim_ctl("rules", "KT", "--block-keyword", "canary")

        def phone(name: str) -> dict[str, Any]:
            phones = node.status()["spam_tests"]["phones"]
            return next(p for p in phones if p["modem"] == name)

        wait_for(lambda: phone("KT")["flagged"], 60, "the KT phone flagged")
        assert phone("KT")["last_canary"]["verdict"] == "blocked"
        assert not phone("SKT")["flagged"]
        report = spam_test(node, "--message", "주말 특가 안내")
        assert verdicts(report) == {"SKT": "pass", "KT": "device_error", "LGU": "pass"}
        assert "canary" in report["carriers"]["KT"]["detail"]
        # Once it passes a canary again, its verdicts count again.
        node.sim_ctl("rules", "KT", "--clear")
        wait_for(lambda: not phone("KT")["flagged"], 60, "the KT phone unflagged")
        report = spam_test(node, "--message", "주말 특가 안내 2")
        assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
    finally:
        node.close()


def write_crash_window(node: SimulatedNode, text: str) -> str:
    """An active test whose SKT row reached the agent table (MySQL committed) while the
    daemon that wrote it died before recording it in PostgreSQL; returns the test id."""
    config = node.status_config()
    test_id = str(
        fetch(
            """INSERT INTO hanjullo.spam_tests (node_id, callback_number, message_content_sms,
                   status, started_at) VALUES ($1, $2, $3, 'active', now()) RETURNING id""",
            config["node"]["id"],
            CALLBACK,
            text,
        )[0][0]
    )
    phones = {m["carrier"]: m["phone"] for m in config["modems"]}
    for carrier, phone in phones.items():
        fetch(
            """INSERT INTO hanjullo.spam_test_results (test_id, carrier, message_type, phone,
                   modem, sms_table, message_hash)
               VALUES ($1::uuid, $2, 'SMS', $3, $2, 'SMSQ_SEND_10', $4)""",
            test_id,
            carrier,
            phone,
            message_hash(text),
        )
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO SMSQ_SEND_10 (dest_no, call_back, msg_contents, msg_type,"
                " sendreq_time, app_etc1) VALUES (%s, %s, %s, 'S', NOW(), %s)",
                (phones["SKT"], CALLBACK, text, test_id),
            )
    finally:
        conn.close()
    return test_id


def test_a_row_written_just_before_a_crash_is_adopted_not_sent_again(node_dir: Path) -> None:
    """The daemon died after the MySQL commit of a test's rows but before it recorded
    them: the next daemon finds the row in the agent table instead of sending again."""
    node = SimulatedNode(node_dir, overrides=fast_spam)
    try:
        node.db_init()
        node.start_sim()
        test_id = write_crash_window(node, "재시작 확인 메시지")
        node.start_daemon()
        report = completed(node, test_id)
        assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
        assert agent_rows(test_id) == 3
        assert handset_copies(test_id) == {"SKT": 1, "KT": 1, "LGU": 1}
    finally:
        node.close()


def test_a_row_moved_in_the_first_minute_of_a_month_is_found_after_a_restart(
    node_dir: Path,
) -> None:
    """At 00:00:30 KST on the 1st (still the last day of the previous month in UTC) the
    agent moves the test's row into the new month's log table; the restarted daemon finds
    it there and does not send it again."""
    node = SimulatedNode(node_dir, overrides=fast_spam)
    try:
        node.db_init()
        node.start_sim()
        first = kst_next_month_first(0, 0, 30)
        set_node_clock(node, first)
        test_id = write_crash_window(node, "월초 재시작 확인")
        log_table = f"SMSQ_SEND_10_{month_of(first)}"
        wait_for(
            lambda: rows_by_tag(test_id, [log_table]),
            20,
            f"the agent to move the row into {log_table}",
        )
        node.start_daemon()
        report = completed(node, test_id)
        assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
        assert agent_rows(test_id) == 3
        assert handset_copies(test_id) == {"SKT": 1, "KT": 1, "LGU": 1}
    finally:
        node.sim_ctl("clock", "reset", check=False)
        node.close()


def test_cancel_pulls_back_what_no_agent_took_and_frees_the_phones(node: SimulatedNode) -> None:
    node.sim_ctl("agent", "10", "stop")
    queued = spam_test(node, "--message", "취소될 메시지", wait=False)
    test_id = queued["test_id"]
    wait_for(lambda: agent_rows(test_id) == 3, 20, "the test's rows waiting for the agent")
    cancelled = json.loads(node.ctl("spam-test", "cancel", test_id, "--json").stdout)
    assert cancelled == {
        "test_id": test_id,
        "status": "cancelled",
        "stopped": 3,
        "already_sent": 0,
    }
    assert agent_rows(test_id) == 0
    assert show(node, test_id)["status"] == "cancelled"
    assert all(p["busy_with"] == [] for p in node.status()["spam_tests"]["phones"])
    # Cancelling again changes nothing and says so.
    again = json.loads(node.ctl("spam-test", "cancel", test_id, "--json").stdout)
    assert again["status"] == "cancelled" and again["stopped"] == 0
    node.sim_ctl("agent", "10", "ok")
    report = spam_test(node, "--message", "다음 메시지")
    assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}


def test_a_receipt_after_blocked_is_late_and_widens_the_grace(node_dir: Path) -> None:
    node = start(
        node_dir,
        overrides=with_grace(2.0),
    )
    try:
        node.sim_ctl("network", "KT", "--latency", "4.0", "4.2")
        first = spam_test(node, "--message", "늦게 도착하는 안내")
        assert verdicts(first)["KT"] == "blocked"  # a 2 s grace for a 4 s carrier
        wait_for(lambda: results(first["test_id"])["KT"]["late"], 20, "the late KT receipt")
        assert show(node, first["test_id"])["carriers"]["KT"]["late"] is True
        spam = node.status()["spam_tests"]
        recent = next(t for t in spam["recent"] if t["test_id"] == first["test_id"])
        assert recent["carriers"]["KT"]["late"] is True
        assert spam["grace_s"]["KT"] > 4.0
        second = spam_test(node, "--message", "두번째 안내")
        assert verdicts(second) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
    finally:
        node.close()


def test_a_batch_of_variants_is_queued_and_reported_together(node: SimulatedNode) -> None:
    node.sim_ctl("rules", "KT", "--block-keyword", "무료")
    out = node.ctl(
        "spam-test",
        "--callback",
        CALLBACK,
        "--company",
        "acme",
        "--message",
        "가을 신상품 안내",
        "--message",
        "가을 신상품 무료 안내",
        "--wait",
        "--json",
        timeout=120,
    )
    batch = json.loads(out.stdout)
    assert [t["variant"] for t in batch["tests"]] == ["A", "B"]
    assert [t["overall"] for t in batch["tests"]] == ["pass", "blocked"]
    shown = json.loads(node.ctl("spam-test", "show", batch["batch_id"], "--json").stdout)
    assert shown["batch_id"] == batch["batch_id"]
    assert [t["test_id"] for t in shown["tests"]] == [t["test_id"] for t in batch["tests"]]


def test_receipts_settle_verdicts_while_mariadb_is_down(node_dir: Path) -> None:
    """The agents took a test's rows, then MariaDB went away while another test could not
    be written: the phones still prove the first test's `pass`, and the second is written
    once MariaDB is back, exactly once."""
    node = start(node_dir, phones=2)
    try:
        for carrier in ("SKT", "KT", "LGU"):
            node.sim_ctl("network", carrier, "--latency", "3", "3.5")
        first = spam_test(node, "--message", "점검 중 도착 확인", wait=False)["test_id"]
        wait_for(lambda: agent_rows(first) == 3, 20, "the rows in the agent table")
        wait_for(
            lambda: all(c["status_code"] == 6 for c in show(node, first)["carriers"].values()),
            20,
            "the agent's results",
        )
        services.stop("mariadb")
        try:
            second = spam_test(node, "--message", "점검 후 보낼 안내", wait=False)["test_id"]
            report = completed(node, first, 30)
            assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
            assert show(node, second)["status"] == "active"
        finally:
            services.start("mariadb")
        report = completed(node, second, 60)
        assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
        assert agent_rows(second) == 3
    finally:
        node.close()


KSC5601_NETWORK = {
    "simulator": {
        "network": {c: {"korean_encoding": "ksc5601"} for c in ("SKT", "KT", "LGU")},
        # Past the daemon's command timeout: a late modem's every reply comes too late.
        "modems": {"late_delay_s": 4.0},
    }
}


def test_ksc5601_texts_pass_and_a_late_modem_is_never_blocked(node_dir: Path) -> None:
    """Issue 18 acceptance 1 and 3: a Korean text the carriers deliver as KSC5601 (DCS
    0x84) matches its hash on every carrier; a modem whose replies come after the
    timeout ends pass or device_error, never blocked."""
    node = start(node_dir, overrides(fast_spam, KSC5601_NETWORK))
    try:
        text = "한줄로 KSC5601 문자 시험입니다"
        report = spam_test(node, "--message", text)
        assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
        rows = fetch(
            "SELECT DISTINCT text, raw_pdus[1] FROM hanjullo.modem_receipts"
            " WHERE test_id = $1::uuid",
            report["test_id"],
        )
        assert {r[0] for r in rows} == {text}
        assert all(pdu.decode(r[1]).dcs == pdu.KSC5601_DCS for r in rows)  # type: ignore[union-attr]

        node.sim_ctl("modem", "LGU", "late")
        report = spam_test(node, "--message", "늦은 응답 모뎀 시험")
        assert verdicts(report)["LGU"] in ("pass", "device_error")
        assert {verdicts(report)["SKT"], verdicts(report)["KT"]} == {"pass"}
    finally:
        node.close()


BLANK_SUBJECTS = {
    "simulator": {"network": {"KT": {"mms_subject": "empty"}, "LGU": {"mms_subject": "missing"}}}
}


def test_an_lms_matches_by_sender_and_size_when_the_subject_is_blank(node_dir: Path) -> None:
    """Issue 18 acceptance 2: KT's notification carries an empty Subject, LGU's none at all
    (as gammu's tests/at-sms/40.dump); the LMS still matches there by its sender and a
    stated size that holds the body (docs/test-phones.md, "Matching an LMS")."""
    node = start(node_dir, overrides(fast_spam, BLANK_SUBJECTS))
    try:
        body = "빈 제목 알림 시험 " * 40
        report = spam_test(node, "--lms", "--subject", "겨울 정기 세일", "--message", body)
        assert verdicts(report) == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
        rows = fetch(
            "SELECT carrier, kind, subject, mms_size FROM hanjullo.modem_receipts"
            " WHERE test_id = $1::uuid",
            report["test_id"],
        )
        by_carrier = {r[0]: r[1:] for r in rows}
        assert len(rows) == 3 and {r[1] for r in rows} == {"mms-notification"}
        assert by_carrier["SKT"][1] == "겨울 정기 세일"
        assert by_carrier["KT"][1] in ("", None) and by_carrier["LGU"][1] in ("", None)
        assert all(r[3] >= len(body.encode("euc-kr")) for r in rows)
    finally:
        node.close()


# Two nodes cover the four families: three on one node, generic (the default) on the other.
PROFILE_LAYOUTS = {
    "huawei-quectel-simcom": {"SKT": "huawei", "KT": "quectel", "LGU": "simcom"},
    "generic": {"SKT": "generic", "KT": "generic", "LGU": "generic"},
}


@pytest.mark.parametrize("layout", PROFILE_LAYOUTS, ids=str)
def test_every_modem_profile_runs_a_spam_test(node_dir: Path, layout: str) -> None:
    """Issue 18 acceptance 4: a spam test end to end through the daemon's drivers and
    every simulated modem family; the verdicts are the network's ground truth, a pass
    where the text reached the handset and a blocked where a carrier's filter took it."""
    profiles = PROFILE_LAYOUTS[layout]
    node = start(node_dir, overrides(fast_spam, {"simulator": {"modems": {"profiles": profiles}}}))
    try:
        sim = json.loads(node.sim_ctl("status", "--json").stdout)
        assert {m["name"]: m["profile"] for m in sim["modems"]} == profiles
        node.sim_ctl("rules", "KT", "--block-keyword", "무료")
        for text, expected in (
            ("한줄로 모뎀 제품군 시험 안내", {"SKT": "pass", "KT": "pass", "LGU": "pass"}),
            ("한줄로 무료 체험 안내", {"SKT": "pass", "KT": "blocked", "LGU": "pass"}),
        ):
            seen = {d["ref"] for d in sim["network"]["decisions"]}
            report = spam_test(node, "--message", text)
            sim = json.loads(node.sim_ctl("status", "--json").stdout)
            truth = {
                d["carrier"]: "blocked" if d["blocked"] else "pass"
                for d in sim["network"]["decisions"]
                if d["ref"] not in seen and d["code"] in (6, 1000)
            }
            assert truth == expected, sim["network"]["decisions"]
            assert verdicts(report) == truth
        assert set(handset_copies(report["test_id"])) == {"SKT", "LGU"}
    finally:
        node.close()
