"""Our codec on PDUs real modems and MMSCs produced, from other projects' public test suites.

Data only, each vector cited by project, commit and path. Where python-gammu decodes a
vector, its reading is the oracle (an independent decoder); KSC5601 texts are built here
with Python's own EUC-KR codec, the DCS rule is AOSP's (GSM SmsMessage.parseUserData:
DCS 0x84 "used for KSC5601 by carriers in Korea").
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import gammu
import pytest

from daemon.cli.main import main as ctl_main
from daemon.cli.pdu import describe
from drivers import gsm7, pdu, wap
from drivers.errors import PduError

GAMMU = "gammu/gammu@78fd6a9212f3271a28c46f1cb8f7c302cd43a9b0"
MESSAGING = "pmarti/python-messaging@8c62c14e519d30de8534de2a4a51fa8d3998c81a"
KST = timezone(timedelta(hours=9))

# gammu tests/at-sms/40.dump: an MMSC's m-notification-ind with an empty Subject.
GAMMU_40 = (
    "07912374151616F6440B911174164210F000F571309290346280860605040B8423F04F062261707"
    "06C69636174696F6E2F766E642E7761702E6D6D732D6D65737361676500AF848C82983831343630"
    "343934406D6D7331008D928918802B33333333333439333231312F545950453D504C4D4E0096008F"
    "8186818A808E03017A598805810303F48083687474703A2F2F6D74732F3F69643D38313436303439"
    "3400"
)
# gammu tests/at-sms/33.dump: an m-notification-ind without Message-Class first, size 0x22.
GAMMU_33 = (
    "07913307005630F0440BA13307570230F00006017010900412806A0605040B8423F0040603BEAF84"
    "8C829831323737393730303539008D92891980160433333730373532303033302F545950453D504C"
    "4D4E009679424F008A808E0122880481020BB883687474703A2F2F6D6D73632E6C61626D6374656C"
    "2E66723A393039302F6D333300"
)
# gammu tests/at-sms/09.dump: address type 0xC8, year 99.
GAMMU_09 = "07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37"
# gammu tests/at-sms/32.dump: a status report as the modem printed it, FF padding after.
GAMMU_32 = "079124602009999002AB098106845688F8907080517375809070805183018000" + "FF" * 24
# gammu tests/at-sms/41.dump: lower-case hex, empty SMSC (00), an SMS-SUBMIT.
GAMMU_41 = (
    "0041000b817777777777f700005d060504157800004de1135b851283d4e2afdd8bd576f3b2dc5e96"
    "f7dc617a788e2ebbd761173c2ca7e777f0b79cdecbe5663bf8bdc74e57cdcfbcf5b97387dbe59e1b"
    "e00ed3c37374d9bd0ebbe06139"
)
# gammu tests/at-sms/42.dump: DCS 0xFB (class 3), PID 0.
GAMMU_42 = (
    "06914977000030200B914977745010F700FB918050809053221DB15CEC868BC96630180804028164"
    "32DD0C060281A4412A159904"
)
# python-messaging messaging/test/test_wap.py test_decoding_m_notification_ind: a two-part
# notification, 16-bit reference 40846, sender type 0x80.
MESSAGING_MMS = (
    "0791447758100650400E80885810000000810004016082415464408C0C08049F8E020105040B8423"
    "F00106226170706C69636174696F6E2F766E642E7761702E6D6D732D6D65737361676500AF848C82"
    "984E4F4B3543694B636F544D595347344D4253774141734B7631344655484141414141414141008D"
    "908919802B3434373738353334323734392F545950453D504C4D4E008A808E027400880581030119"
    "4083687474703A2F",
    "0791447758100650440E8088581000000081000401608241547440440C08049F8E020205040B8423"
    "F02F70726F6D6D732F736572766C6574732F4E4F4B3543694B636F544D595347344D425377414173"
    "4B763134465548414141414141414100",
)
# python-messaging test_decoding_generic_wap_push: a two-part Service Indication.
MESSAGING_SI = (
    "0791947122725014440C8500947122921105F5112042519582408C0B05040B8423F0000396020101"
    "060B03AE81EAC3958D01A2B48403056A0A20566F6461666F6E650045C60C037761702E6D65696E63"
    "616C6C79612E64652F000801035A756D206B6F7374656E6C6F73656E20506F7274616C20224D6569"
    "6E0083000322202D2065696E66616368206175662064656E20666F6C67656E64656E204C696E6B20"
    "6B6C69636B656E",
    "0791947122725014440C8500947122921105F5112042519592403C0B05040B8423F0000396020220"
    "6F6465722064696520536569746520646972656B7420617566727566656E2E2049687200830003205"
    "465616D000101",
)


def oracle(hex_pdu: str) -> dict[str, object]:
    """python-gammu's reading of a PDU (SMSC included)."""
    sms: dict[str, object] = gammu.DecodePDU(bytes.fromhex(hex_pdu), SMSC=True)
    return sms


