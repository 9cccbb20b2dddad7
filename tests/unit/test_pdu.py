"""The PDU codec against python-gammu (an independent decoder) and against itself."""

from __future__ import annotations

import ast
from datetime import datetime, timedelta, timezone
from pathlib import Path

import gammu
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from drivers import gsm7, pdu, wap
from drivers.errors import PduError

KST = timezone(timedelta(hours=9))
WHEN = datetime(2026, 11, 27, 15, 30, 5, tzinfo=KST)

korean = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
ascii_ = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
emoji = st.sampled_from("😀🎉🚀👍💡🇰🇷")
gsm_ext = st.sampled_from("^{}\\[~]|€")
texts = st.text(st.one_of(korean, ascii_, emoji, gsm_ext), min_size=1, max_size=400)
senders = st.sampled_from(["0212345678", "15886000", "+821012345678", "01098765432"])


def gammu_join(parts: list[bytes]) -> tuple[str, str]:
    decoded = [[gammu.DecodePDU(p, SMSC=True)] for p in parts]
    linked = gammu.LinkSMS(decoded)
    assert len(linked) == 1
    info = gammu.DecodeSMS(linked[0])
    text = info["Entries"][0]["Buffer"] if info else linked[0][0]["Text"]
    # python-gammu pads a GSM 7-bit text with one NUL per escape septet (the Debian gammu
    # CLI does not): strip that padding, it is not part of the message.
    return linked[0][0]["Number"], text.rstrip("\x00")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, sender=senders, ref=st.integers(0, 255), sixteen=st.booleans())
def test_python_gammu_decodes_what_the_simulator_encodes(
    text: str, sender: str, ref: int, sixteen: bool
) -> None:
    # python-gammu turns "~" inside a UCS2 text into gammu's internal escape ("~가" reads
    # "~~"); our PDU bytes are right there (the gammu CLI test prints them correctly).
    assume(not ("~" in text and pdu.choose_encoding(text) == pdu.Encoding.UCS2))
    parts = pdu.encode_deliver(
        sender, text, WHEN, "+821000000000", reference=ref, sixteen_bit_ref=sixteen
    )
    number, decoded = gammu_join(parts)
    assert number == sender
    assert decoded == text
    for raw in parts:
        single = gammu.DecodePDU(raw, SMSC=True)
        assert single["DateTime"] == WHEN
        mine = pdu.decode(raw)
        assert isinstance(mine, pdu.Deliver)
        if len(parts) > 1:
            assert mine.concat is not None
            assert (mine.concat.ref, mine.concat.total, mine.concat.seq) == (
                single["UDH"]["ID16bit"] if sixteen else single["UDH"]["ID8bit"],
                single["UDH"]["AllParts"],
                single["UDH"]["PartNumber"],
            )


@settings(max_examples=200, deadline=None)
@given(text=texts, sender=senders, order=st.randoms(use_true_random=False))
def test_reassembly_in_any_order_round_trips(text: str, sender: str, order: object) -> None:
    parts = pdu.encode_deliver(sender, text, WHEN, reference=42)
    shuffled = list(parts)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    joiner = pdu.Reassembler(timeout_s=60)
    out: list[pdu.Message] = []
    for raw in shuffled:
        decoded = pdu.decode(raw)
        assert isinstance(decoded, pdu.Deliver)
        out += joiner.add(decoded, 0.0)
    assert len(out) == 1 and out[0].complete
    assert out[0].text == text and out[0].sender == sender


def test_parts_that_never_complete_come_out_as_partial() -> None:
    parts = pdu.encode_deliver("0212345678", "가" * 200, WHEN, reference=3)
    joiner = pdu.Reassembler(timeout_s=10)
    first = pdu.decode(parts[0])
    assert isinstance(first, pdu.Deliver)
    assert joiner.add(first, 0.0) == []
    assert joiner.expire(5.0) == []
    (partial,) = joiner.expire(10.0)
    assert not partial.complete and partial.missing == (2, 3)
    assert partial.text == "가" * 67


def test_gsm7_extension_and_packing_round_trip() -> None:
    text = "Price: 10€ [x] {y} ^~|\\"
    septets = gsm7.encode(text)
    assert gsm7.decode(gsm7.unpack(gsm7.pack(septets), len(septets))) == text
    assert pdu.choose_encoding(text) == pdu.Encoding.GSM7
    assert pdu.choose_encoding("`backtick") == pdu.Encoding.UCS2


def test_timestamp_zone_and_status_report() -> None:
    minus = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-4, minutes=-30)))
    raw = pdu.encode_status_report("01012345678", 77, WHEN, minus, status=0, smsc="+821000000000")
    report = pdu.decode(raw)
    assert isinstance(report, pdu.StatusReport)
    assert report.reference == 77 and report.recipient == "01012345678"
    assert report.timestamp == WHEN and report.discharge == minus
    assert report.timestamp.utcoffset() == timedelta(hours=9)


