"""Long fuzzing of the PDU codec, the WAP decoder and the AT line splitter.

Feeds random bytes, mutated real PDUs (bit flips, truncation, splices) and random
hex text; anything but the codec's own PduError is a failure, as is a single
example taking over a second or memory growing past the bound. Prints the
examples per second on the last line as `fuzz_codec_examples_per_s <number>`.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from drivers import gsm7, pdu, wap
from drivers.at import ATProtocol
from drivers.errors import PduError

# The real-world vectors live with their citations in the unit tests; the repository root
# is on the path when this runs as `python bench/fuzz_codec.py`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.unit import test_pdu_vectors as vectors

WHEN = datetime(2026, 11, 27, tzinfo=UTC)


def seeds() -> list[bytes]:
    note = wap.MmsNotification(
        "+821012345678", "한줄로 제목 " * 4, 1234, "http://m/" + "x" * 50, "T123"
    )
    return [
        *pdu.encode_deliver("0212345678", "가나다라 " * 60, WHEN, "+821000000000", reference=3),
        *pdu.encode_deliver(
            "15886000", "plain {text} [x] € " * 12, WHEN, reference=4, sixteen_bit_ref=True
        ),
        *pdu.encode_wap_push("+821012345678", wap.encode_notification(note), WHEN, reference=5),
        pdu.encode_status_report("01012345678", 9, WHEN, WHEN, status=0, smsc="+8210"),
        *pdu.encode_deliver(
            "0212345678", "한줄로 KSC5601 " * 12, WHEN, reference=6, encoding=pdu.Encoding.KSC5601
        ),
        # Real-world forms (tests/unit/test_pdu_vectors.py cites them): an empty-Subject
        # notification, a Service Indication part, a 16-bit-reference notification part,
        # a class-3 text, a 1999 timestamp with an 0xC8 sender.
        *(
            bytes.fromhex(v)
            for v in (
                vectors.GAMMU_40,
                vectors.GAMMU_33,
                vectors.GAMMU_42,
                vectors.GAMMU_09,
                vectors.GAMMU_32,
                *vectors.MESSAGING_MMS,
                *vectors.MESSAGING_SI,
            )
        ),
    ]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.5 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice < 0.7 and out:
            del out[rng.randrange(len(out)) :]
        elif choice < 0.85:
            out[rng.randrange(len(out) + 1) : rng.randrange(len(out) + 1)] = rng.randbytes(
                rng.randint(1, 20)
            )
        elif out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def one(rng: random.Random, pool: list[bytes], joiner: pdu.Reassembler, at: ATProtocol) -> None:
    kind = rng.random()
    if kind < 0.2:
        data = rng.randbytes(rng.randint(0, 200))
    elif kind < 0.9:
        data = mutate(rng, rng.choice(pool))
    else:
        text = "".join(rng.choice("0123456789ABCDEFabcdef xyz") for _ in range(rng.randint(0, 80)))
        with contextlib.suppress(PduError):
            pdu.decode(text)
        return
    try:
        part = pdu.decode(data)
        if isinstance(part, pdu.Deliver):
            joiner.add(part, time.monotonic())
    except PduError:
        pass
    with contextlib.suppress(PduError):
        wap.decode_push(data)
    with contextlib.suppress(PduError):
        wap.content_type(data)
    gsm7.decode(list(data[:40]))
    at.data_received(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pool = seeds()
    joiner = pdu.Reassembler(timeout_s=0.5, max_pending=64)
    at = ATProtocol()
    tracemalloc.start()
    started = time.monotonic()
    slowest = 0.0
    for i in range(args.examples):
        t0 = time.monotonic()
        try:
            one(rng, pool, joiner, at)
        except Exception as exc:  # anything but PduError is a bug
            print(f"example {i}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        slowest = max(slowest, time.monotonic() - t0)
        if i % 1000 == 0:
            joiner.expire(time.monotonic())
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{args.examples} examples in {elapsed:.1f}s, slowest {slowest * 1000:.1f} ms, "
        f"peak traced memory {peak / 1e6:.1f} MB, pending {joiner.pending_count}",
        file=sys.stderr,
    )
    if slowest > 1.0 or peak > 64e6:
        print("FAILED: an example hung or memory grew", file=sys.stderr)
        return 1
    print(f"fuzz_codec_examples_per_s {args.examples / elapsed:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
