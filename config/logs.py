"""Structured logging for every command of the node.

JSON lines when stderr is not a terminal, a readable renderer on a terminal. Under
systemd (stderr is the journal stream that ``JOURNAL_STREAM`` names) each event goes to
journald over its native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL) as one datagram:
``PRIORITY``, ``MESSAGE`` (the event text), ``SYSLOG_IDENTIFIER``, ``CODE_FILE``/``LINE``/
``FUNC`` and every event key as a journal field of its own, so ``journalctl -p warning`` and
``journalctl MODEM=KT`` work. The client is written here because python-systemd needs a C
compiler and libsystemd headers on the node. An event the socket does not take (no
journald, a full queue, a datagram over the socket's size limit) falls back to the old
line on stderr: the sd-daemon ``<N>`` priority prefix and the event as JSON, so no line is
lost and logging never raises. Every string value passes through :func:`mask_phones`
before any of this, so a phone number never reaches a log unmasked; secrets are never
handed to the logger.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
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


# journald's native socket (sd_journal_sendv(3) writes here).
JOURNAL_SOCKET = "/run/systemd/journal/socket"

# Fields this writer sets itself; an event key of the same name becomes X_<name>.
_OWN_FIELDS = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
)
# Event keys that become MESSAGE and CODE_* instead of fields of their own.
_CALLSITE_KEYS = ("pathname", "lineno", "func_name")
_FIELD_NAME_MAX = 64  # journald drops longer field names

_socket_lock = threading.Lock()
_journal_socket: socket.socket | None = None


def journal_field_name(key: str) -> str:
    """The journal field an event key becomes: upper-cased, every character outside
    A-Z, 0-9 and "_" replaced by "_", ``X_`` in front when the result would start with
    "_" or a digit (journald's trusted or invalid names) or clash with a field this
    writer sets (``message`` → ``X_MESSAGE``), cut to 64 characters."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper())
    if not name[:1].isalpha() or name in _OWN_FIELDS:
        name = "X_" + name
    return name[:_FIELD_NAME_MAX]


def _field_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def journal_datagram(fields: list[tuple[str, str]]) -> bytes:
    """One entry in the native protocol: ``NAME=value\n``, or for a value with a newline
    ``NAME\n`` + its byte length as 64-bit little endian + the value + ``\n``."""
    parts = []
    for name, value in fields:
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            parts.append(name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def _shared_socket() -> socket.socket:
    # One unbound datagram socket for the process, reused across reconfigurations.
    global _journal_socket
    with _socket_lock:
        if _journal_socket is None:
            _journal_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        return _journal_socket


class _JournalNative:
    """Final processor under systemd: sends the event to journald and drops it from the
    stream; when the socket does not take it, returns the ``<N>``-prefixed JSON line for
    the stream instead. Large entries take that fallback too (no memfd passing): the
    socket refuses a datagram over its size limit with EMSGSIZE."""

    def __init__(self, identifier: str, socket_path: str | os.PathLike[str]) -> None:
        self.identifier = identifier
        self.socket_path = os.fspath(socket_path)
        self.fallback = _JournalPrefixed(structlog.processors.JSONRenderer(ensure_ascii=False))

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        callsite = {key: event.pop(key, None) for key in _CALLSITE_KEYS}
        try:
            datagram = journal_datagram(self.fields(name, event, callsite))
            _shared_socket().sendto(datagram, self.socket_path)
        except Exception:
            return self.fallback(logger, name, event)
        raise structlog.DropEvent

    def fields(
        self, name: str, event: MutableMapping[str, Any], callsite: dict[str, Any]
    ) -> list[tuple[str, str]]:
        priority = JOURNAL_PRIORITY.get(str(event.get("level", name)).lower(), 6)
        message = str(event.get("event", ""))
        if "exception" in event:
            # journalctl shows MESSAGE; the traceback belongs in what it shows.
            message = f"{message}\n{event['exception']}"
        fields = [
            ("PRIORITY", str(priority)),
            ("MESSAGE", message),
            ("SYSLOG_IDENTIFIER", self.identifier),
        ]
        if callsite["pathname"] is not None:
            fields.append(("CODE_FILE", str(callsite["pathname"])))
            fields.append(("CODE_LINE", str(callsite["lineno"])))
            fields.append(("CODE_FUNC", str(callsite["func_name"])))
        fields.extend(
            (journal_field_name(key), _field_value(value))
            for key, value in event.items()
            if key != "event" and key
        )
        return fields


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
    setup_logging(section.level, fmt_override or section.format, log_file=log_file, name=name)


def setup_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    log_file: Path | None = None,
    name: str = "noded",
    journal_socket: str | os.PathLike[str] = JOURNAL_SOCKET,
) -> None:
    """Configure structlog. Logs go to stderr (stdout carries only command results), or
    to `journal_socket` when stderr is the journal's stream; `name` is the journal's
    SYSLOG_IDENTIFIER."""
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
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if journal:
        # The caller's frame, past structlog, the stdlib bridge and logging itself.
        processors.append(
            structlog.processors.CallsiteParameterAdder(
                [
                    structlog.processors.CallsiteParameter.PATHNAME,
                    structlog.processors.CallsiteParameter.LINENO,
                    structlog.processors.CallsiteParameter.FUNC_NAME,
                ],
                additional_ignores=["logging", __name__],
            )
        )
        renderer = _JournalNative(f"hanjullo-{name}", journal_socket)
    structlog.configure(
        processors=[*processors, _mask_processor, renderer],
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
