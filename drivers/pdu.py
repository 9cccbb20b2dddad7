"""SMS PDUs (3GPP TS 23.040) as a modem prints them in PDU mode, both directions.

Decodes SMS-DELIVER (GSM 7-bit with the extension table, 8-bit, UCS2 including
characters outside the BMP), user-data headers (8- and 16-bit concatenation,
8- and 16-bit port addressing), service-centre timestamps with their zone, and
SMS-STATUS-REPORT; encodes SMS-DELIVER (split into concatenated parts when
long) for the modem simulator. Concatenated parts are joined by
:class:`Reassembler`, in any order; WAP-push MMS notifications are decoded
after joining. Pure Python; never imports gammu. The only error raised for bad
input is :class:`drivers.errors.PduError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum

from drivers import gsm7, wap
from drivers.errors import PduError
from drivers.wap import MmsNotification


class Encoding(StrEnum):
    GSM7 = "gsm7"
    EIGHT_BIT = "8bit"
    UCS2 = "ucs2"
    # DCS 0x84, a reserved coding group that Korean carriers use for KSC5601 (EUC-KR);
    # AOSP's GSM SmsMessage.parseUserData decodes it so.
    KSC5601 = "ksc5601"


# The DCS Korean carriers send KSC5601 texts with.
KSC5601_DCS = 0x84
# cp949 is a superset of EUC-KR (KS X 1001): every EUC-KR text decodes the same.
_KSC5601_CODEC = "cp949"


class Kind(StrEnum):
    SMS = "sms"
    STATUS_REPORT = "status-report"
    MMS_NOTIFICATION = "mms-notification"
    # A WAP push that is not an MMS notification (Service Indication/Loading, other):
    # kept and recorded, never an LMS.
    WAP_PUSH = "wap-push"


@dataclass(frozen=True, slots=True)
class Concat:
    ref: int
    total: int
    seq: int
    ref_bits: int = 8

    def as_json(self) -> dict[str, int]:
        return {"ref": self.ref, "total": self.total, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Deliver:
    """One SMS-DELIVER PDU, decoded."""

    smsc: str
    sender: str
    timestamp: datetime
    encoding: Encoding
    text: str  # this part's text ("" for binary 8-bit data)
    data: bytes  # this part's user data without the header
    concat: Concat | None
    ports: tuple[int, int] | None  # (destination, source)
    pid: int = 0
    dcs: int = 0

    @property
    def is_wap_push(self) -> bool:
        return self.ports is not None and self.ports[0] == wap.WAP_PUSH_PORT


@dataclass(frozen=True, slots=True)
class StatusReport:
    smsc: str
    reference: int
    recipient: str
    timestamp: datetime
    discharge: datetime
    status: int


# ---- semi-octets, addresses, timestamps ----------------------------------------------------
class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise PduError(f"PDU ends before its {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise PduError(
                f"PDU ends inside its {what} "
                f"(needs {count} octets, {len(self.data) - self.pos} left)"
            )
        value = self.data[self.pos : self.pos + count]
        self.pos += count
        return value

    def rest(self) -> bytes:
        return self.data[self.pos :]


def _bcd(digits: bytes, count: int | None = None) -> str:
    out = []
    for octet in digits:
        for nibble in (octet & 0x0F, octet >> 4):
            if nibble == 0x0F:
                continue
            out.append("0123456789*#abc"[nibble] if nibble < 15 else "")
    text = "".join(out)
    return text[:count] if count is not None else text


def _to_bcd(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    out = bytearray()
    for i in range(0, len(digits), 2):
        low, high = digits[i], digits[i + 1]
        out.append((int(high, 16) << 4) | int(low, 16))
    return bytes(out)


def _address(number_type: int, digits: bytes, length: int) -> str:
    if number_type & 0x70 == 0x50:  # alphanumeric, GSM 7-bit packed
        septets = (length * 4) // 7
        return gsm7.decode(gsm7.unpack(digits, septets))
    number = _bcd(digits, length)
    return ("+" + number) if number_type & 0x70 == 0x10 else number


def _read_address(reader: _Reader, what: str) -> str:
    length = reader.byte(f"{what} length")
    if length > 20:
        raise PduError(f"{what} claims {length} digits")
    number_type = reader.byte(f"{what} type")
    return _address(number_type, reader.take((length + 1) // 2, what), length)


def _encode_address(number: str) -> bytes:
    international = number.startswith("+")
    digits = number.lstrip("+")
    if not digits.isdigit():
        raise ValueError(f"not a phone number: {number!r}")
    return bytes([len(digits), 0x91 if international else 0x81]) + _to_bcd(digits)


def _read_smsc(reader: _Reader) -> str:
    length = reader.byte("SMSC length")
    if length == 0:
        return ""
    if length > 12:
        raise PduError(f"SMSC length {length} is impossible")
    number_type = reader.byte("SMSC type")
    digits = reader.take(length - 1, "SMSC")
    number = _bcd(digits)
    return ("+" + number) if number_type & 0x70 == 0x10 else number


def _encode_smsc(smsc: str) -> bytes:
    if not smsc:
        return b"\x00"
    digits = smsc.lstrip("+")
    body = bytes([0x91 if smsc.startswith("+") else 0x81]) + _to_bcd(digits)
    return bytes([len(body)]) + body


def _swap(octet: int) -> int:
    return ((octet & 0x0F) * 10) + (octet >> 4)


def _read_timestamp(reader: _Reader, what: str) -> datetime:
    raw = reader.take(7, what)
    try:
        year, month, day, hour, minute, second = (_swap(b) for b in raw[:6])
        tz_octet = raw[6]
        quarters = (tz_octet & 0x07) * 10 + (tz_octet >> 4)
        if quarters > 79:
            raise ValueError("zone out of range")
        offset = timedelta(minutes=15 * quarters) * (-1 if tz_octet & 0x08 else 1)
        # Two-digit years: 90-99 are the 1990s, as gammu reads them (GSM predates 2000).
        century = 1900 if year >= 90 else 2000
        return datetime(century + year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError as exc:
        raise PduError(f"{what} is not a valid date: {raw.hex().upper()}") from exc


def _encode_timestamp(moment: datetime) -> bytes:
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a timezone")
    offset = moment.utcoffset() or timedelta(0)
    quarters = int(abs(offset.total_seconds()) // 900)
    fields = [
        moment.year % 100,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    ]
    out = bytearray(((v % 10) << 4) | (v // 10) for v in fields)
    tz = ((quarters % 10) << 4) | (quarters // 10)
    if offset < timedelta(0):
        tz |= 0x08
    out.append(tz)
    return bytes(out)


# ---- user data header ----------------------------------------------------------------------
def _parse_udh(udh: bytes) -> tuple[Concat | None, tuple[int, int] | None]:
    concat: Concat | None = None
    ports: tuple[int, int] | None = None
    pos = 0
    while pos < len(udh):
        if pos + 2 > len(udh):
            raise PduError("user data header ends inside an element")
        iei, length = udh[pos], udh[pos + 1]
        body = udh[pos + 2 : pos + 2 + length]
        if len(body) != length:
            raise PduError("user data header element runs past the header")
        if iei == 0x00 and length == 3:
            concat = Concat(body[0], body[1], body[2], 8)
        elif iei == 0x08 and length == 4:
            concat = Concat((body[0] << 8) | body[1], body[2], body[3], 16)
        elif iei == 0x05 and length == 4:
            ports = ((body[0] << 8) | body[1], (body[2] << 8) | body[3])
        elif iei == 0x04 and length == 2:
            ports = (body[0], body[1])
        pos += 2 + length
    if concat is not None and (concat.total == 0 or not 1 <= concat.seq <= concat.total):
        # A broken concatenation element: treat the part as a message of its own.
        concat = None
    return concat, ports


def _encoding_of(dcs: int) -> Encoding:
    if dcs == KSC5601_DCS:
        return Encoding.KSC5601
    group = dcs >> 4
    if group in (0x0, 0x1, 0x2, 0x3) or (group & 0xC) == 0x4:  # general data coding
        if dcs & 0x20 and group < 0x4:
            raise PduError(f"compressed user data (DCS 0x{dcs:02X}) is not supported")
        alphabet = (dcs >> 2) & 0x03
    elif group == 0xF:
        alphabet = 1 if dcs & 0x04 else 0
    elif group in (0xC, 0xD):
        alphabet = 0
    elif group == 0xE:
        alphabet = 2
    else:
        alphabet = 1
    return {0: Encoding.GSM7, 1: Encoding.EIGHT_BIT, 2: Encoding.UCS2}.get(
        alphabet, Encoding.EIGHT_BIT
    )


def _decode_ucs2(data: bytes) -> str:
    if len(data) % 2:
        data = data[:-1]
    # A lone surrogate (a pair split by a sender across parts) decodes as U+FFFD here;
    # the reassembler joins the raw bytes first, so a complete message is exact.
    return data.decode("utf-16-be", errors="replace")


def decode_ksc5601(data: bytes) -> str:
    # A two-byte character split by the sender across parts decodes as U+FFFD here;
    # the reassembler joins the raw bytes first, as for UCS2.
    return data.decode(_KSC5601_CODEC, errors="replace")


# ---- decode --------------------------------------------------------------------------------
def parse_hex(pdu: str | bytes) -> bytes:
    if isinstance(pdu, bytes):
        return pdu
    text = "".join(pdu.split())
    if not text:
        raise PduError("empty PDU")
    if len(text) % 2:
        raise PduError(f"PDU has an odd number of hex digits ({len(text)})")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise PduError("PDU is not hexadecimal") from exc


def decode(pdu: str | bytes, smsc: bool = True) -> Deliver | StatusReport:
    """Decode one PDU as a modem prints it (hex, SMSC address first when `smsc`)."""
    reader = _Reader(parse_hex(pdu))
    centre = _read_smsc(reader) if smsc else ""
    first = reader.byte("first octet")
    mti = first & 0x03
    if mti == 0x00:
        return _decode_deliver(reader, centre, first)
    if mti == 0x02:
        return _decode_status_report(reader, centre)
    raise PduError(f"not a received message (TP-MTI {mti}: SMS-SUBMIT or reserved)")


def _decode_deliver(reader: _Reader, centre: str, first: int) -> Deliver:
    sender = _read_address(reader, "sender")
    pid = reader.byte("protocol identifier")
    dcs = reader.byte("data coding scheme")
    encoding = _encoding_of(dcs)
    timestamp = _read_timestamp(reader, "service-centre timestamp")
    udl = reader.byte("user data length")
    udhi = bool(first & 0x40)
    if encoding == Encoding.GSM7:
        if udl > 160:
            raise PduError(f"user data length {udl} septets exceeds 160")
        octets = (udl * 7 + 7) // 8
        raw = reader.take(octets, "user data")
        header = b""
        fill = 0
        skip_septets = 0
        if udhi:
            if not raw:
                raise PduError("user data header announced but absent")
            header = raw[1 : 1 + raw[0]]
            if len(header) != raw[0]:
                raise PduError("user data header runs past the user data")
            header_bits = (raw[0] + 1) * 8
            skip_septets = (header_bits + 6) // 7
            fill = skip_septets * 7 - header_bits
        septets = gsm7.unpack(raw[len(header) + 1 if udhi else 0 :], udl - skip_septets, fill)
        if udl - skip_septets < 0:
            raise PduError("user data header longer than the user data")
        text = gsm7.decode(septets)
        data = bytes(septets)
    else:
        if udl > 140:
            raise PduError(f"user data length {udl} octets exceeds 140")
        raw = reader.take(udl, "user data")
        header = b""
        if udhi:
            if not raw or raw[0] + 1 > len(raw):
                raise PduError("user data header runs past the user data")
            header = raw[1 : 1 + raw[0]]
            raw = raw[1 + raw[0] :]
        data = raw
        if encoding == Encoding.UCS2:
            text = _decode_ucs2(raw)
        elif encoding == Encoding.KSC5601:
            text = decode_ksc5601(raw)
        else:
            text = ""
    concat, ports = _parse_udh(header) if udhi else (None, None)
    if encoding == Encoding.EIGHT_BIT and ports is None:
        text = data.decode("latin-1")
    return Deliver(centre, sender, timestamp, encoding, text, data, concat, ports, pid, dcs)


def _decode_status_report(reader: _Reader, centre: str) -> StatusReport:
    reference = reader.byte("message reference")
    recipient = _read_address(reader, "recipient")
    timestamp = _read_timestamp(reader, "service-centre timestamp")
    discharge = _read_timestamp(reader, "discharge time")
    status = reader.byte("status")
    return StatusReport(centre, reference, recipient, timestamp, discharge, status)


# ---- encode --------------------------------------------------------------------------------
_SINGLE = {Encoding.GSM7: 160, Encoding.UCS2: 140, Encoding.EIGHT_BIT: 140, Encoding.KSC5601: 140}


def _ucs2_units(text: str) -> list[bytes]:
    """UTF-16 code units grouped per character, so a surrogate pair is never split."""
    return [ch.encode("utf-16-be") for ch in text]


def _split_gsm7(text: str, limit: int) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    for ch in text:
        codes = list(gsm7.septets_for(ch) or ())
        if len(parts[-1]) + len(codes) > limit:
            parts.append([])
        parts[-1].extend(codes)
    return parts


def _split_bytes(units: Iterable[bytes], limit: int) -> list[bytes]:
    parts: list[bytearray] = [bytearray()]
    for unit in units:
        if len(parts[-1]) + len(unit) > limit:
            parts.append(bytearray())
        parts[-1] += unit
    return [bytes(p) for p in parts]


def choose_encoding(text: str) -> Encoding:
    return Encoding.GSM7 if gsm7.can_encode(text) else Encoding.UCS2


def encode_deliver(
    sender: str,
    text: str,
    timestamp: datetime,
    smsc: str = "",
    *,
    reference: int = 0,
    sixteen_bit_ref: bool = False,
    encoding: Encoding | None = None,
) -> list[bytes]:
    """SMS-DELIVER PDU(s) carrying `text`, split with a concatenation UDH when long."""
    encoding = encoding or choose_encoding(text)
    if encoding == Encoding.GSM7:
        septets = gsm7.encode(text)
        if len(septets) <= 160:
            return [_deliver(sender, timestamp, smsc, encoding, b"", septets=septets)]
        ie_len = 6 if sixteen_bit_ref else 5
        limit = 160 - ((ie_len + 1) * 8 + 6) // 7
        chunks_7 = _split_gsm7(text, limit)
        total = len(chunks_7)
        return [
            _deliver(
                sender,
                timestamp,
                smsc,
                encoding,
                _concat_udh(reference, total, i + 1, sixteen_bit_ref),
                septets=chunk,
            )
            for i, chunk in enumerate(chunks_7)
        ]
    if encoding == Encoding.UCS2:
        payload_units = _ucs2_units(text)
    elif encoding == Encoding.KSC5601:
        # Per character, so a two-byte character never straddles two parts.
        payload_units = [ch.encode("euc-kr") for ch in text]
    else:
        payload_units = [bytes([b]) for b in text.encode("latin-1")]
    payload = b"".join(payload_units)
    if len(payload) <= 140:
        return [_deliver(sender, timestamp, smsc, encoding, b"", data=payload)]
    udh_len = 7 if sixteen_bit_ref else 6
    chunks = _split_bytes(payload_units, 140 - udh_len)
    return [
        _deliver(
            sender,
            timestamp,
            smsc,
            encoding,
            _concat_udh(reference, len(chunks), i + 1, sixteen_bit_ref),
            data=chunk,
        )
        for i, chunk in enumerate(chunks)
    ]


def _concat_udh(reference: int, total: int, seq: int, sixteen: bool) -> bytes:
    if total > 255:
        raise ValueError("text needs more than 255 parts")
    if sixteen:
        return bytes([0x08, 4, (reference >> 8) & 0xFF, reference & 0xFF, total, seq])
    return bytes([0x00, 3, reference & 0xFF, total, seq])


def _deliver(
    sender: str,
    timestamp: datetime,
    smsc: str,
    encoding: Encoding,
    udh_body: bytes,
    *,
    septets: list[int] | None = None,
    data: bytes = b"",
) -> bytes:
    dcs = {
        Encoding.GSM7: 0x00,
        Encoding.EIGHT_BIT: 0x04,
        Encoding.UCS2: 0x08,
        Encoding.KSC5601: KSC5601_DCS,
    }[encoding]
    first = 0x04 | (0x40 if udh_body else 0)  # SMS-DELIVER, no more messages waiting
    out = bytearray(_encode_smsc(smsc))
    out.append(first)
    out += _encode_address(sender)
    out += bytes([0x00, dcs])
    out += _encode_timestamp(timestamp)
    udh = bytes([len(udh_body)]) + udh_body if udh_body else b""
    if encoding == Encoding.GSM7:
        assert septets is not None
        if udh:
            header_bits = len(udh) * 8
            skip = (header_bits + 6) // 7
            fill = skip * 7 - header_bits
            body = gsm7.pack(septets, fill)
            out.append(skip + len(septets))
            out += udh + body
        else:
            out.append(len(septets))
            out += gsm7.pack(septets)
    else:
        out.append(len(udh) + len(data))
        out += udh + data
    return bytes(out)


def encode_wap_push(
    sender: str,
    push: bytes,
    timestamp: datetime,
    smsc: str = "",
    *,
    reference: int = 0,
) -> list[bytes]:
    """SMS-DELIVER PDU(s) (8-bit, port 2948) carrying a WSP push, concatenated if long."""
    ports = bytes(
        [
            0x05,
            4,
            wap.WAP_PUSH_PORT >> 8,
            wap.WAP_PUSH_PORT & 0xFF,
            wap.WAP_SOURCE_PORT >> 8,
            wap.WAP_SOURCE_PORT & 0xFF,
        ]
    )
    if len(push) <= 140 - 1 - len(ports):
        return [_deliver(sender, timestamp, smsc, Encoding.EIGHT_BIT, ports, data=push)]
    chunk = 140 - 1 - len(ports) - 5
    pieces = [push[i : i + chunk] for i in range(0, len(push), chunk)]
    return [
        _deliver(
            sender,
            timestamp,
            smsc,
            Encoding.EIGHT_BIT,
            ports + _concat_udh(reference, len(pieces), i + 1, False),
            data=piece,
        )
        for i, piece in enumerate(pieces)
    ]


def encode_status_report(
    recipient: str,
    reference: int,
    timestamp: datetime,
    discharge: datetime,
    status: int,
    smsc: str = "",
) -> bytes:
    out = bytearray(_encode_smsc(smsc))
    out.append(0x06)  # SMS-STATUS-REPORT
    out.append(reference & 0xFF)
    out += _encode_address(recipient)
    out += _encode_timestamp(timestamp) + _encode_timestamp(discharge)
    out.append(status & 0xFF)
    return bytes(out)


# ---- reassembly ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    """A received message after its parts were joined (or given up on)."""

    kind: Kind
    sender: str
    text: str
    timestamp: datetime
    encoding: Encoding
    concat: Concat | None  # of the first part, for reference
    parts: tuple[Deliver, ...]
    complete: bool = True
    mms: MmsNotification | None = None
    missing: tuple[int, ...] = ()

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": self.kind.value,
            "sender": self.sender,
            "text": self.text,
            "timestamp": self.timestamp.isoformat(),
            "encoding": self.encoding.value,
            "concat": self.concat.as_json() if self.concat else None,
            "complete": self.complete,
        }
        if self.missing:
            out["missing_parts"] = list(self.missing)
        if self.mms is not None:
            out.update(
                subject=self.mms.subject,
                size=self.mms.size,
                location=self.mms.location,
                transaction_id=self.mms.transaction_id,
                sender=self.mms.sender or self.sender,
            )
        return out


def _join(parts: list[Deliver], complete: bool, missing: tuple[int, ...] = ()) -> Message:
    parts = sorted(parts, key=lambda p: p.concat.seq if p.concat else 0)
    first = parts[0]
    if first.is_wap_push:
        if not complete:
            return _undecoded(parts, missing)
        push = b"".join(p.data for p in parts)
        if wap.content_type(push) != wap.MMS_CONTENT_TYPE:
            return _textless(Kind.WAP_PUSH, first, parts, complete=True)
        note = wap.decode_push(push)
        sender = note.sender.split("/TYPE=")[0] if note.sender else first.sender
        return Message(
            Kind.MMS_NOTIFICATION,
            sender,
            note.subject or "",
            first.timestamp,
            first.encoding,
            first.concat,
            tuple(parts),
            True,
            MmsNotification(
                sender,
                note.subject,
                note.size,
                note.location,
                note.transaction_id,
                note.expiry_s,
                note.message_class,
            ),
        )
    if first.encoding == Encoding.UCS2:
        # Join the raw UTF-16 first: a character may straddle two parts' boundary.
        text = _decode_ucs2(b"".join(p.data for p in parts))
    elif first.encoding == Encoding.KSC5601:
        text = decode_ksc5601(b"".join(p.data for p in parts))
    else:
        text = "".join(p.text for p in parts)
    return Message(
        Kind.SMS,
        first.sender,
        text,
        first.timestamp,
        first.encoding,
        first.concat,
        tuple(parts),
        complete,
        None,
        missing,
    )


@dataclass(slots=True)
class _Pending:
    parts: dict[int, Deliver] = field(default_factory=dict)
    first_seen: float = 0.0


class Reassembler:
    """Joins concatenated parts in any arrival order.

    A message whose parts do not all arrive within `timeout_s` comes out of
    :meth:`expire` as a partial message: never silently dropped. Memory is
    bounded by `max_pending` (the oldest incomplete message is surfaced first).
    """

    def __init__(self, timeout_s: float, max_pending: int = 256) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._pending: dict[tuple[str, int, int, int], _Pending] = {}

    def add(self, part: Deliver, now: float) -> list[Message]:
        """Feed one part; return the messages it completes (or pushes out)."""
        if part.concat is None or part.concat.total == 1:
            return [_safe_join([part], True)]
        c = part.concat
        key = (part.sender, c.ref_bits, c.ref, c.total)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(first_seen=now)
        pending.parts.setdefault(c.seq, part)
        done: list[Message] = []
        if len(pending.parts) == c.total:
            del self._pending[key]
            done.append(_safe_join(list(pending.parts.values()), True))
        while len(self._pending) > self.max_pending:
            oldest = min(self._pending, key=lambda k: self._pending[k].first_seen)
            done.append(self._partial(oldest))
        return done

    def expire(self, now: float) -> list[Message]:
        late = [k for k, p in self._pending.items() if now - p.first_seen >= self.timeout_s]
        return [self._partial(k) for k in late]

    def _partial(self, key: tuple[str, int, int, int]) -> Message:
        pending = self._pending.pop(key)
        total = key[3]
        missing = tuple(s for s in range(1, total + 1) if s not in pending.parts)
        return _safe_join(list(pending.parts.values()), False, missing)

    @property
    def pending_count(self) -> int:
        return len(self._pending)


def _undecoded(parts: list[Deliver], missing: tuple[int, ...]) -> Message:
    """A message kept although its text cannot be given (parts missing or undecodable)."""
    first = min(parts, key=lambda p: p.concat.seq if p.concat else 0)
    kind = Kind.MMS_NOTIFICATION if first.is_wap_push else Kind.SMS
    return _textless(kind, first, parts, complete=False, missing=missing)


def _textless(
    kind: Kind,
    first: Deliver,
    parts: list[Deliver],
    complete: bool,
    missing: tuple[int, ...] = (),
) -> Message:
    """A message with no text of ours to give, headed by its `first` part."""
    return Message(
        kind,
        first.sender,
        "",
        first.timestamp,
        first.encoding,
        first.concat,
        tuple(parts),
        complete,
        None,
        missing,
    )


def _safe_join(parts: list[Deliver], complete: bool, missing: tuple[int, ...] = ()) -> Message:
    try:
        return _join(parts, complete, missing)
    except PduError:
        return _undecoded(parts, missing)
