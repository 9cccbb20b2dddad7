"""`make demo`: a whole simulated node, end to end, ending in its status table.

Starts the simulators and the daemon under `run/demo/`, waits for every
component, runs a spam-filter test on the three carrier test phones (the
simulated KT filter blocks one of its words), sends a sample campaign, then
prints the node's status table with both. `--keep` leaves the node running for `hanjulloctl status`.
`--least-privilege` first creates the node's own PostgreSQL role and MySQL user with the
shipped grants (systemd/grants/, docs/least-privilege.md) and runs everything the node
runs (`db init`, the daemon, the CLI) on them; only the simulated agents keep root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulators import least_privilege
from simulators.harness import SimulatedNode, current_instance

ROOT = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=ROOT / "run" / "demo")
    parser.add_argument("--keep", action="store_true", help="leave the node running")
    parser.add_argument(
        "--least-privilege",
        action="store_true",
        help="run the node on its own database accounts, made with systemd/grants/*.sql",
    )
    args = parser.parse_args()
    accounts = None
    if args.least_privilege:
        accounts = least_privilege.Accounts.for_instance(current_instance())
        least_privilege.install(accounts)
        say(
            f"least-privilege accounts: PostgreSQL role and MySQL user {accounts.user},"
            f" databases {accounts.database} (systemd/grants/)"
        )
    node = SimulatedNode(args.dir, overrides=None if accounts is None else accounts.configure)
    try:
        say(f"simulated node in {node.dir} (config {node.config_path})")
        node.db_init()
        say("storage ready (hanjulloctl db init)")
        node.start_sim(env=None if accounts is None else accounts.agent_env())
        say("simulators running: 11 QTmsg agents, carrier network, 3 modems on ptys")
        ready = node.start_daemon()
        say(f"daemon READY after {ready:.2f}s; waiting for every component")
        node.wait_components(
            lambda s: all(v == "running" for v in s.values()), 30, "every component running"
        )
        say("spam test: the simulated KT filter blocks '무료'; testing a text that has it")
        node.sim_ctl("rules", "KT", "--block-keyword", "무료")
        tested = node.ctl(
            "spam-test",
            "--callback",
            "0212345678",
            "--company",
            "acme",
            "--message",
            "[한줄로] 무료 배송 이벤트 안내",
            "--wait",
            timeout=180,
        )
        for line in tested.stdout.splitlines():
            say(line)
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
