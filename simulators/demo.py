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

from simulators.harness import SimulatedNode, mysql, wait_for

ROOT = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def send_to_test_phones(node: SimulatedNode) -> str:
    config = node.status_config()
    tag = "demo-" + uuid.uuid4().hex[:8]
    conn = mysql()
    try:
        with conn.cursor() as cur:
            for modem in config["modems"]:
                cur.execute(
                    "INSERT INTO SMSQ_SEND_10 (dest_no, call_back, msg_contents, msg_type,"
                    " sendreq_time, app_etc1) VALUES (%s, %s, %s, 'S', NOW(), %s)",
                    (
                        modem["phone"],
                        "15886000",
                        f"한줄로 데모 메시지 ({modem['carrier']}) {tag}",
                        tag,
                    ),
                )
    finally:
        conn.close()
    return tag


def _receipt(node: SimulatedNode, carrier: str, tag: str) -> dict[str, object] | None:
    """The daemon's durable receipt of the demo text on `carrier`'s phone, if any yet."""
    import asyncio

    import asyncpg

    async def read() -> dict[str, object] | None:
        conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="test")
        try:
            row = await conn.fetchrow(
                """SELECT sender, text, received_at, via FROM modem_receipts
                   WHERE node_id = $1 AND carrier = $2 AND text LIKE $3
                   ORDER BY id DESC LIMIT 1""",
                node.status_config()["node"]["id"],
                carrier,
                f"%{tag}%",
            )
            return dict(row) if row else None
        finally:
            await conn.close()

    return asyncio.run(read())


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
        tag = send_to_test_phones(node)
        started = time.monotonic()
        for carrier in ("SKT", "KT", "LGU"):
            receipt = wait_for(
                partial(_receipt, node, carrier, tag), 40, f"the {carrier} phone's receipt"
            )
            say(
                f"{carrier} phone: {receipt['text']!r} from {receipt['sender']}, recorded by "
                f"the daemon via {receipt['via']} ({time.monotonic() - started:.1f}s after "
                "sending)"
            )
        say("sending a sample campaign: 1,000 recipients (2 invalid, 1 duplicate) for acme")
        csv = node.dir / "sample-campaign.csv"
        rows = [f"0107{i:07d},[한줄로] 고객님 {i}번 주문이 발송되었습니다" for i in range(997)]
        rows += ["0212345678,landline", "12345,garbage", "01070000001,duplicate"]
        csv.write_text("phone,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
        sent = node.ctl(
            "send",
            "--company",
            "acme",
            "--callback",
            "0212345678",
            "--csv",
            str(csv),
            "--wait",
            "--json",
            timeout=300,
        )
        run = json.loads(sent.stdout)
        say(
            f"campaign {run['run_id'][:8]} on {run['line_group']}: {run['status']}, "
            f"{run['success']} delivered, {run['fail']} failed, skipped {run['skipped']}"
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
