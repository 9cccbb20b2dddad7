"""hanjulloctl's human views: the status tables at 80 columns with Korean values, colour
only on a terminal, and the progress of `send --wait` and `spam-test --wait`."""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

from daemon.cli import status
from daemon.cli.runs import RunProgress
from daemon.cli.spam import VerdictProgress
from tests.unit.status_sample import RUN_EN, RUN_KO, snapshot

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def column_at(line: str, word: str) -> int:
    """The display column where `word` starts in `line` (Hangul counts two)."""
    return cell_len(line[: line.index(word)])


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


def row_of(text: str, first: str) -> str:
    """The table row whose first cell is `first`."""
    return next(line for line in text.splitlines() if line.startswith(first))


def test_korean_values_line_up_at_80_columns() -> None:
    text = status.render_status(snapshot(), width=80)
    assert all(cell_len(line) <= 80 for line in text.splitlines()), text
    # Runs: the Korean company's row and the ASCII one put every later column at the
    # same display column as the header.
    header = lines_with(text, "RUN", "COMPANY", "STATUS")[0]
    korean = row_of(text, RUN_KO[:8])
    ascii_row = row_of(text, RUN_EN[:8])
    assert "한줄로마케팅" in korean  # not folded
    assert column_at(header, "STATUS") == column_at(korean, "sending")
    assert column_at(korean, "sending") == column_at(ascii_row, "paused")
    # Numbers are right-aligned: their last digit ends under the header's end.
    end = column_at(header, "PENDING") + len("PENDING")
    assert column_at(korean, "28800") + 5 == end == column_at(ascii_row, "4950") + 4
    # Line groups: the holder's company in Hangul does not push SINCE out of line.
    since = column_at(lines_with(text, "GROUP", "HOLDER")[0], "SINCE")
    assert column_at(row_of(text, "bulk-1"), "01:05:00") == since
    assert column_at(row_of(text, "bulk-2"), "01:06:00") == since
    # The spam test's company, too.
    test_header = lines_with(text, "SPAM TEST", "COMPANY")[0]
    test_row = lines_with(text, "aa11bb22")[0]
    assert column_at(test_header, "STATUS") == column_at(test_row, "active")


def test_plain_without_a_terminal_and_coloured_states_on_one() -> None:
    plain = status.render_status(snapshot())
    assert "\x1b[" not in plain
    coloured = status.render_status(snapshot(), color=True)
    assert "\n".join(line.rstrip() for line in ANSI.sub("", coloured).splitlines()) == plain
    line = lines_with(coloured, "SMSQ_SEND_5")[0]
    assert "\x1b[31mstalled" in line  # red: needs someone
    assert "\x1b[32mok" in lines_with(coloured, "SMSQ_SEND_4")[0]  # green
    assert "\x1b[33mpaused" in row_of(coloured, RUN_EN[:8])  # yellow: waits


def test_a_company_name_is_never_read_as_markup() -> None:
    snap = snapshot()
    snap["runs"][0]["company"] = "[bold]한줄로[/bold]"
    text = status.render_status(snap)
    assert "[bold]한줄로[/bold]" in text


def test_status_command_prints_plain_tables_and_json_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = snapshot()
    monkeypatch.setattr(status, "get", lambda path, url: snap)
    monkeypatch.setenv("COLUMNS", "80")
    args = status.argparse.Namespace(json=False, watch=False, socket="/x.sock", interval=1.0)
    assert status.cmd_status(args) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "COMPONENT" in out and "한줄로마케팅" in out
    assert all(cell_len(line) <= 80 for line in out.splitlines())
    args.json = True
    assert status.cmd_status(args) == 0
    assert capsys.readouterr().out == json.dumps(snap, ensure_ascii=False, indent=2) + "\n"


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80, force_terminal=True, color_system=None), out


def run_info(done: int, status_: str = "sending") -> dict[str, Any]:
    return {
        "target": 1000,
        "skipped": {"opted_out": 0},
        "success": done - done // 10,
        "fail": done // 10,
        "inserted": 1000,
        "status": status_,
    }


