"""Idle cost of the daemon: CPU used while nothing happens on a simulated node.

Starts the simulator and the daemon, checks every component is running, measures
the daemon's CPU time over an idle window, checks again, and prints on its last
line `idle_cpu_fraction <fraction of one core>` (goal < 0.01).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from simulators.harness import SimulatedNode


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def all_running(node: SimulatedNode) -> dict[str, str]:
    return node.wait_components(
        lambda s: all(v == "running" for v in s.values()), 30, "every component running"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hj-idle-") as tmp, SimulatedNode(Path(tmp)) as node:
        node.db_init()
        node.start_sim()
        node.start_daemon()
        states = all_running(node)
        print(f"components running before: {len(states)}", file=sys.stderr)
        assert node.daemon is not None
        pid = node.daemon.pid
        start_cpu, start = cpu_seconds(pid), time.monotonic()
        time.sleep(args.seconds)
        used, elapsed = cpu_seconds(pid) - start_cpu, time.monotonic() - start
        states = all_running(node)
        print(f"components running after: {len(states)}", file=sys.stderr)
        print(f"daemon cpu {used:.3f}s over {elapsed:.1f}s", file=sys.stderr)
    print(f"idle_cpu_fraction {used / elapsed:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
