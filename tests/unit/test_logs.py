from __future__ import annotations

import io
import json
import os
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


def journal_env(stream: Any) -> dict[str, str]:
    info = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}


def test_under_systemd_each_line_carries_its_priority_and_its_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w+", encoding="utf-8") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        setup_logging("debug", "auto", stream=stream)
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
        setup_logging("info", "auto", stream=stream)
        logging.getLogger("apscheduler.scheduler").warning("job missed by 01012345678")
        logging.getLogger("asyncio").debug("below the level")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert len(lines) == 1 and lines[0].startswith("<4>")
    entry = json.loads(lines[0][3:])
    assert entry["event"] == "job missed by 010****5678"
    assert entry["logger"] == "apscheduler.scheduler"