def test_send_wait_shows_a_bar_with_results_and_a_line_per_change_elsewhere() -> None:
    console, out = terminal()
    run_id = uuid.UUID(RUN_KO)
    with RunProgress(console, run_id) as progress:
        progress.update(run_info(0))
        progress.update(run_info(250))
    text = out.getvalue()
    assert "run 6f1c2a9e" in text and "250/1000" in text and "1000 inserted" in text
    assert "━" in text  # the bar
    assert all(cell_len(ANSI.sub("", line)) <= 80 for line in text.splitlines())

    plain = io.StringIO()
    console = Console(file=plain, width=80)
    with RunProgress(console, run_id) as progress:
        for done in (0, 0, 500, 1000):
            progress.update(run_info(done, "completed" if done == 1000 else "sending"))
    assert plain.getvalue().splitlines() == [
        "run 6f1c2a9e: 0/1000 results, 1000 inserted, sending",
        "run 6f1c2a9e: 500/1000 results, 1000 inserted, sending",
        "run 6f1c2a9e: 1000/1000 results, 1000 inserted, completed",
    ]


def report(status_: str, **verdicts: str | None) -> dict[str, Any]:
    return {
        "status": status_,
        "carriers": {c: {"verdict": v} for c, v in verdicts.items()},
    }


def test_spam_test_wait_shows_one_line_per_carrier() -> None:
    reports = [
        report("completed", SKT="pass", KT="blocked", LGU="pass"),
        report("active", SKT="pass", KT=None, LGU="blocked"),
        report("queued", SKT=None, KT=None, LGU=None),
    ]
    assert VerdictProgress.per_carrier(reports) == {
        "SKT": (2, "pass 2"),
        "KT": (1, "blocked 1"),
        "LGU": (2, "pass 1  blocked 1"),
    }
    console, out = terminal()
    with VerdictProgress(console, 3) as progress:
        progress.update(reports)
    lines = [ANSI.sub("", line) for line in out.getvalue().splitlines() if "/3" in line]
    assert [line.split()[0] for line in lines[-3:]] == ["SKT", "KT", "LGU"]
    assert "2/3" in lines[-3] and "pass 2" in lines[-3]
    assert "1/3" in lines[-2] and "blocked 1" in lines[-2]

    plain = io.StringIO()
    with VerdictProgress(Console(file=plain, width=80), 3) as progress:
        progress.update(reports)
        progress.update(reports)
    assert plain.getvalue().splitlines() == [
        "1/3 tests judged; SKT 2/3 (pass 2); KT 1/3 (blocked 1); LGU 2/3 (pass 1  blocked 1)"
    ]


def test_unreachable_agents_and_long_reasons_still_fit_80_columns() -> None:
    snap = snapshot()
    for agent in snap["agents"]:
        agent.update(state="unreachable", reachable=False, waiting=None, due=None, in_flight=None)
        agent["oldest_waiting_s"] = None
    long_path = "/tmp/pytest-of-root/pytest-98/test_status_watch_redraws_in_p0/dev/modem-skt"
    snap["components"][-1]["reason"] = f"absent: device {long_path} not present"
    text = status.render_status(snap)
    assert all(cell_len(line) <= 80 for line in text.splitlines())
    for n in range(1, 12):
        assert row_of(text, f"{n:>5}  SMSQ_SEND_{n} ")  # one line per agent, never folded
    header = lines_with(text, "AGENT", "TABLE", "OLDEST", "FLIGHT")[0]
    assert column_at(header, "STATE") == column_at(row_of(text, "   11"), "unreachable")
    assert "modem-skt" in text.replace("\n", "").replace(" ", "")


@pytest.mark.parametrize("uptime_s", [5, 15, 86_400])
def test_the_first_line_names_the_node_and_its_uptime_whatever_its_name(uptime_s: int) -> None:
    # A simulated node is named after its directory; at 80 columns a long one wraps, and
    # the uptime the operator (and `status --watch`'s test) looks for must not split.
    snap = snapshot()
    snap["node"]["name"] = "simulated node at /tmp/pytest-of-root/pytest-0/test_status_watch_redr"
    snap["node"]["uptime_s"] = uptime_s
    first = status.render_status(snap, width=80).splitlines()[0]
    assert first.startswith(f"node {snap['node']['id']}  up {uptime_s}s  version ")
