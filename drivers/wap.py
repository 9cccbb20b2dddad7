"""WAP push carrying an MMS notification (m-notification-ind), both directions.

An LMS reaches a Korean handset as an MMS: first a WAP-push SMS (8-bit, UDH
port 2948) whose body is an m-notification-ind naming the sender, the subject,
the size and where to fetch the message. This module encodes and decodes that
body (WSP push header + MMS headers, OMA-MMS-ENC). Pure functions, no I/O;
malformed input raises :class:`drivers.errors.PduError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.errors import PduError

WAP_PUSH_PORT = 2948
WAP_SOURCE_PORT = 9200
_PUSH_PDU = 0x06
_CT_MMS = 0x3E  # application/vnd.wap.mms-message
MMS_CONTENT_TYPE = "application/vnd.wap.mms-message"
# Well-known content types (WAP-230-WSP table 40) a push to a handset carries.
_WELL_KNOWN_TYPES = {
    0x2E: "application/vnd.wap.sic",  # Service Indication
    0x30: "application/vnd.wap.slc",  # Service Loading
    0x31: "application/vnd.wap.coc",  # Cache Operation
    0x36: "application/vnd.wap.connectivity-wbxml",
    0x3E: MMS_CONTENT_TYPE,
    0x44: "application/vnd.syncml.notification",
}
_APP_ID = 0x2F  # X-Wap-Application-Id
_APP_MMS_UA = 0x04  # x-wap-application:mms.ua

# MMS header field codes (OMA-MMS-ENC 7.4), without the 0x80 flag.
_H_CONTENT_LOCATION = 0x03
_H_EXPIRY = 0x08
_H_FROM = 0x09
_H_MESSAGE_CLASS = 0x0A
_H_MESSAGE_TYPE = 0x0C
_H_VERSION = 0x0D
_H_MESSAGE_SIZE = 0x0E
_H_SUBJECT = 0x16
_H_TRANSACTION_ID = 0x18
_M_NOTIFICATION_IND = 0x82
_UTF8_MIB = 106

# MIBenum -> Python codec for the charsets a Korean handset meets.
_CHARSETS = {
    106: "utf-8",
    3: "ascii",
    4: "latin-1",
    1000: "utf-16-be",
    1015: "utf-16",
    38: "euc-kr",
    36: "euc-kr",
    2025: "cp949",
}


@dataclass(frozen=True, slots=True)
class MmsNotification:
    sender: str
    subject: str | None
    size: int | None
    location: str
    transaction_id: str
    expiry_s: int | None = None
    message_class: str | None = None


# ---- encoding -------------------------------------------------------------------------------
def _uintvar(value: int) -> bytes:
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(groups))


def _value_length(length: int) -> bytes:
    return bytes([length]) if length <= 30 else b"\x1f" + _uintvar(length)


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return (b"\x7f" if raw[:1] and raw[0] >= 0x80 else b"") + raw + b"\x00"


def _long_integer(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return bytes([len(raw)]) + raw


def _encoded_string(value: str) -> bytes:
    body = bytes([0x80 | _UTF8_MIB]) + _text(value)
    return _value_length(len(body)) + body


def encode_notification(note: MmsNotification, transaction: int = 1) -> bytes:
    """The WSP push PDU (what follows the UDH) of an m-notification-ind."""
    mms = bytearray()
    mms += bytes([0x80 | _H_MESSAGE_TYPE, _M_NOTIFICATION_IND])
    mms += bytes([0x80 | _H_TRANSACTION_ID]) + _text(note.transaction_id)
    mms += bytes([0x80 | _H_VERSION, 0x92])  # 1.2
    sender = note.sender if "/TYPE=" in note.sender else f"{note.sender}/TYPE=PLMN"
    from_value = b"\x80" + _text(sender)  # Address-present-token
    mms += bytes([0x80 | _H_FROM]) + _value_length(len(from_value)) + from_value
    if note.subject is not None:
        mms += bytes([0x80 | _H_SUBJECT]) + _encoded_string(note.subject)
    mms += bytes([0x80 | _H_MESSAGE_CLASS, 0x80])  # personal
    mms += bytes([0x80 | _H_MESSAGE_SIZE]) + _long_integer(note.size or 0)
    expiry = b"\x81" + _long_integer(note.expiry_s or 3 * 86400)  # relative token
    mms += bytes([0x80 | _H_EXPIRY]) + _value_length(len(expiry)) + expiry
    mms += bytes([0x80 | _H_CONTENT_LOCATION]) + _text(note.location)
    headers = bytes([0x80 | _CT_MMS, 0x80 | _APP_ID, 0x80 | _APP_MMS_UA])
    return bytes([transaction & 0xFF, _PUSH_PDU]) + _uintvar(len(headers)) + headers + bytes(mms)


# ---- decoding -------------------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise PduError("WAP push ends in the middle of a field")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise PduError("WAP push ends in the middle of a field")
        return self.data[self.pos]

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise PduError("WAP push field runs past the end")
        value = self.data[self.pos : self.pos + count]
        self.pos += count
        return value

    def uintvar(self) -> int:
        value = 0
        for _ in range(5):
            octet = self.byte()
            value = (value << 7) | (octet & 0x7F)
            if not octet & 0x80:
                return value
        raise PduError("uintvar longer than 5 octets")

    def value_length(self) -> int:
        first = self.byte()
        if first <= 30:
            return first
        if first == 31:
            return self.uintvar()
        raise PduError(f"expected a value length, found 0x{first:02x}")

    def text(self) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise PduError("text string without its terminating NUL")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return raw[1:] if raw[:1] in (b"\x7f", b'"') else raw

    def long_integer(self) -> int:
        length = self.byte()
        if not 1 <= length <= 30:
            raise PduError(f"bad long-integer length {length}")
        return int.from_bytes(self.take(length), "big")

    def integer(self) -> int:
        return self.byte() & 0x7F if self.peek() & 0x80 else self.long_integer()

    def skip_value(self) -> None:
        first = self.peek()
        if first >= 0x80:
            self.pos += 1
        elif first <= 31:
            self.take(self.value_length())
        else:
            self.text()


def _charset_text(raw: bytes, mib: int) -> str:
    codec = _CHARSETS.get(mib, "utf-8")
    return raw.decode(codec, errors="replace")


def _encoded_string_value(reader: _Reader) -> str:
    first = reader.peek()
    if first > 31 or first == 0:
        # A text string; a lone NUL is the empty one (MMSCs send an empty Subject so).
        return reader.text().decode("utf-8", errors="replace")
    length = reader.value_length()
    end = reader.pos + length
    # A MIBenum needs at most two octets: a "long integer" longer than that is an MMSC
    # writing the MIBenum without its short-integer flag (gammu's tests/at-sms/33.dump:
    # 0x04 for latin-1).
    mib = reader.byte() if 2 < reader.peek() < 0x80 else reader.integer()
    sub = _Reader(reader.take(end - reader.pos))
    raw = sub.text() if b"\x00" in sub.data else sub.data
    return _charset_text(raw, mib)


def content_type(data: bytes) -> str:
    """The content type a WSP push PDU declares ("" when it declares none we read).

    Raises :class:`PduError` when `data` is not a WSP push at all.
    """
    reader = _Reader(data)
    reader.byte()  # transaction id
    if reader.byte() != _PUSH_PDU:
        raise PduError("not a WSP push PDU")
    headers = _Reader(reader.take(reader.uintvar()))
    first = headers.peek()
    if first & 0x80:
        code = first & 0x7F
        return _WELL_KNOWN_TYPES.get(code, f"0x{code:02x}")
    if first <= 31:  # Content-general-form: value-length, then media type
        headers.value_length()
        first = headers.peek()
        if first & 0x80:
            code = first & 0x7F
            return _WELL_KNOWN_TYPES.get(code, f"0x{code:02x}")
    return headers.text().decode("latin-1").lower()


def decode_push(data: bytes) -> MmsNotification:
    """Decode a WSP push PDU carrying an m-notification-ind."""
    reader = _Reader(data)
    reader.byte()  # transaction id
    if reader.byte() != _PUSH_PDU:
        raise PduError("not a WSP push PDU")
    header_len = reader.uintvar()
    headers = reader.take(header_len)
    if not headers or (headers[0] != 0x80 | _CT_MMS and b"mms-message" not in headers):
        raise PduError("WAP push does not carry an MMS message")
    return decode_mms_headers(reader.data[reader.pos :])


def decode_mms_headers(data: bytes) -> MmsNotification:
    reader = _Reader(data)
    fields: dict[int, object] = {}
    while reader.pos < len(data):
        code = reader.byte()
        if not code & 0x80:
            # An application header (token text): name then value, both text.
            reader.pos -= 1
            reader.text()
            reader.text()
            continue
        code &= 0x7F
        if code == _H_MESSAGE_TYPE:
            fields[code] = reader.byte()
        elif code in (_H_TRANSACTION_ID, _H_CONTENT_LOCATION):
            fields[code] = reader.text().decode("utf-8", errors="replace")
        elif code == _H_FROM:
            length = reader.value_length()
            body = _Reader(reader.take(length))
            token = body.byte()
            if token == 0x80:
                fields[code] = _encoded_string_value(body)
            else:
                fields[code] = ""
        elif code == _H_SUBJECT:
            fields[code] = _encoded_string_value(reader)
        elif code == _H_MESSAGE_SIZE:
            fields[code] = reader.long_integer()
        elif code == _H_EXPIRY:
            length = reader.value_length()
            body = _Reader(reader.take(length))
            body.byte()
            fields[code] = body.long_integer() if body.pos < len(body.data) else None
        elif code == _H_MESSAGE_CLASS:
            value = reader.peek()
            if value & 0x80:
                reader.byte()
                fields[code] = {
                    0x80: "personal",
                    0x81: "advertisement",
                    0x82: "informational",
                    0x83: "auto",
                }.get(value, "unknown")
            else:
                fields[code] = reader.text().decode("utf-8", errors="replace")
        else:
            reader.skip_value()
    if fields.get(_H_MESSAGE_TYPE) != _M_NOTIFICATION_IND:
        raise PduError("MMS PDU is not an m-notification-ind")
    location = fields.get(_H_CONTENT_LOCATION)
    if not isinstance(location, str):
        raise PduError("m-notification-ind without a content location")
    sender = fields.get(_H_FROM, "")
    subject = fields.get(_H_SUBJECT)
    size = fields.get(_H_MESSAGE_SIZE)
    expiry = fields.get(_H_EXPIRY)
    klass = fields.get(_H_MESSAGE_CLASS)
    return MmsNotification(
        sender=str(sender),
        subject=subject if isinstance(subject, str) else None,
        size=size if isinstance(size, int) else None,
        location=location,
        transaction_id=str(fields.get(_H_TRANSACTION_ID, "")),
        expiry_s=expiry if isinstance(expiry, int) else None,
        message_class=klass if isinstance(klass, str) else None,
    )
