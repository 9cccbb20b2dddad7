from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from config.logs import is_journal_stream, mask_phones, setup_logging


@pytest.fixture(autouse=True)
def _logging_back_to_stderr() -> Iterator[None]:
    # The tests below point the logs at files they close; later tests log to stderr.
    yield
    setup_logging()


def test_mask_phones() -> None:
    assert mask_phones("01012345678") == "010****5678"
    assert mask_phones("to 010-1234-5678 now") == "to 010-****-5678 now"
    assert mask_phones("+82 10-1234-5678") == "+82 10-****-5678"
    assert mask_phones("0212345678") == "021***5678"
    assert mask_phones("seq 123456789012345") == "seq 123456789012345"


def test_logs_never_carry_a_phone_number() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    structlog.get_logger("t").info("sent", dest="01098765432", note="to 01098765432")
    line = json.loads(out.getvalue())
    assert "01098765432" not in out.getvalue()
    assert line["dest"] == "010****5432"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("821012345678", "8210****5678"),
        ("+821012345678", "+8210****5678"),
        ("+82 10-1234-5678", "+82 10-****-5678"),
        ("+82-10-1234-5678", "+82-10-****-5678"),
        ("+82 (0)10-1234-5678", "+82 (0)10-****-5678"),
        ("82 10 1234 5678", "82 10 **** 5678"),
        ("010.1234.5678", "010.****.5678"),
        ("010.123.4567", "010.***.4567"),
        ("(010)1234-5678", "(010)****-5678"),
        ("to 010.1234.5678, +82 10-9876-5432 and 821055556666.", None),
    ],
)
def test_every_written_form_of_a_korean_number_is_masked(text: str, masked: str | None) -> None:
    out = mask_phones(text)
    if masked is not None:
        assert out == masked
    assert not re.search(r"[0-9]{3,4}[-. ]?[0-9]{4}(?![0-9])", out.replace("5678", "")), out
    assert "1234" not in out and "9876" not in out and "5555" not in out


def test_numbers_that_are_not_phones_stay() -> None:
    for text in ("seq 123456789012345", "run 20261202 batch 1000", "v1.2.3", "8.2 s", "1588-6000"):
        assert mask_phones(text) == text


def test_logs_mask_numbers_in_nested_values_and_numbers() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    structlog.get_logger("t").info(
        "sent",
        recipient={"dest": "+82 10-1234-5678", "parts": ["010.1234.5678"]},
        raw=821012345678,
        pairs=[("dest", "821012345678")],
    )
    text = out.getvalue()
    assert "1234" not in text, text
    line = json.loads(text)
    assert line["recipient"]["dest"] == "+82 10-****-5678"
    assert line["raw"] == "8210****5678"


def journal_env(stream: Any) -> dict[str, str]:
    info = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}


def test_without_journald_each_line_carries_its_priority_and_its_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w+", encoding="utf-8") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        # No journald at the socket: the old line on stderr.
        setup_logging("debug", "auto", stream=stream, journal_socket=tmp_path / "absent")
        log = structlog.get_logger("t")
        log.error("receipt not recorded", modem="KT", sender="01098765432")
        log.warning("lease lost", group="bulk-1")
        log.info("ready", socket="/run/hanjullo/node.sock")
        log.debug("raw", data="AT+CMGR=1")
        try:
            raise ValueError("bad\nframe")
        except ValueError:
            log.exception("decoder failed", company="한줄로")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<7>", "<3>"]
    first = json.loads(lines[0][3:])
    assert first["event"] == "receipt not recorded" and first["modem"] == "KT"
    assert first["sender"] == "010****5432" and "01098765432" not in "".join(lines)
    # A traceback stays in its entry (one line), and Korean stays readable.
    last = json.loads(lines[4][3:])
    assert "ValueError: bad\nframe" in last["exception"] and last["company"] == "한줄로"


def test_a_stream_that_is_not_the_journals_gets_no_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "a").open("w+") as journal, (tmp_path / "b").open("w+") as redirected:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(journal)["JOURNAL_STREAM"])
        assert is_journal_stream(journal) and not is_journal_stream(redirected)
        setup_logging("info", "auto", stream=redirected)
        structlog.get_logger("t").warning("lease lost", group="bulk-1")
        redirected.seek(0)
        assert json.loads(redirected.read())["event"] == "lease lost"
    assert not is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    assert not is_journal_stream(journal, {"JOURNAL_STREAM": "garbage"})


def test_a_librarys_stdlib_log_goes_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    with (tmp_path / "journal").open("w+", encoding="utf-8") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        setup_logging("info", "auto", stream=stream, journal_socket=tmp_path / "absent")
        logging.getLogger("apscheduler.scheduler").warning("job missed by 01012345678")
        logging.getLogger("asyncio").debug("below the level")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert len(lines) == 1 and lines[0].startswith("<4>")
    entry = json.loads(lines[0][3:])
    assert entry["event"] == "job missed by 010****5678"
    assert entry["logger"] == "apscheduler.scheduler"