def test_mms_notification_spanning_two_parts() -> None:
    note = wap.MmsNotification(
        "+821012345678",
        "한줄로 LMS 제목이 조금 긴 안내문입니다",
        2400,
        "http://mms.example/" + "a" * 60,
        "T0000000042",
    )
    parts = pdu.encode_wap_push("+821012345678", wap.encode_notification(note), WHEN, reference=9)
    assert len(parts) >= 2
    joiner = pdu.Reassembler(timeout_s=60)
    out: list[pdu.Message] = []
    for raw in reversed(parts):
        decoded = pdu.decode(raw)
        assert isinstance(decoded, pdu.Deliver) and decoded.is_wap_push
        out += joiner.add(decoded, 0.0)
    (message,) = out
    assert message.kind == pdu.Kind.MMS_NOTIFICATION
    assert message.mms is not None
    assert message.mms.subject == note.subject and message.mms.size == 2400
    assert message.mms.location == note.location and message.mms.transaction_id == "T0000000042"
    assert message.sender == "+821012345678"


def test_gammu_recognises_our_wap_push() -> None:
    note = wap.MmsNotification("+821012345678", "subject", 1000, "http://m/x", "T1")
    (raw,) = pdu.encode_wap_push("+821012345678", wap.encode_notification(note), WHEN)
    decoded = gammu.DecodePDU(raw, SMSC=True)
    assert decoded["UDH"]["Type"] in ("MMSIndicatorLong", "UserUDH")
    assert decoded["Coding"] == "8bit"


@pytest.mark.parametrize("bad", ["", "0", "zz", "00", "0791280100000000040C9128", "07910000"])
def test_malformed_pdus_raise_the_codec_error(bad: str) -> None:
    with pytest.raises(PduError):
        pdu.decode(bad)


def test_codec_never_imports_gammu() -> None:
    root = Path(__file__).resolve().parents[2] / "drivers"
    for name in ("pdu.py", "gsm7.py", "wap.py", "errors.py"):
        tree = ast.parse((root / name).read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (
                node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
            )
        }
        assert "gammu" not in imported, name


@settings(max_examples=200, deadline=None)
@given(text=texts, sender=senders, sixteen=st.booleans())
def test_codec_decodes_what_python_gammu_encodes(text: str, sender: str, sixteen: bool) -> None:
    unicode = pdu.choose_encoding(text) == pdu.Encoding.UCS2
    assume(not (unicode and "~" in text))  # python-gammu's own "~" escape, see above
    kind = "ConcatenatedTextLong16bit" if sixteen else "ConcatenatedTextLong"
    parts = gammu.EncodeSMS(
        {"Class": -1, "Unicode": unicode, "Entries": [{"ID": kind, "Buffer": text}]}
    )
    joiner = pdu.Reassembler(timeout_s=60)
    out: list[pdu.Message] = []
    for part in parts:
        part.update(
            Number=sender,
            Type="Deliver",
            DateTime=WHEN,
            SMSC={"Location": 0, "Number": "+821000000000"},
        )
        decoded = pdu.decode(gammu.EncodePDU(part, Layout="Deliver"))
        assert isinstance(decoded, pdu.Deliver)
        assert decoded.sender == sender
        udh = part["UDH"]
        if len(parts) > 1:
            assert decoded.concat is not None
            ref = udh["ID16bit"] if sixteen else udh["ID8bit"]
            assert (decoded.concat.ref, decoded.concat.total, decoded.concat.seq) == (
                ref,
                udh["AllParts"],
                udh["PartNumber"],
            )
        out += joiner.add(decoded, 0.0)
    assert len(out) == 1 and out[0].complete
    assert out[0].text == text


def test_pdu_decode_cli(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from daemon.cli.main import main as ctl

    (raw,) = pdu.encode_deliver("0212345678", "안녕 한줄로", WHEN, "+821000000000")
    assert ctl(["pdu", "decode", raw.hex().upper(), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {
        "kind": "sms",
        "sender": "0212345678",
        "text": "안녕 한줄로",
        "timestamp": "2026-11-27T15:30:05+09:00",
        "encoding": "ucs2",
        "concat": None,
        "smsc": "+821000000000",
    }
    note = wap.MmsNotification("+821012345678", "제목", 1200, "http://m/x1", "T9")
    (push,) = pdu.encode_wap_push("+821012345678", wap.encode_notification(note), WHEN)
    assert ctl(["pdu", "decode", push.hex(), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "mms-notification" and info["subject"] == "제목"
    assert (info["size"], info["location"], info["transaction_id"]) == (1200, "http://m/x1", "T9")
    parts = pdu.encode_deliver("0212345678", "가" * 100, WHEN, reference=5)
    assert ctl(["pdu", "decode", parts[1].hex()]) == 0
    assert "'seq': 2" in capsys.readouterr().out
    assert ctl(["pdu", "decode", "07912801000000000"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot decode PDU" in captured.err
