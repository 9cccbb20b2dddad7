"""`make demo`: a whole simulated node, end to end, ending in its status table.

Starts the simulators and the daemon under `run/demo/`, waits for every
component, sends one text to each carrier's test phone through the test agent
(as a spam test does) and shows what each handset received, then prints the
node's status table. `--keep` leaves the node running for `hanjulloctl status`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import pymysql

from simulators.harness import SimulatedNode, wait_for

ROOT = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def send_to_test_phones(node: SimulatedNode) -> str:
    config = node.status_config()
    tag = "demo-" + uuid.uuid4().hex[:8]
    conn = pymysql.connect(
        host="127.0.0.1",
        user="root",
        password="",
        database="test",
        autocommit=True,
        init_command="SET time_zone = '+09:00'",
    )
    try:
        with conn.cursor() as cur:
            for modem in config["modems"]:
                cur.execute(
                    "INSERT INTO SMSQ_SEND_10 (dest_no, call_back, msg_contents, msg_type,"
                    " sendreq_time, app_etc1) VALUES (%s, %s, %s, 'S', NOW(), %s)",
                    (modem["phone"], "15886000", f"한줄로 데모 메시지 ({modem['carrier']})", tag),
                )
    finally:
        conn.close()
    return tag


def _inbox(node: SimulatedNode, carrier: str) -> list[dict[str, object]]:
    messages: list[dict[str, object]] = json.loads(node.sim_ctl("inbox", carrier, "--json").stdout)
    return messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=ROOT / "run" / "demo")
    parser.add_argument("--keep", action="store_true", help="leave the node running")
    args = parser.parse_args()
    node = SimulatedNode(args.dir)
    try:
        say(f"simulated node in {node.dir} (config {node.config_path})")
        node.db_init()
        say("storage ready (hanjulloctl db init)")
        node.start_sim()
        say("simulators running: 11 QTmsg agents, carrier network, 3 modems on ptys")
        ready = node.start_daemon()
        say(f"daemon READY after {ready:.2f}s; waiting for every component")
        node.wait_components(
            lambda s: all(v == "running" for v in s.values()), 30, "every component running"
        )
        say("sending one text to each test phone through the test agent (SMSQ_SEND_10)")
        send_to_test_phones(node)
        started = time.monotonic()
        for carrier in ("SKT", "KT", "LGU"):
            inbox = wait_for(partial(_inbox, node, carrier), 30, f"the {carrier} handset")
            last = inbox[-1]
            say(
                f"{carrier} handset received after {time.monotonic() - started:.1f}s: "
                f"{last['text']!r} from {last['sender']}"
            )
        print(node.ctl("status").stdout)
        if args.keep:
            say(f"left running: hanjulloctl status --config {node.config_path}")
            node.sim = node.daemon = None  # the processes outlive this script
        return 0
    finally:
        node.close()


if __name__ == "__main__":
    sys.exit(main())
