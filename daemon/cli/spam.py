"""`hanjulloctl spam-test`: queue a spam-filter test (or a batch), wait, show, cancel.

Queuing creates the test as the web service's queue does (`spam_filter_tests` and a
result row per active device; `dispatch/spamtests/web.py`) and the node's row of it, so
it works while the daemon is down; ``--wait`` and ``show`` read
PostgreSQL; ``cancel`` goes through the daemon, which pulls back rows no agent
has taken and frees the phones.
"""

from __future__ import annotations

import argparse
import asyncio
import string
import sys
import time
import uuid
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from daemon.cli.common import CtlError, Subparsers, node_config, post, socket_path
from daemon.schema import run_with_pg
from dispatch.spamtests import CARRIERS, SpamTestRejected, SpamTestSpec, create_tests, dumps, show

DONE = ("completed", "cancelled")
# How often --wait looks at the verdicts.
POLL_S = 0.25


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise CtlError(f"{value!r} is not a {what} (a UUID)") from exc


def _fetch(args: argparse.Namespace, ident: uuid.UUID) -> list[dict[str, Any]]:
    return run_with_pg(node_config(args), lambda conn: show(conn, ident))


def _specs(args: argparse.Namespace) -> list[SpamTestSpec]:
    config = node_config(args)
    messages: list[str] = args.message or []
    if not messages:
        raise CtlError("give the text with --message TEXT (repeat it for a batch)")
    if args.lms and not args.subject:
        raise CtlError("--lms needs --subject S")
    if len(messages) > len(string.ascii_uppercase):
        raise CtlError(f"at most {len(string.ascii_uppercase)} variants per batch")
    run_id = _uuid(args.run, "run id") if args.run else None
    batch = len(messages) > 1
    return [
        SpamTestSpec(
            node_id=config.node.id,
            callback=args.callback,
            sms_text=None if args.lms else text,
            lms_text=text if args.lms else None,
            subject=args.subject if args.lms else None,
            company_id=args.company,
            user_id=args.user,
            source=args.source,
            variant=(string.ascii_uppercase[i] if batch else args.variant),
            run_id=run_id,
        )
        for i, text in enumerate(messages)
    ]


