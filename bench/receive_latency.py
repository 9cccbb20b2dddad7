"""Receive latency of the `at` driver: event-driven (+CMTI) versus 15-second polling.

Delivers 50 texts to a simulated modem on a real pty at random gaps and times
each from the moment the modem stores it (and sends +CMTI) until it comes out of
the driver's message stream. The baseline is a receiver that polls every 15 s
(the gammu-smsd default) on the same delivery times: each text waits for the
next poll, then costs the same read. Prints the medians, the storage reads per
message (CMGL/CMGR, counted by the simulator) and, last,
`speedup_vs_15s_polling <median polling latency / median event-driven latency>`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from config.example import sim_example
from config.loader import validate
from drivers import pdu
from drivers.at_phone import ATPhone
from simulators.modem import SimModem

POLL_INTERVAL_S = 15.0


async def run(count: int, seed: int) -> int:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="hj-rx-") as tmp:
        config = validate(tomllib.loads(sim_example(Path(tmp))))
        modem = SimModem(config.modems[1], 30, "+821000000000", 1.0)
        modem.plug()
        phone = ATPhone(str(modem.stable_path), 2.0)
        await phone.open()
        ours: list[float] = []
        polling: list[float] = []
        start = time.monotonic()
        phase = rng.uniform(0, POLL_INTERVAL_S)  # where the poller's cycle happens to be
        try:
            for i in range(count):
                await asyncio.sleep(rng.uniform(0.05, 0.6))
                text = f"한줄로 수신 지연 측정 {i} " + "가" * rng.randint(0, 120)
                parts = pdu.encode_deliver("0212345678", text, datetime.now(UTC), reference=i)
                sent = time.monotonic()
                assert modem.deliver(parts)
                received = await asyncio.wait_for(phone.next_received(), 5)
                latency = time.monotonic() - sent
                assert received.message.text == text and received.via == "cmti"
                await phone.delete(received.indices)
                ours.append(latency)
                since_start = sent - start + phase
                polling.append(POLL_INTERVAL_S - since_start % POLL_INTERVAL_S + latency)
        finally:
            await phone.close()
            await modem.close()
        reads = sum(modem.read_log.values())
        parts_stored = len(modem.read_log)
    median_ours, median_polling = statistics.median(ours), statistics.median(polling)
    print(
        f"messages {count}, event-driven median {median_ours * 1000:.1f} ms, "
        f"p95 {sorted(ours)[int(count * 0.95) - 1] * 1000:.1f} ms, max {max(ours) * 1000:.1f} ms",
        file=sys.stderr,
    )
    print(f"15 s polling median {median_polling:.2f} s on the same deliveries", file=sys.stderr)
    print(
        f"storage reads per message {reads / count:.2f}, per stored part "
        f"{reads / parts_stored:.2f} (CMGL listings: {modem.counters.cmgl})",
        file=sys.stderr,
    )
    print(f"speedup_vs_15s_polling {median_polling / median_ours:.1f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    return asyncio.run(run(args.count, args.seed))


if __name__ == "__main__":
    sys.exit(main())
