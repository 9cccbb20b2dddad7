"""Structured logging for every command of the node.

JSON lines when stderr is not a terminal, a readable renderer on a terminal. Under
systemd (stderr is the journal stream that ``JOURNAL_STREAM`` names) each line starts
with the sd-daemon ``<N>`` priority prefix, so the journal files it with its priority
(``journalctl -p warning``) and keeps the JSON fields in its message
(``journalctl -o cat | jq``). Every string value passes through :func:`mask_phones` so
a phone number never reaches a log unmasked; secrets are never handed to the logger.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

# Korean mobile and landline numbers as people and systems write them: domestic with a trunk
# 0 (010-1234-5678, 010.1234.5678, (010)1234-5678, 010 1234 5678) or international with
# 82, with or without "+" and with an optional "(0)" (+82 10-1234-5678, 821012345678,
# +82 (0)10-1234-5678); separators "-", "." or " ". Group 1 is the mobile prefix or area code.
_SEP = r"[-. ]?"
_PHONE = re.compile(
    r"(?<![0-9])(?:\+?82" + _SEP + r"(?:\(0\)" + _SEP + r")?0?|\(?0)"
    r"(1[016789]|2|[3-6][1-5]|70|80)\)?" + _SEP + r"([0-9]{3,4})" + _SEP + r"([0-9]{4})(?![0-9])"
)


def _mask(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    # Keep the country code or trunk zero, two digits of the prefix, and the last four.
    before_prefix = sum(ch.isdigit() for ch in text[: match.start(1) - match.start()])
    hidden = set(digits[before_prefix + 2 : -4])
    return "".join("*" if i in hidden else ch for i, ch in enumerate(text))


def mask_phones(text: str) -> str:
    """``01012345678`` → ``010****5678``; other text unchanged."""
    return _PHONE.sub(_mask, text)


def _masked(value: Any) -> Any:
    """``value`` with every phone number in it masked, nested containers included; a number
    that reads as a phone number (821012345678) becomes its masked text."""
    if isinstance(value, str):
        return mask_phones(value)
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        masked = mask_phones(text)
        return value if masked == text else masked
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_masked(item) for item in value]
    return value


def _mask_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        event[key] = _masked(value)
    return event


# syslog priorities (sd-daemon(3)) of structlog's levels.
JOURNAL_PRIORITY = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}


def is_journal_stream(stream: Any, environ: MutableMapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal's stream that systemd handed this process
    (``JOURNAL_STREAM=<device>:<inode>`` of it, systemd.exec(5)); a redirected stderr is
    not, even under systemd."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class _JournalPrefixed:
    """Wraps a renderer: ``<N>`` + the rendered line, N the event's syslog priority."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = JOURNAL_PRIORITY.get(str(event.get("level", name)).lower(), 6)
        return f"<{priority}>{self.renderer(logger, name, event)}"


class _ToStructlog(logging.Handler):
    """Libraries' stdlib log records (asyncio, apscheduler …) through the same processors:
    masked, JSON or readable, with the journal priority."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                event["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **event)
        except Exception:
            self.handleError(record)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    def fileno(self) -> int:
        return sys.stderr.fileno()


def setup_for(section: Any, fmt_override: str | None = None, name: str = "noded") -> None:
    """Logging as a `[logging]` section asks: its directory when set, else stderr."""
    log_file = section.dir / f"{name}.log" if section.dir else None
    setup_logging(section.level, fmt_override or section.format, log_file=log_file)


def setup_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    log_file: Path | None = None,
) -> None:
    """Configure structlog. Logs go to stderr (stdout carries only command results)."""
    out: Any = stream or _CurrentStderr()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out = log_file.open("a", encoding="utf-8", buffering=1)
    journal = log_file is None and is_journal_stream(out)
    use_json = fmt == "json" or (fmt == "auto" and (journal or not out.isatty()))
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    if journal:
        renderer = _JournalPrefixed(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToStructlog)]
    root.addHandler(_ToStructlog())
    # Libraries log as much as lastResort showed before: warnings and worse.
    root.setLevel(max(logging.getLevelNamesMapping()[level.upper()], logging.WARNING))
