"""`hanjulloctl send`'s input files: a broken one is a message naming the line, never a
traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from daemon.cli.common import CtlError
from daemon.cli.runs import _recipients


def args(**given: object) -> argparse.Namespace:
    values: dict[str, object] = {"csv": None, "phones": None, "message": None, "subject": None}
    values.update(given)
    return argparse.Namespace(**values)


def test_a_utf8_csv_is_read_with_its_bom_and_a_quoted_line_break(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    text = 'phone,text,subject\n01012345678,"안녕하세요\n둘째 줄",제목\n01087654321,hi,\n'
    path.write_bytes(text.encode("utf-8-sig"))
    got = list(_recipients(args(csv=str(path))))
    assert [(r.phone, r.text, r.subject) for r in got] == [
        ("01012345678", "안녕하세요\n둘째 줄", "제목"),
        ("01087654321", "hi", None),
    ]


def test_broken_utf8_in_a_csv_names_the_file_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    # Line 2 holds a quoted line break, so the broken record starts on physical line 4.
    path.write_bytes(b'phone,text\n01012345678,"two\nlines"\n01087654321,ok \xff\xfe broken\n')
    with pytest.raises(CtlError) as info:
        list(_recipients(args(csv=str(path))))
    message = str(info.value)
    assert message.startswith(f"{path}:4: not UTF-8 (byte 0xff at column 16)"), message
    assert "fix: save the file as UTF-8" in message


def test_a_cp949_csv_from_excel_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("phone,text\n01012345678,(광고) 한줄로\n".encode("cp949"))
    with pytest.raises(CtlError) as info:
        list(_recipients(args(csv=str(path))))
    assert str(info.value).startswith(f"{path}:2: not UTF-8")
    assert "CP949" in str(info.value) and "CSV UTF-8" in str(info.value)


def test_broken_utf8_in_a_phones_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "phones.txt"
    path.write_bytes(b"01012345678\n# \xc0 comment\n")
    with pytest.raises(CtlError) as info:
        list(_recipients(args(phones=str(path), message="hi")))
    assert str(info.value).startswith(f"{path}:2: not UTF-8 (byte 0xc0 at column 3)")