def parse_entry(datagram: bytes) -> list[tuple[str, str]]:
    """The fields of one native-protocol datagram, read as systemd.io/JOURNAL_NATIVE_PROTOCOL
    describes it (independent of the writer): ``NAME=value\\n``, or ``NAME\\n`` + 64-bit
    little-endian length + value + ``\\n``."""
    fields = []
    at = 0
    while at < len(datagram):
        end = datagram.index(b"\n", at)
        line = datagram[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            at = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", datagram, end + 1)
            start = end + 1 + 8
            value = datagram[start : start + size]
            assert datagram[start + size : start + size + 1] == b"\n", datagram
            at = start + size + 1
        assert re.fullmatch(rb"[A-Z][A-Z0-9_]{0,63}", name), name
        fields.append((name.decode(), value.decode("utf-8")))
    return fields


@pytest.fixture
def journald(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A relative path: tmp_path can be longer than a Unix socket address allows.
    monkeypatch.chdir(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("journal.sock")
        server.setblocking(False)
        yield server


def received(server: socket.socket) -> list[bytes]:
    datagrams = []
    while True:
        try:
            datagrams.append(server.recv(1 << 20))
        except BlockingIOError:
            return datagrams


def test_under_systemd_each_event_goes_to_journald_with_its_fields(
    journald: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open("stderr", "w+", encoding="utf-8") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        setup_logging("debug", "auto", stream=stream, journal_socket="journal.sock")
        log = structlog.get_logger("t")
        log.error("receipt not recorded", modem="KT", sender="01098765432", message="x")
        log.warning("lease lost", group={"name": "bulk-1", "phones": ["010-1234-5678"]})
        log.info("ready", **{"socket": "/run/hanjullo/node.sock", "2nd-try": True})
        log.debug("raw", data="AT+CMGR=1", _private=1)
        try:
            raise ValueError("bad\nframe")
        except ValueError:
            log.exception("decoder failed", company="한줄로")
        stream.seek(0)
        assert stream.read() == ""  # nothing fell back to stderr
    datagrams = received(journald)
    assert len(datagrams) == 5
    assert not any(b"98765432" in d or b"1234" in d for d in datagrams)
    entries = [dict(parse_entry(d)) for d in datagrams]
    assert [e["PRIORITY"] for e in entries] == ["3", "4", "6", "7", "3"]
    assert [e["MESSAGE"].split("\n")[0] for e in entries] == [
        "receipt not recorded",
        "lease lost",
        "ready",
        "raw",
        "decoder failed",
    ]
    first = entries[0]
    assert first["SYSLOG_IDENTIFIER"] == "hanjullo-noded"
    assert first["MODEM"] == "KT" and first["SENDER"] == "010****5432"
    assert first["X_MESSAGE"] == "x" and first["LEVEL"] == "error"
    assert first["CODE_FILE"] == __file__ and first["CODE_LINE"].isdigit()
    assert first["CODE_FUNC"] == "test_under_systemd_each_event_goes_to_journald_with_its_fields"
    assert json.loads(entries[1]["GROUP"]) == {"name": "bulk-1", "phones": ["010-****-5678"]}
    assert entries[2]["SOCKET"] == "/run/hanjullo/node.sock" and entries[2]["X_2ND_TRY"] == "true"
    assert entries[3]["DATA"] == "AT+CMGR=1" and entries[3]["X__PRIVATE"] == "1"
    # A traceback travels binary-safe, and in MESSAGE so that journalctl shows it.
    last = entries[4]
    assert "ValueError: bad\nframe" in last["EXCEPTION"] and last["COMPANY"] == "한줄로"
    assert last["MESSAGE"].startswith("decoder failed\nTraceback")
    assert b"\nEXCEPTION\n" in datagrams[4]


def test_a_librarys_log_reaches_journald_from_its_own_line(
    journald: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    with open("stderr", "w+", encoding="utf-8") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        setup_logging("info", "auto", stream=stream, journal_socket="journal.sock", name="sim")
        logging.getLogger("apscheduler.scheduler").warning("job missed by 01012345678")
    (entry,) = (dict(parse_entry(d)) for d in received(journald))
    assert entry["PRIORITY"] == "4" and entry["MESSAGE"] == "job missed by 010****5678"
    assert entry["LOGGER"] == "apscheduler.scheduler" and entry["CODE_FILE"] == __file__
    assert entry["SYSLOG_IDENTIFIER"] == "hanjullo-sim"


def test_without_journald_or_for_a_large_entry_the_line_goes_to_stderr(
    journald: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open("stderr", "w+", encoding="utf-8") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        setup_logging("info", "auto", stream=stream, journal_socket="absent.sock")
        structlog.get_logger("t").warning("lease lost", sender="01098765432")
        setup_logging("info", "auto", stream=stream, journal_socket="journal.sock")
        structlog.get_logger("t").error("huge", dump="x" * (8 << 20))
        structlog.get_logger("t").info("small again")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert [line[:3] for line in lines] == ["<4>", "<3>"]
    first = json.loads(lines[0][3:])
    assert first["event"] == "lease lost" and first["sender"] == "010****5432"
    assert len(json.loads(lines[1][3:])["dump"]) == 8 << 20
    (entry,) = (dict(parse_entry(d)) for d in received(journald))
    assert entry["MESSAGE"] == "small again"
