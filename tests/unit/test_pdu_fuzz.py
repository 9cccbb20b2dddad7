"""Fuzzing the codec: random and mutated PDUs raise nothing but PduError."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import pdu, wap
from drivers.errors import PduError

KST = timezone(timedelta(hours=9))
SEEDS = [
    *pdu.encode_deliver("0212345678", "가나다 " * 40, datetime(2026, 1, 1, tzinfo=KST), "+8210"),
    *pdu.encode_deliver("15886000", "plain [x] €", datetime(2026, 1, 1, tzinfo=KST)),
    *pdu.encode_wap_push(
        "+821012345678",
        wap.encode_notification(
            wap.MmsNotification("+821012345678", "제목", 10, "http://m/x", "T1")
        ),
        datetime(2026, 1, 1, tzinfo=KST),
    ),
    pdu.encode_status_report(
        "01012345678",
        1,
        datetime(2026, 1, 1, tzinfo=KST),
        datetime(2026, 1, 1, tzinfo=KST),
        status=0,
    ),
]


def decode_all(data: bytes) -> None:
    try:
        part = pdu.decode(data)
    except PduError:
        return
    if isinstance(part, pdu.Deliver):
        joiner = pdu.Reassembler(timeout_s=0)
        joiner.add(part, 0.0)
        joiner.expire(1.0)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    decode_all(data)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_mutated_pdus(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for index, value in flips:
        if index < len(data):
            data[index] = value
    decode_all(bytes(data[: max(1, len(data) - cut)]) if cut % 3 == 0 else bytes(data))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_wap_push_bodies(data: bytes) -> None:
    with contextlib.suppress(PduError):
        wap.decode_push(data)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300))
def test_hex_text_input(text: str) -> None:
    with contextlib.suppress(PduError):
        pdu.decode(text)
