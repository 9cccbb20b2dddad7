"""How parallel the fleet view is: `fleet status` over 8 simulated nodes (real daemons behind
one real nginx with mutual TLS, a real central registry; simulators/fleet.py).

Each round builds the view as `hanjulloctl fleet status` does (`daemon.cli.fleet.build_view`)
and sums the nodes' own response times (connect, TLS, /v1/status) against the round's wall
time. Prints on its last line `fleet_view_parallelism <sum of per-node times / wall time>`
over all rounds (goal ≥ 4; 8 would be every call wholly overlapped).

`--without-agents` (the default on a machine with fewer than 4 CPUs) runs the daemons without
their simulators: no agents or phones, but the same status route, proxy and TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from config.loader import load_control_plane
from daemon.cli.fleet import build_view
from simulators.fleet import SimulatedFleet

INSTANCES = list(range(11, 19))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=10.0)
    agents = parser.add_mutually_exclusive_group()
    agents.add_argument("--with-agents", dest="agents", action="store_true", default=None)
    agents.add_argument("--without-agents", dest="agents", action="store_false")
    args = parser.parse_args()
    with_agents = args.agents if args.agents is not None else (os.cpu_count() or 1) >= 4
    with tempfile.TemporaryDirectory(prefix="hj-fleet-bench-") as tmp:
        fleet = SimulatedFleet(Path(tmp), INSTANCES, with_sims=with_agents)
        try:
            fleet.start()
            fleet.wait_all_ok(timeout_s=120)
            plane = load_control_plane(fleet.fleet_toml)
            summed = walls = 0.0
            ratios = []
            for round_no in range(args.rounds):
                view = asyncio.run(build_view(plane, args.timeout))
                states = [n.state for n in view.nodes]
                if states != ["ok"] * len(INSTANCES):
                    print(f"round {round_no}: not every node ok: {states}", file=sys.stderr)
                    return 1
                per_node = sum(n.elapsed_s for n in view.nodes)
                summed += per_node
                walls += view.wall_s
                ratios.append(per_node / view.wall_s)
                print(
                    f"round {round_no}: {len(view.nodes)} nodes, per-node "
                    f"{min(n.elapsed_s for n in view.nodes) * 1000:.0f}-"
                    f"{max(n.elapsed_s for n in view.nodes) * 1000:.0f} ms, "
                    f"sum {per_node * 1000:.0f} ms, wall {view.wall_s * 1000:.0f} ms",
                    file=sys.stderr,
                )
        finally:
            fleet.close()
    print(
        f"{len(INSTANCES)} nodes ({'with' if with_agents else 'without'} agents), "
        f"{args.rounds} rounds; median round ratio {statistics.median(ratios):.2f}",
        file=sys.stderr,
    )
    print(f"fleet_view_parallelism {summed / walls:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
