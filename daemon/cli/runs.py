"""`hanjulloctl send`, `run show|cancel|pause|resume`, `agent drain|undrain`.

`send` writes a run through the same PostgreSQL contract as the web service (so
it works while the daemon is down, and the daemon picks it up by NOTIFY or
poll). `run show` reads PostgreSQL. Cancel, pause, resume and drain go through
the daemon's socket, because pulling rows back must not race its inserts.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from config.clock import KST, NodeClock
from config.names import MessageType
from daemon.cli.common import CtlError, Subparsers, node_config, post, socket_path
from daemon.schema import run_with_pg
from dispatch.guards import RunRejected
from dispatch.runs import Recipient, RunSpec, send_direct
from dispatch.runs import show as show_run

FINISHED = ("completed", "cancelled", "rejected")


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file (a leading BOM dropped), decoded one at a time so broken
    UTF-8 is reported by its line instead of as a traceback from deep inside the reader."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CtlError(
                    f"{path}:{number}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1}); fix: save the file as UTF-8 (Excel's plain CSV is "
                    'CP949: choose "CSV UTF-8")'
                ) from None
            yield line.removeprefix("\ufeff") if number == 1 else line


def _recipients(args: argparse.Namespace) -> Iterator[Recipient]:
    if args.csv:
        reader = csv.DictReader(_text_lines(Path(args.csv)))
        fields = set(reader.fieldnames or [])
        if not {"phone", "text"} <= fields:
            raise CtlError(
                f"{args.csv}: the header must name columns phone,text (optional subject); "
                f"found {sorted(fields)}"
            )
        # The physical line each record starts on (a quoted text may span lines).
        starts_on = reader.line_num + 1
        for row in reader:
            line, starts_on = starts_on, reader.line_num + 1
            if not row.get("phone") or row.get("text") is None:
                raise CtlError(f"{args.csv}:{line}: phone and text are required")
            yield Recipient(
                row["phone"].strip(), row["text"], (row.get("subject") or None) or args.subject
            )
        return
    for raw in _text_lines(Path(args.phones)):
        phone = raw.strip()
        if phone and not phone.startswith("#"):
            yield Recipient(phone, args.message, args.subject)


def cmd_send(args: argparse.Namespace) -> int:
    config = node_config(args)
    if bool(args.csv) == bool(args.phones):
        raise CtlError("give either --csv FILE or --phones FILE with --message TEXT")
    if args.phones and args.message is None:
        raise CtlError("--phones needs --message TEXT")
    scheduled = None
    if args.at:
        scheduled = datetime.fromisoformat(args.at)
        if scheduled.tzinfo is None:
            scheduled = scheduled.replace(tzinfo=KST)
    spec = RunSpec(
        node_id=config.node.id,
        company_id=args.company,
        user_id=args.user,
        callback=args.callback,
        message_type=MessageType(args.type),
        subject=args.subject,
        is_ad=args.ad,
        scheduled_at=scheduled,
    )

    # A simulated node (its configuration has a [simulator] section) makes an unknown
    # company and registers the callback, so demos and tests need no set-up.
    simulated = "simulator" in config.model_fields_set
    now = NodeClock(config.clock.file).now_kst()
    try:
        sent = run_with_pg(
            config,
            lambda conn: send_direct(conn, spec, _recipients(args), simulated=simulated, now=now),
        )
    except RunRejected as exc:
        raise CtlError(f"run rejected, nothing was sent: {exc}") from exc
    except FileNotFoundError as exc:
        raise CtlError(f"cannot read {exc.filename}") from exc
    run_id = sent.run_id
    if args.wait:
        final = wait_for_run(args, run_id)
        print(json.dumps(final, ensure_ascii=False) if args.json else _render(final))
    elif args.json:
        print(json.dumps({"run_id": str(run_id), "campaign_id": str(sent.campaign_id)}))
    else:
        print(run_id)
    return 0


def _fetch(args: argparse.Namespace, run_id: uuid.UUID) -> dict[str, Any] | None:
    return run_with_pg(node_config(args), lambda conn: show_run(conn, run_id))


def wait_for_run(args: argparse.Namespace, run_id: uuid.UUID) -> dict[str, Any]:
    """Poll until every result is in, with progress on stderr (stdout stays clean): a rich
    bar with the rate and the time left on a terminal, a line per change otherwise."""
    console = Console(stderr=True, highlight=False)
    with RunProgress(console, run_id) as progress:
        while True:
            info = _fetch(args, run_id)
            if info is None:
                raise CtlError(f"run {run_id} disappeared")
            progress.update(info)
            if info["status"] in FINISHED or (info["status"] == "paused" and info["reason"]):
                return info
            time.sleep(1.0 if console.is_terminal else 2.0)


class ResultRate(ProgressColumn):
    """Results per second, as rich measures them from the updates."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class RunProgress:
    """A run's results against its target: a bar on a terminal, plain lines elsewhere."""

    def __init__(self, console: Console, run_id: uuid.UUID) -> None:
        self.console = console
        self.label = f"run {str(run_id)[:8]}"
        self.last = ""
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                ResultRate(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=console,
            )

    def __enter__(self) -> RunProgress:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, info: dict[str, Any]) -> None:
        target = max(1, info["target"] - sum(info["skipped"].values()))
        done = info["success"] + info["fail"]
        detail = f"{info['inserted']} inserted, {info['status']}"
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, total=target, completed=min(done, target), detail=detail)
            return
        line = f"{self.label}: {done}/{target} results, {detail}"
        if line != self.last:
            self.console.print(line, markup=False, soft_wrap=True)
            self.last = line