def join(hex_parts: tuple[str, ...]) -> pdu.Message:
    joiner = pdu.Reassembler(60)
    out: list[pdu.Message] = []
    for hex_pdu in hex_parts:
        part = pdu.decode(hex_pdu)
        assert isinstance(part, pdu.Deliver)
        out += joiner.add(part, 0.0)
    assert len(out) == 1
    return out[0]


def test_gammu_40_empty_subject_notification_decodes(capsys: pytest.CaptureFixture[str]) -> None:
    """Source: GAMMU tests/at-sms/40.dump (on main: "WAP push field runs past the end")."""
    assert ctl_main(["pdu", "decode", GAMMU_40, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "mms-notification"
    assert info["sender"] == "+33333493211"
    assert (info["subject"], info["size"]) == ("", 96857)
    assert info["location"] == "http://mts/?id=81460494"
    message = join((GAMMU_40,))
    assert message.kind == pdu.Kind.MMS_NOTIFICATION and message.mms is not None
    assert (message.mms.subject, message.mms.size) == ("", 96857)


def test_gammu_33_notification_with_a_subject() -> None:
    """Source: GAMMU tests/at-sms/33.dump."""
    message = join((GAMMU_33,))
    assert message.mms is not None and message.mms.subject == "yBO"
    assert message.mms.size == 0x22 and message.sender == "33707520030"


def test_two_part_notification_with_16_bit_reference_and_no_subject() -> None:
    """Source: MESSAGING messaging/test/test_wap.py (test_decoding_m_notification_ind)."""
    first = pdu.decode(MESSAGING_MMS[0])
    assert isinstance(first, pdu.Deliver) and first.concat is not None
    assert (first.concat.ref, first.concat.ref_bits, first.concat.total) == (40846, 16, 2)
    assert first.sender == "88850100000018"  # address type 0x80
    message = join(tuple(reversed(MESSAGING_MMS)))  # parts in either order
    assert message.kind == pdu.Kind.MMS_NOTIFICATION and message.mms is not None
    assert message.mms.subject is None and message.mms.size == 29696
    assert message.mms.location == "http://promms/servlets/NOK5CiKcoTMYSG4MBSwAAsKv14FUHAAAAAAAA"
    assert message.mms.transaction_id == "NOK5CiKcoTMYSG4MBSwAAsKv14FUHAAAAAAAA"
    assert message.sender == "+447785342749"


def test_a_service_indication_is_a_wap_push_not_an_mms() -> None:
    """Source: MESSAGING messaging/test/test_wap.py (test_decoding_generic_wap_push)."""
    info = describe(MESSAGING_SI[0])
    assert info["kind"] == "wap-push" and info["content_type"] == "application/vnd.wap.sic"
    message = join(MESSAGING_SI)
    assert message.kind == pdu.Kind.WAP_PUSH and message.mms is None and message.text == ""


def test_year_99_is_1999_and_type_c8_sender() -> None:
    """Source: GAMMU tests/at-sms/09.dump; gammu reads 90-99 as the 1990s."""
    part = pdu.decode(GAMMU_09)
    assert isinstance(part, pdu.Deliver)
    sms = oracle(GAMMU_09)
    assert part.timestamp.year == 1999  # python-gammu 1.45 itself says 2089 here
    assert part.text == sms["Text"] == "hellohello"
    assert part.sender == sms["Number"]


def test_status_report_with_ff_padding_is_a_status_report() -> None:
    """Source: GAMMU tests/at-sms/32.dump."""
    report = pdu.decode(GAMMU_32)
    assert isinstance(report, pdu.StatusReport)
    assert (report.reference, report.status) == (0xAB, 0)
    assert describe(GAMMU_32)["kind"] == "status-report"


def test_lower_case_hex_and_empty_smsc_parse_and_a_submit_is_refused_clearly() -> None:
    """Source: GAMMU tests/at-sms/41.dump (an SMS-SUBMIT: not something a handset receives)."""
    assert pdu.parse_hex(GAMMU_41)[:2] == b"\x00\x41"
    with pytest.raises(PduError, match="SMS-SUBMIT"):
        pdu.decode(GAMMU_41)


def test_class_3_with_the_reserved_bit_is_gsm_7bit() -> None:
    """Source: GAMMU tests/at-sms/42.dump: DCS 0xFB (group 1111: bit 2 clear = GSM 7-bit,
    class 3). python-gammu 1.45 hands it out as 8-bit bytes; the septets read as text."""
    part = pdu.decode(GAMMU_42)
    assert isinstance(part, pdu.Deliver) and part.encoding == pdu.Encoding.GSM7
    assert part.text == "1917812300     22:30   RATTHI"
    assert part.sender == oracle(GAMMU_42)["Number"] == "+94774705017"


@pytest.mark.parametrize("name", ["ABCDEFG", "Hanjullo", "KT", "SKTelecom1"])
def test_alphanumeric_senders_of_odd_and_even_length_match_gammu(name: str) -> None:
    """Alphanumeric originators (TON 101), built here and read back by python-gammu."""
    septets = gsm7.encode(name)
    digits = gsm7.pack(septets)
    semi_octets = (len(septets) * 7 + 3) // 4
    tpdu = bytes([0x04, semi_octets, 0xD0]) + digits + bytes([0x00, 0x00])
    tpdu += bytes.fromhex("62301090001063") + bytes([2]) + gsm7.pack(gsm7.encode("hi"))
    hex_pdu = ("00" + tpdu.hex()).upper()
    part = pdu.decode(hex_pdu)
    assert isinstance(part, pdu.Deliver)
    assert part.sender == oracle(hex_pdu)["Number"] == name


def test_ksc5601_text_decodes_as_korean(capsys: pytest.CaptureFixture[str]) -> None:
    """DCS 0x84 (on main: Latin-1 "ÇÑÁÙ·Î …")."""
    text = "한줄로 스팸 테스트 문자입니다"
    (raw,) = pdu.encode_deliver(
        "0212345678", text, datetime(2026, 3, 1, 9, tzinfo=KST), encoding=pdu.Encoding.KSC5601
    )
    assert raw[raw.index(b"\x00", 2) + 1] == 0x84  # PID 00 then DCS 0x84
    assert text.encode("euc-kr") in raw
    part = pdu.decode(raw.hex())
    assert isinstance(part, pdu.Deliver) and part.encoding == pdu.Encoding.KSC5601
    assert part.text == text
    assert ctl_main(["pdu", "decode", raw.hex(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == text


def test_long_ksc5601_text_is_joined_from_its_parts() -> None:
    text = "한줄로 긴 KSC5601 문자 " * 12
    parts = pdu.encode_deliver(
        "0212345678", text, datetime(2026, 3, 1, 9, tzinfo=KST), encoding=pdu.Encoding.KSC5601
    )
    assert len(parts) > 1
    assert join(tuple(p.hex() for p in parts)).text == text


def test_escape_before_an_unmapped_code_reads_as_the_basic_character() -> None:
    """3GPP TS 23.038 6.2.1.1: ESC + an unmapped code shows the default-alphabet character."""
    assert gsm7.decode([0x1B, 0x41, 0x1B, 0x65]) == "A€"
    assert gsm7.decode([0x1B, 0x1B]) == " "


def test_content_type_of_an_mms_push() -> None:
    note = wap.MmsNotification("+821012345678", None, 10, "http://x/1", "T1")
    assert wap.content_type(wap.encode_notification(note)) == wap.MMS_CONTENT_TYPE