def cmd_spam_test(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if words:
        if words[0] not in ("cancel", "show") or len(words) != 2:
            raise CtlError(
                "usage: spam-test cancel ID | spam-test show ID | spam-test --callback …"
            )
        ident = _uuid(words[1], "test or batch id")
        if words[0] == "cancel":
            result = post(socket_path(args), f"/v1/spam-tests/{ident}/cancel")
            print(dumps(result) if args.json else " ".join(f"{k}={v}" for k, v in result.items()))
            return 0
        reports = _fetch(args, ident)
        if not reports:
            raise CtlError(f"no spam test or batch {ident}")
        print(_as_json(reports, ident) if args.json else render(reports))
        return 0
    if not args.callback:
        raise CtlError("--callback NUMBER is required to queue a test")
    specs = _specs(args)
    config = node_config(args)

    # As `send`: a simulated node (a [simulator] section) makes an unknown company code.
    simulated = "simulator" in config.model_fields_set
    try:
        ids, batch_id = run_with_pg(
            config,
            lambda conn: create_tests(
                conn, specs, batch=len(specs) > 1, create_companies=simulated
            ),
        )
    except SpamTestRejected as exc:
        raise CtlError(f"spam test rejected, nothing was queued: {exc}") from exc
    ident = batch_id or ids[0]
    if not args.wait:
        if args.json:
            print(
                dumps({"batch_id": str(batch_id), "test_ids": [str(i) for i in ids]})
                if batch_id
                else dumps({"test_id": str(ids[0])})
            )
        else:
            print(ident)
        return 0
    reports = wait(args, ident, len(ids))
    print(_as_json(reports, batch_id) if args.json else render(reports))
    if any(r["status"] == "cancelled" for r in reports):
        print("hanjulloctl: cancelled before a verdict", file=sys.stderr)
        return 1
    return 0


def wait(args: argparse.Namespace, ident: uuid.UUID, count: int) -> list[dict[str, Any]]:
    """Poll until every test has a verdict (or was cancelled); progress on stderr, one
    line per carrier. One connection for the whole wait."""
    console = Console(stderr=True, highlight=False)

    async def poll(conn: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + args.timeout
        with VerdictProgress(console, count) as progress:
            while True:
                reports = await show(conn, ident)
                progress.update(reports)
                if sum(1 for r in reports if r["status"] in DONE) == count:
                    return reports
                if time.monotonic() > deadline:
                    raise CtlError(
                        f"no verdict after {args.timeout:.0f}s; the test is still "
                        f"{reports[0]['status'] if reports else 'unknown'} "
                        "(see hanjulloctl status)"
                    )
                await asyncio.sleep(POLL_S)

    return run_with_pg(node_config(args), poll)


class VerdictProgress:
    """Per carrier, how many of the tests it has judged and the verdicts so far: rich
    bars on a terminal, a plain line per change elsewhere."""

    def __init__(self, console: Console, count: int) -> None:
        self.console = console
        self.count = count
        self.last = ""
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description:<4}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[verdicts]}"),
                console=console,
            )

    def __enter__(self) -> VerdictProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    @staticmethod
    def per_carrier(reports: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
        """carrier -> (tests judged, "pass 2  blocked 1")."""
        out: dict[str, tuple[int, str]] = {}
        for carrier in CARRIERS:
            verdicts = [
                r["carriers"][carrier]["verdict"]
                for r in reports
                if carrier in r["carriers"] and r["carriers"][carrier]["verdict"]
            ]
            if any(carrier in r["carriers"] for r in reports):
                tally = Counter(verdicts)
                out[carrier] = (len(verdicts), "  ".join(f"{v} {n}" for v, n in tally.items()))
        return out

    def update(self, reports: list[dict[str, Any]]) -> None:
        carriers = self.per_carrier(reports)
        if self.bar is not None:
            for carrier, (judged, verdicts) in carriers.items():
                if carrier not in self.tasks:
                    self.tasks[carrier] = self.bar.add_task(carrier, total=self.count, verdicts="")
                self.bar.update(self.tasks[carrier], completed=judged, verdicts=verdicts)
            return
        done = sum(1 for r in reports if r["status"] in DONE)
        line = f"{done}/{self.count} tests judged; " + "; ".join(
            f"{c} {judged}/{self.count}" + (f" ({verdicts})" if verdicts else "")
            for c, (judged, verdicts) in carriers.items()
        )
        if line != self.last:
            self.console.print(line, markup=False, soft_wrap=True)
            self.last = line


def _as_json(reports: list[dict[str, Any]], batch_id: uuid.UUID | None) -> str:
    if len(reports) == 1 and reports[0]["batch_id"] is None:
        return dumps(reports[0])
    return dumps({"batch_id": str(batch_id or reports[0]["batch_id"]), "tests": reports})


def render(reports: list[dict[str, Any]]) -> str:
    lines = []
    for r in reports:
        head = f"test {r['test_id']}"
        if r["variant"]:
            head += f"  variant {r['variant']}"
        if r["company"]:
            head += f"  company {r['company']}"
        lines.append(f"{head}  {r['status']}")
        for carrier in CARRIERS:
            c = r["carriers"].get(carrier)
            if c is None:
                continue
            delay = c["receipt_delay_s"]
            late = ""
            if c.get("late"):
                judged = c.get("late_from")
                late = (
                    f" LATE receipt (judged {judged} before it came)" if judged else " LATE receipt"
                )
            lines.append(
                f"  {carrier:<4} {c['verdict'] or '(waiting)':<13} "
                f"code {c['status_code'] if c['status_code'] is not None else '-':<5} "
                f"receipt {f'{delay:.1f}s' if delay is not None else '-':<7}"
                + late
                + (f"  ({c['detail']})" if c.get("detail") and c["verdict"] != "pass" else "")
            )
        lines.append(f"  overall {r['overall'] or '(undecided)'}")
    return "\n".join(line.rstrip() for line in lines)


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "spam-test",
        parents=[common],
        help="test a text on the carrier test phones; cancel ID; show ID",
        description="Queue a spam-filter test (repeat --message for a batch of variants A, "
        "B, C …), or `spam-test cancel ID`, or `spam-test show ID|BATCH_ID`.",
    )
    p.add_argument("words", nargs="*", metavar="cancel|show ID")
    p.add_argument("--callback", help="the sender number the test is sent from")
    p.add_argument("--message", action="append", help="the text (repeat for a batch)")
    p.add_argument("--lms", action="store_true", help="test as an LMS (needs --subject)")
    p.add_argument("--subject")
    p.add_argument(
        "--company",
        help="a companies.id (a simulated node makes an unknown value a company of that code)",
    )
    p.add_argument("--user", help="a users.id (the sending user), if any")
    p.add_argument("--variant")
    p.add_argument("--run", help="the campaign run this test belongs to (ai_training_logs)")
    p.add_argument("--source", choices=["manual", "auto_ai"], default="manual")
    p.add_argument("--wait", action="store_true", help="wait for the verdicts")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    p.add_argument("--json", action="store_true")
    p.add_argument("--socket")
    p.set_defaults(func=cmd_spam_test)