def _render(info: dict[str, Any]) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in info["skipped"].items()) or "none"
    return "\n".join(
        [
            f"run {info['run_id']}  company {info['company']}  status {info['status']}"
            + (f" ({info['reason']})" if info.get("reason") else ""),
            f"line group {info['line_group'] or '-'}  type {info['message_type']}"
            + ("  advertising" if info["is_ad"] else ""),
            f"target {info['target']}  inserted {info['inserted']}  sent {info['sent']}  "
            f"success {info['success']}  fail {info['fail']}  pending {info['pending']}",
            f"skipped: {skipped}",
        ]
    )


def _run_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise CtlError(f"{value!r} is not a run id (a UUID)") from exc


def cmd_run(args: argparse.Namespace) -> int:
    run_id = _run_id(args.run_id)
    if args.run_command == "show":
        info = _fetch(args, run_id)
        if info is None:
            raise CtlError(f"no run {run_id}")
        print(json.dumps(info, ensure_ascii=False) if args.json else _render(info))
        return 0
    result = post(socket_path(args), f"/v1/runs/{run_id}/{args.run_command}")
    print(
        json.dumps(result, ensure_ascii=False)
        if args.json
        else " ".join(f"{k}={v}" for k, v in result.items())
    )
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    result = post(socket_path(args), f"/v1/agents/{args.number}/{args.agent_command}")
    print(json.dumps(result) if args.json else " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    send = sub.add_parser("send", parents=[common], help="create a campaign run")
    send.add_argument("--company", required=True)
    send.add_argument("--user")
    send.add_argument("--callback", required=True, help="the registered sender number")
    send.add_argument("--csv", help="UTF-8 CSV with a header phone,text[,subject]")
    send.add_argument("--phones", help="a file with one number per line")
    send.add_argument("--message", help="the text for every number of --phones")
    send.add_argument("--type", choices=[t.value for t in MessageType], default="SMS")
    send.add_argument("--subject")
    send.add_argument("--ad", action="store_true", help="an advertisement (08:00-21:00 only)")
    send.add_argument("--at", help="send at this time (ISO 8601; KST when no zone)")
    send.add_argument("--wait", action="store_true", help="wait for every result")
    send.add_argument("--json", action="store_true")
    send.set_defaults(func=cmd_send)

    run = sub.add_parser("run", parents=[common], help="show or steer a run")
    run_sub = run.add_subparsers(dest="run_command", required=True)
    for name, text in (
        ("show", "counters and status"),
        ("cancel", "stop for good"),
        ("pause", "stop, keep the rest"),
        ("resume", "continue where it stopped"),
    ):
        p = run_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("run_id")
        p.add_argument("--json", action="store_true")
        p.add_argument("--socket")
        p.set_defaults(func=cmd_run)

    agent = sub.add_parser("agent", parents=[common], help="agent maintenance")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    for name in ("drain", "undrain"):
        p = agent_sub.add_parser(
            name,
            parents=[common],
            help="move work off an agent" if name == "drain" else "let it take work again",
        )
        p.add_argument("number", type=int)
        p.add_argument("--json", action="store_true")
        p.add_argument("--socket")
        p.set_defaults(func=cmd_agent)
