"""`hanjulloctl status --watch` in a real terminal: tmux runs it at 80 columns, the test
reads the screen with capture-pane and stops it with Ctrl-C through send-keys."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
from rich.cells import cell_len

from simulators.harness import SimulatedNode, command, wait_for

UPTIME = re.compile(r"\bup (\d+)s\b")


class Terminal:
    """A detached tmux session of `width` x `height` running one command, on a tmux
    server of its own (another tmux user on the machine cannot resize or end it)."""

    def __init__(self, argv: list[str], width: int = 80, height: int = 100) -> None:
        self.name = f"hanjullo-{uuid.uuid4().hex[:8]}"
        self.tmux = ["tmux", "-L", self.name, "-f", "/dev/null"]
        # The shell line after the command shows how it ended; the pane stays open.
        line = f"{shlex.join(argv)}; echo EXITED $?; sleep 60"
        subprocess.run(
            [
                *self.tmux,
                "new-session",
                "-d",
                "-s",
                self.name,
                "-x",
                str(width),
                "-y",
                str(height),
                # The pane's size, not the one an outer LINES/COLUMNS claims.
                "env",
                "-u",
                "LINES",
                "-u",
                "COLUMNS",
                "TERM=xterm-256color",
                "bash",
                "-c",
                line,
            ],
            check=True,
        )

    def screen(self) -> str:
        return subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", self.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], check=False)


@pytest.fixture
def tmux() -> Iterator[type[Terminal]]:
    assert shutil.which("tmux"), "tmux is missing: make setup installs it"
    opened: list[Terminal] = []

    class Tracked(Terminal):
        def __init__(self, argv: list[str], width: int = 80, height: int = 100) -> None:
            super().__init__(argv, width, height)
            opened.append(self)

    yield Tracked
    for terminal in opened:
        terminal.close()


def test_status_watch_redraws_in_place_at_80_columns(
    sim_node: SimulatedNode, tmux: type[Terminal]
) -> None:
    sim_node.start_daemon()
    term = tmux(
        [
            *command("hanjulloctl"),
            "status",
            "--watch",
            "--interval",
            "0.5",
            "--config",
            str(sim_node.config_path),
        ]
    )

    def showing(condition: Callable[[str], bool]) -> Callable[[], str | None]:
        def check() -> str | None:
            screen = term.screen()
            return screen if condition(screen) else None

        return check

    def uptime(screen: str) -> int:
        found = UPTIME.search(screen)
        return int(found.group(1)) if found else -1

    try:
        first = wait_for(
            showing(lambda s: "SMSQ_SEND_11" in s and uptime(s) >= 0),
            15,
            "the first status on the screen",
            interval_s=0.2,
        )
    except TimeoutError as exc:
        raise AssertionError(f"the screen shows:\n{term.screen()}") from exc
    later = wait_for(
        showing(lambda s: uptime(s) >= uptime(first) + 2),
        15,
        "the uptime to move on",
        interval_s=0.2,
    )
    for screen in (first, later):
        # Redrawn in place: one copy of each table on the screen, from its first line.
        assert screen.count("COMPONENT") == 1 and screen.count("SMSQ_SEND_11") == 1
        assert screen.splitlines()[0].startswith("node sim-")
        assert all(cell_len(line.rstrip()) <= 80 for line in screen.splitlines())
        assert "AGENT" in screen and "MODEM" in screen and "bulk-3" in screen
    term.keys("C-c")
    ended = wait_for(showing(lambda s: "EXITED" in s), 10, "Ctrl-C to end the watch")
    assert "EXITED 0" in ended
    assert "Traceback" not in ended
