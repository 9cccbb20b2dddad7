"""The GSM 03.38 default alphabet, its extension table, and septet packing.

Pure functions; no I/O. Used by the PDU codec (and through it by the simulator).
"""

from __future__ import annotations

ESCAPE = 0x1B

# Code point -> character of the default alphabet (0x1B is the escape to the extension table).
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_BASIC) == 128

_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_ENCODE: dict[str, tuple[int, ...]] = {ch: (i,) for i, ch in enumerate(_BASIC) if i != ESCAPE}
_ENCODE.update({ch: (ESCAPE, code) for code, ch in _EXTENSION.items()})


def septets_for(char: str) -> tuple[int, ...] | None:
    """The septet(s) of one character, or None when GSM 7-bit cannot carry it."""
    return _ENCODE.get(char)


def can_encode(text: str) -> bool:
    return all(ch in _ENCODE for ch in text)


def encode(text: str) -> list[int]:
    out: list[int] = []
    for ch in text:
        codes = _ENCODE.get(ch)
        if codes is None:
            raise ValueError(f"{ch!r} has no GSM 7-bit code")
        out.extend(codes)
    return out


def decode(septets: list[int]) -> str:
    """Septets to text.

    An escape before a code the extension table does not map reads as that code's
    basic-table character (3GPP TS 23.038 6.2.1.1: "the receiving entity shall display
    the character from the default alphabet"); two escapes in a row read as a space
    (the reserved second escape, shown as a space as the spec advises).
    """
    out: list[str] = []
    escaped = False
    for code in septets:
        if escaped:
            if code == ESCAPE:
                out.append(" ")
            else:
                out.append(_EXTENSION.get(code) or _BASIC[code & 0x7F])
            escaped = False
        elif code == ESCAPE:
            escaped = True
        else:
            out.append(_BASIC[code & 0x7F])
    return "".join(out)


def pack(septets: list[int], fill_bits: int = 0) -> bytes:
    """Pack septets into octets, after `fill_bits` zero bits (alignment after a UDH)."""
    bits = 0
    nbits = fill_bits
    out = bytearray()
    for septet in septets:
        bits |= (septet & 0x7F) << nbits
        nbits += 7
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        out.append(bits & 0xFF)
    return bytes(out)


def unpack(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """The first `count` septets of `data`, skipping `fill_bits` leading bits."""
    out: list[int] = []
    bits = 0
    nbits = 0
    skip = fill_bits
    for byte in data:
        bits |= byte << nbits
        nbits += 8
        if skip:
            take = min(skip, nbits)
            bits >>= take
            nbits -= take
            skip -= take
        while nbits >= 7 and len(out) < count:
            out.append(bits & 0x7F)
            bits >>= 7
            nbits -= 7
        if len(out) >= count:
            break
    return out
