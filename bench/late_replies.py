"""A random search of the late-reply state machine, far beyond what the suite runs.

The suite runs `tests/unit/test_at_late.py`'s machine derandomized (the same 150
scenarios every time, so CI passes or fails on the code, not on the draw). This
searches fresh scenarios: for each seed, `--examples` random runs of up to
`--steps` steps, with hypothesis's shrinking on so a failure is printed in its
smallest form with the seed that reproduces it. A failure is a message deleted
before it was recorded, one recorded twice, or a scenario that never finishes
(the virtual loop's iteration limit: a close() or a receipt loop that hangs).
Prints one line per seed and `late_reply_failures <number>` last (goal 0).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

import structlog
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.unit.test_at_late import LateRepliesMachine


def search(seed_value: int, examples: int, steps: int) -> str | None:
    """None when every example held; otherwise the failure, as hypothesis printed it."""
    machine = seed(seed_value)(LateRepliesMachine)
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            ),
        )
    except Exception as exc:  # the property's AssertionError, or the loop's RuntimeError
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="how many seeds (default 8)")
    parser.add_argument("--first-seed", type=int, help="the first seed (default: random)")
    parser.add_argument("--examples", type=int, default=3000, help="runs per seed")
    parser.add_argument("--steps", type=int, default=40, help="steps per run")
    args = parser.parse_args()
    # The driver logs every byte at debug level; the search needs none of it.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    first = args.first_seed if args.first_seed is not None else random.randrange(1, 10**6)
    failures = 0
    started = time.monotonic()
    for seed_value in range(first, first + args.seeds):
        began = time.monotonic()
        failure = search(seed_value, args.examples, args.steps)
        took = time.monotonic() - began
        if failure is None:
            print(f"seed {seed_value}: {args.examples} scenarios held ({took:.0f} s)", flush=True)
        else:
            failures += 1
            print(f"seed {seed_value}: FAILED ({took:.0f} s) {failure}", flush=True)
            print(f"  reproduce: python bench/late_replies.py --first-seed {seed_value} --seeds 1")
    scenarios = args.seeds * args.examples
    print(f"{scenarios} scenarios over {args.seeds} seeds in {time.monotonic() - started:.0f} s")
    print(f"late_reply_failures {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
