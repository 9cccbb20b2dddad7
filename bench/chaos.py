"""Chaos: campaigns and spam tests on a simulated node while random faults are injected.

A whole simulated node (``hanjullo-sim`` and the real ``hanjullo-noded``) on the real
PostgreSQL, MariaDB and Redis. The daemon reaches each server through its own fault
proxy (``hanjullo-sim proxy serve``, simulators/faultproxy.py); the simulator and this
bench reach them directly, so a fault lands between the daemon and its servers only.

For ``--minutes`` (default 10) it keeps campaign waves going (three runs at once, one per
bulk line group, the next wave once the last is final), queues a spam test every
15-30 s (every third with a word KT's filter blocks) and injects one fault every
8-20 s, dealt from a shuffled deck of every kind so each kind comes up early:

  daemon-kill9 (and restart)   second-daemon (same configuration, own socket; stopped later)
  mysql|postgres|redis-cut     (every open connection of the daemon, RST or FIN)
  mysql|postgres|redis-stall   (a black hole for 3-8 s, then lifted)
  server-restart               (mariadb, postgres or redis, tests/services.py)
  agent-hang                   (a bulk agent hung for 10-25 s, then ok)
  modem-unplug|hang|garbage|late  (one test phone for 5-15 s, then replugged / ok)
  nul-text                     (a UCS2 text holding U+0000 from a stranger to a test phone)
  clock-step                   (the node clock to a daytime moment today, reset 20-60 s later)

Every fault is logged to stderr as ``t=<seconds> <kind> <detail>``. At the end it heals
everything, lets the runs and tests finish, settles, and checks every invariant in one
place (:func:`check_invariants`): every recipient in the agent tables exactly once
(counted in one statement over the live and log tables), every run final with
success + fail = inserted = target - skipped, no `blocked` verdict where the simulator
delivered the text or the phone's modem was faulted during the test, no receipt
attributed to the wrong test, no stranger's text attributed to any test, the daemon never
exiting by itself, its memory and file descriptors back near their start.

It also measures what faults cost: the time from a restart after kill -9 until rows
flow again (a new ledger insert entry), and the campaign throughput of the waves during
the chaos against a fault-free wave of the same size measured first (goal >= 0.8).

Prints the faults per kind and the figures; on failure a command line that reproduces
the run; on its last line ``chaos_violations <n>`` (goal 0; exit 1 when n > 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# bench/dispatch.py is named like the `dispatch` package; this folder must not shadow it.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from config.example import instance_databases  # noqa: E402
from config.names import normalise_phone, stored_text  # noqa: E402
from simulators.faultproxy import control_request  # noqa: E402
from simulators.harness import (  # noqa: E402
    CommandFailed,
    SimulatedNode,
    command,
    current_instance,
    mysql,
)
from tests import services  # noqa: E402
from tests.config_edits import settings  # noqa: E402
from tests.integration.helpers import kst_today, pg_fetch  # noqa: E402

CALLBACK = "0212345678"  # a sender the simulated carriers know
BLOCKED_WORD = "무료"  # KT's filter takes every text with it (the simulator's ground truth)
CARRIERS = ("SKT", "KT", "LGU")
BULK_AGENTS = {"bulk-1": (1, 2, 3), "bulk-2": (4, 5, 6), "bulk-3": (7, 8, 9)}
UPSTREAMS = {"mysql": 3306, "postgres": 5432, "redis": 6379}

# One wave = one run per bulk group, all at once: the same shape fault-free and in chaos.
WAVE_RUNS = 3
# A wave that is not final this long after it was sent is left to finish on its own and
# the next one is sent (a stuck wave must not stop the chaos; the end check judges it).
WAVE_TIMEOUT_S = 180.0
FAULT_GAP_S = (8.0, 20.0)  # ~14 s mean: ~40 faults in 10 minutes
SPAM_TEST_GAP_S = (15.0, 30.0)
STALL_S = (3.0, 8.0)
AGENT_HANG_S = (10.0, 25.0)
MODEM_FAULT_S = (5.0, 15.0)
SECOND_DAEMON_S = (20.0, 40.0)
CLOCK_STEP_S = (20.0, 60.0)
SERVER_DOWN_S = (1.0, 3.0)
# After the chaos: everything healed, the runs and tests get this long to become final.
DRAIN_TIMEOUT_S = 300.0
# Then a quiet moment before the memory and descriptor sample.
SETTLE_S = 15.0
# The daemon's start sample is taken this long after READY=1 (its pools opened).
SAMPLE_AFTER_READY_S = 5.0
# Generous bounds: a leak over ten minutes of faults shows far beyond them.
RSS_GROWTH = 1.5
RSS_GROWTH_KB = 40 * 1024
FD_GROWTH = 20
# Restarts after kill -9 wait this long for rows to flow before the sample is dropped.
FLOW_WAIT_S = 60.0
READY_WAIT_S = 30.0
# A dealt kill -9 waits this long at most for a run being handed off.
KILL_ARM_S = 20.0
POLL_S = 0.25

NODE_SETTINGS: dict[str, Any] = {
    "simulator": {
        # 200 rows/s per agent: a 5,000-recipient run takes ~8 s on its group of three.
        "agents": {"rate_per_s": 200, "log_move_delay_s": 0.3},
        "modems": {"storage_capacity": 8},
        "network": {
            c: {
                "latency_s": [0.2, 0.5],
                **({"block_keywords": [BLOCKED_WORD]} if c == "KT" else {}),
            }
            for c in CARRIERS
        },
    },
    # A small backlog: the handoff goes at the agents' pace, so a kill lands mid-handoff.
    "dispatch": {
        "poll_interval_s": 0.5,
        "result_sync_interval_s": 0.5,
        "batch_size": 500,
        "backlog_bound": 1500,
    },
    "supervision": {"check_interval_s": 1.0, "stuck_after_s": 5.0},
    # A grace well above the carriers' 0.2-0.5 s: a `blocked` is never a slow receipt.
    "spam_tests": {
        "grace_initial_s": 6.0,
        "grace_min_s": 3.0,
        "timeout_s": 40.0,
        "poll_interval_s": 0.2,
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True, slots=True)
class Sample:
    pid: int
    at_s: float
    rss_kb: int
    fds: int


@dataclass(slots=True)
class Wave:
    number: int
    size: int  # recipients per run
    sent_at: float
    runs: list[str] = field(default_factory=list)  # as they were created (a send may fail)
    done_at: float | None = None

    @property
    def recipients(self) -> int:
        return self.size * len(self.runs)


@dataclass(slots=True)
class Lasting:
    """A fault in force until `heal_at`."""

    kind: str
    resource: str
    heal_at: float
    heal: Callable[[], object]
    detail: str


@dataclass(frozen=True, slots=True)
class ModemWindow:
    carrier: str
    kind: str
    start: datetime
    end: datetime


@dataclass(slots=True)
class Flow:
    """A restart after kill -9 waiting for the first ledger insert after `after_id` of one
    of `runs` (those the killed daemon left recipients of, by the ledger)."""

    spawned_at: float
    after_id: int
    runs: list[str]


@dataclass(slots=True)
class Results:
    faults: Counter[str] = field(default_factory=Counter)
    flow_s: list[float] = field(default_factory=list)
    flow_dropped: int = 0
    ready_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)  # the daemon exiting by itself


class ProxySet:
    """`hanjullo-sim proxy serve` with one proxy per server, driven over its control socket."""

    def __init__(self, directory: Path) -> None:
        self.control = directory / "proxy.sock"
        self.ports = {name: free_port() for name in UPSTREAMS}
        listen = [f"--listen={n}={p}:127.0.0.1:{UPSTREAMS[n]}" for n, p in self.ports.items()]
        self.out = directory / "proxy.out"
        self.proc = subprocess.Popen(
            [*command("hanjullo-sim"), "proxy", "serve", "--control", str(self.control), *listen],
            stdout=self.out.open("wb"),
            stderr=(directory / "proxy.stderr").open("wb"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while "control " not in self.out.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fault proxy did not start: see {directory}")
            time.sleep(0.05)

    def request(self, **payload: Any) -> Any:
        return control_request(self.control, payload)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SecondDaemon:
    """Another `hanjullo-noded` on the daemon's configuration with its own socket."""

    def __init__(self, node: SimulatedNode, config: Path) -> None:
        self.proc = subprocess.Popen(
            [*command("hanjullo-noded"), "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(node.dir / "second.stderr").open("ab"),
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Chaos:
    def __init__(self, node: SimulatedNode, proxies: ProxySet, seed: int, wave_size: int) -> None:
        self.node = node
        self.proxies = proxies
        self.rng = random.Random(seed)
        self.wave_size = wave_size
        self.daemon_config = node.dir / "daemon.toml"
        self.second_config = node.dir / "second.toml"
        self.t0 = time.monotonic()
        self.results = Results()
        self.lasting: list[Lasting] = []
        self.modem_windows: list[ModemWindow] = []
        self.waves: list[Wave] = []
        self.baseline: Wave | None = None
        self.tests: list[str] = []
        self.strangers: dict[str, str] = {}  # sender -> the NUL text it sent
        self.decisions: dict[str, dict[str, Any]] = {}
        self.second: SecondDaemon | None = None
        self.samples: dict[int, Sample] = {}  # the start sample of each daemon, by pid
        self.sample_due: tuple[int, float] | None = None
        self.flows: list[Flow] = []
        self.deck: list[str] = []
        self.kill_armed_until: float | None = None
        self.next_wave = 100  # recipients 010<wave><run><i>: clear of the test phones 0109…

    # ---- the log ---------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, kind: str, detail: str = "") -> None:
        print(f"t={self.now():.1f} {kind} {detail}".rstrip(), file=sys.stderr, flush=True)

    def fault(self, kind: str, detail: str = "") -> None:
        self.results.faults[kind] += 1
        self.log(kind, detail)

    # ---- the daemon ------------------------------------------------------------------------
    def start_daemon(self) -> None:
        try:
            ready = self.node.start_daemon(READY_WAIT_S, config_path=self.daemon_config)
            self.results.ready_s.append(ready)
        except TimeoutError:
            self.results.notes.append(f"t={self.now():.1f} daemon not ready in {READY_WAIT_S}s")
        assert self.node.daemon is not None
        self.sample_due = (self.node.daemon.pid, time.monotonic() + SAMPLE_AFTER_READY_S)

    def take_due_sample(self, force: bool = False) -> None:
        if self.sample_due is None or self.node.daemon is None:
            return
        pid, due = self.sample_due
        if pid != self.node.daemon.pid:
            self.sample_due = None
        elif force or time.monotonic() >= due:
            with contextlib.suppress(OSError):
                self.samples[pid] = Sample(pid, self.now(), rss_kb(pid), fd_count(pid))
            self.sample_due = None

    def watch_daemon(self) -> None:
        """The daemon never exits by itself: note it and start it again."""
        proc = self.node.daemon
        if proc is not None and proc.poll() is not None:
            self.results.exited.append(
                f"t={self.now():.1f} pid {proc.pid} exited {proc.returncode}"
            )
            self.log("note", f"daemon pid {proc.pid} exited by itself ({proc.returncode})")
            self.node.daemon = None
            self.start_daemon()

    # ---- campaigns -----------------------------------------------------------------------
    def send_wave(self, waves: list[Wave]) -> Wave:
        """Send the next wave, kept in `waves` from its first run on (a send that fails
        half-way leaves a wave of the runs that were created)."""
        wave = Wave(self.next_wave, self.wave_size, time.monotonic())
        number = self.next_wave
        self.next_wave += 1
        waves.append(wave)
        for run in range(WAVE_RUNS):
            path = self.node.dir / f"wave-{number}-{run}.txt"
            path.write_text(
                "".join(f"010{number:03d}{run}{i:04d}\n" for i in range(self.wave_size))
            )
            out = self.node.ctl(
                "send",
                "--company",
                f"chaos-{run}",
                "--callback",
                CALLBACK,
                "--phones",
                str(path),
                "--message",
                f"한줄로 카오스 안내 {number}-{run}",
                "--json",
                timeout=120,
            )
            wave.runs.append(str(json.loads(out.stdout)["run_id"]))
        return wave

    def wave_done(self, wave: Wave) -> bool:
        if not wave.runs:
            return True
        rows = pg_fetch(
            "SELECT count(*) FROM hanjullo.runs"
            " WHERE id = ANY($1::uuid[]) AND status = 'completed'",
            wave.runs,
        )
        return int(rows[0][0]) == len(wave.runs)

    def handoff_in_progress(self) -> bool:
        """Some run holds its group and has recipients left to hand to the agents."""
        try:
            rows = pg_fetch(
                "SELECT count(*) FROM hanjullo.runs WHERE id = ANY($1::uuid[])"
                " AND status = 'sending' AND inserted_count > 0"
                " AND inserted_count < target_count",
                [r for w in self.waves for r in w.runs],
            )
        except Exception:
            return False
        return int(rows[0][0]) > 0

    # ---- spam tests ----------------------------------------------------------------------
    def queue_spam_test(self) -> None:
        n = len(self.tests) + 1
        blocked = n % 3 == 0  # every third test: a `blocked` on KT to check, every run
        text = f"카오스 {n} {BLOCKED_WORD} 체험 안내" if blocked else f"카오스 점검 {n}번 안내"
        out = self.node.ctl(
            "spam-test", "--callback", CALLBACK, "--message", text, "--company", "chaos", "--json"
        )
        self.tests.append(str(json.loads(out.stdout)["test_id"]))
        self.log("spam-test", f"#{n} {'(KT blocks)' if blocked else ''}".rstrip())

    def read_decisions(self) -> None:
        status = json.loads(self.node.sim_ctl("status", "--json").stdout)
        for decision in status["network"]["decisions"]:
            self.decisions[decision["ref"]] = decision

    # ---- faults --------------------------------------------------------------------------
    KINDS = (
        "daemon-kill9",
        "second-daemon",
        "mysql-cut",
        "mysql-stall",
        "postgres-cut",
        "postgres-stall",
        "redis-cut",
        "redis-stall",
        "server-restart",
        "agent-hang",
        "modem-unplug",
        "modem-hang",
        "modem-garbage",
        "modem-late",
        "nul-text",
        "clock-step",
    )

    # Dealt twice per deck: the restart-to-flow figure wants several samples.
    EXTRA = ("daemon-kill9",)

    def busy(self, resource: str) -> bool:
        return any(f.resource == resource for f in self.lasting)

    def resource_for(self, kind: str) -> str | None:
        """What `kind` would occupy now, "" for nothing, None when it cannot run now."""
        if kind.endswith("-stall"):
            name = f"proxy:{kind.removesuffix('-stall')}"
            return None if self.busy(name) else name
        if kind == "daemon-kill9":
            return None if self.kill_armed_until is not None else ""
        if kind == "second-daemon":
            return None if self.busy("second") else "second"
        if kind == "clock-step":
            return None if self.busy("clock") else "clock"
        if kind.startswith("modem-"):
            free = [c for c in CARRIERS if not self.busy(f"modem:{c}")]
            return f"modem:{self.rng.choice(free)}" if free else None
        if kind == "agent-hang":
            # One hung agent per group at most: its two others take over its rows.
            idle = [
                a
                for agents in BULK_AGENTS.values()
                if not any(self.busy(f"agent:{x}") for x in agents)
                for a in agents
            ]
            return f"agent:{self.rng.choice(idle)}" if idle else None
        return ""

    def deal(self) -> tuple[str, str]:
        """The next kind from the deck that can run now (the deck is reshuffled when empty),
        and the resource it occupies."""
        for _ in range(2):
            if not self.deck:
                self.deck = [*self.KINDS, *self.EXTRA]
                self.rng.shuffle(self.deck)
            for index, kind in enumerate(self.deck):
                resource = self.resource_for(kind)
                if resource is not None:
                    del self.deck[index]
                    return kind, resource
            self.deck = []
        return "nul-text", ""

    def inject(self) -> None:
        kind, resource = self.deal()
        try:
            getattr(self, "do_" + kind.replace("-", "_"))(resource)
        except Exception as exc:  # noted; the chaos goes on
            self.log("note", f"{kind} not injected: {exc}")
            self.results.notes.append(f"t={self.now():.1f} {kind} not injected: {exc}")

    def hold(
        self, kind: str, resource: str, seconds: float, heal: Callable[[], object], detail: str
    ) -> None:
        self.fault(kind, f"{detail} for {seconds:.1f}s")
        self.lasting.append(Lasting(kind, resource, time.monotonic() + seconds, heal, detail))

    def heal_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for fault in sorted(self.lasting, key=lambda f: f.heal_at):
            if everything or fault.heal_at <= now:
                self.lasting.remove(fault)
                try:
                    fault.heal()
                    self.log("heal", f"{fault.kind} {fault.detail}")
                except Exception as exc:  # a heal must be retried, never dropped
                    self.log("note", f"heal of {fault.kind} failed: {exc}; retrying")
                    fault.heal_at = time.monotonic() + 1.0
                    self.lasting.append(fault)

    def do_daemon_kill9(self, _: str) -> None:
        """Armed now, carried out by the loop once a run is being handed off (the kill then
        lands mid-handoff and the restart's time to flow can be measured), or when
        `KILL_ARM_S` have passed without one."""
        self.kill_armed_until = time.monotonic() + KILL_ARM_S

    def kill_when_armed(self) -> None:
        if self.kill_armed_until is None:
            return
        in_handoff = self.second is None and self.handoff_in_progress()
        if not in_handoff and time.monotonic() < self.kill_armed_until:
            return
        self.kill_armed_until = None
        if in_handoff:
            time.sleep(self.rng.uniform(0.0, 0.5))
        assert self.node.daemon is not None
        pid = self.node.daemon.pid
        self.node.stop_daemon(signal.SIGKILL)
        flow = None
        if in_handoff:
            with contextlib.suppress(Exception):
                flow = self.rows_left()
        why = "mid-handoff" if in_handoff else "no handoff to time"
        if self.second is not None:
            why = "while a second daemon runs"
        elif in_handoff and flow is None:
            why = "mid-handoff, but its last rows had landed"
        self.fault("daemon-kill9", f"pid {pid} ({why})")
        spawned = time.monotonic()
        self.start_daemon()
        if flow is not None:
            flow.spawned_at = spawned
            self.flows.append(flow)

    def rows_left(self) -> Flow | None:
        """The runs of the current wave with recipients the ledger has not inserted yet
        (read after the kill: what the killed daemon committed is all there), and the
        ledger's last entry; None when there are none."""
        wave = self.waves[-1]
        conn = mysql()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COALESCE(MAX(id), 0) FROM hanjullo_ledger")
                row = cur.fetchone()
                last = int(row[0]) if row else 0
                marks = ", ".join(["%s"] * len(wave.runs))
                cur.execute(
                    "SELECT run_ref, SUM(row_count) FROM hanjullo_ledger"
                    f" WHERE kind = 'insert' AND run_ref IN ({marks}) GROUP BY run_ref",
                    wave.runs,
                )
                done = {str(ref): int(n) for ref, n in cur.fetchall()}
        finally:
            conn.close()
        left = [r for r in wave.runs if done.get(r, 0) < wave.size]
        return Flow(0.0, last, left) if left else None

    def first_insert_after(self, flow: Flow) -> bool:
        conn = mysql()
        try:
            with conn.cursor() as cur:
                marks = ", ".join(["%s"] * len(flow.runs))
                cur.execute(
                    "SELECT 1 FROM hanjullo_ledger WHERE id > %s AND kind = 'insert'"
                    f" AND run_ref IN ({marks}) LIMIT 1",
                    [flow.after_id, *flow.runs],
                )
                return cur.fetchone() is not None
        finally:
            conn.close()

    def check_flows(self) -> None:
        now = time.monotonic()
        for flow in list(self.flows):
            try:
                flowing = self.first_insert_after(flow)
            except Exception:
                continue
            if flowing:
                self.results.flow_s.append(now - flow.spawned_at)
                self.log("flow", f"rows flow again {now - flow.spawned_at:.2f}s after the restart")
                self.flows.remove(flow)
            elif now - flow.spawned_at > FLOW_WAIT_S:
                self.results.flow_dropped += 1
                self.flows.remove(flow)

    def do_second_daemon(self, resource: str) -> None:
        self.second = SecondDaemon(self.node, self.second_config)
        second = self.second

        def stop() -> None:
            second.stop()
            self.second = None

        self.hold(
            "second-daemon",
            resource,
            self.rng.uniform(*SECOND_DAEMON_S),
            stop,
            f"pid {second.proc.pid}",
        )

    def _cut(self, name: str) -> None:
        mode = self.rng.choice(["rst", "fin"])
        count = self.proxies.request(cmd="cut", proxy=name, mode=mode)
        self.fault(f"{name}-cut", f"{mode} {count} connections")

    def do_mysql_cut(self, _: str) -> None:
        self._cut("mysql")

    def do_postgres_cut(self, _: str) -> None:
        self._cut("postgres")

    def do_redis_cut(self, _: str) -> None:
        self._cut("redis")

    def _stall(self, name: str, resource: str) -> None:
        self.proxies.request(cmd="stall", proxy=name, new=True, existing=True)
        self.hold(
            f"{name}-stall",
            resource,
            self.rng.uniform(*STALL_S),
            lambda: self.proxies.request(cmd="clear", proxy=name),
            "new and existing connections",
        )

    def do_mysql_stall(self, resource: str) -> None:
        self._stall("mysql", resource)

    def do_postgres_stall(self, resource: str) -> None:
        self._stall("postgres", resource)

    def do_redis_stall(self, resource: str) -> None:
        self._stall("redis", resource)

    def do_server_restart(self, _: str) -> None:
        name = self.rng.choice(["mariadb", "postgres", "redis"])
        down = self.rng.uniform(*SERVER_DOWN_S)
        self.fault("server-restart", f"{name} down for {down:.1f}s")
        try:
            services.stop(name)
            time.sleep(down)
        finally:
            services.start(name)
        self.log("heal", f"server-restart {name} up")

    def do_agent_hang(self, resource: str) -> None:
        number = resource.split(":")[1]
        self.node.sim_ctl("agent", number, "hang")
        self.hold(
            "agent-hang",
            resource,
            self.rng.uniform(*AGENT_HANG_S),
            lambda: self.node.sim_ctl("agent", number, "ok"),
            f"agent {number}",
        )

    def _modem(self, fault: str, resource: str) -> None:
        carrier = resource.split(":")[1]
        start = datetime.now(UTC)
        self.node.sim_ctl("modem", carrier, fault)

        def heal() -> None:
            self.node.sim_ctl("modem", carrier, "replug" if fault == "unplug" else "ok")
            self.modem_windows.append(ModemWindow(carrier, fault, start, datetime.now(UTC)))

        self.hold(f"modem-{fault}", resource, self.rng.uniform(*MODEM_FAULT_S), heal, carrier)

    def do_modem_unplug(self, resource: str) -> None:
        self._modem("unplug", resource)

    def do_modem_hang(self, resource: str) -> None:
        self._modem("hang", resource)

    def do_modem_garbage(self, resource: str) -> None:
        self._modem("garbage", resource)

    def do_modem_late(self, resource: str) -> None:
        self._modem("late", resource)

    def do_nul_text(self, _: str) -> None:
        carrier = self.rng.choice(CARRIERS)
        sender = f"0299{self.rng.randrange(10**6):06d}"
        n = len(self.strangers) + 1
        self.node.sim_ctl(
            "deliver", carrier, "--from", sender, "--escapes", "--text", f"널\\u0000문자 {n}"
        )
        self.strangers[sender] = f"널\x00문자 {n}"
        self.fault("nul-text", f"to {carrier} from {sender}")

    def do_clock_step(self, resource: str) -> None:
        moment = kst_today(self.rng.randint(9, 20), self.rng.randint(0, 59))
        self.node.sim_ctl("clock", "set", moment.isoformat())
        self.hold(
            "clock-step",
            resource,
            self.rng.uniform(*CLOCK_STEP_S),
            lambda: self.node.sim_ctl("clock", "reset"),
            f"to {moment.isoformat(timespec='minutes')}",
        )

    # ---- the period ----------------------------------------------------------------------
    def run_baseline(self) -> None:
        baseline: list[Wave] = []
        wave = self.send_wave(baseline)
        deadline = time.monotonic() + WAVE_TIMEOUT_S
        while not self.wave_done(wave):
            if time.monotonic() > deadline:
                raise SystemExit("the fault-free wave did not finish: the node is not healthy")
            time.sleep(POLL_S)
        wave.done_at = time.monotonic()
        self.baseline = wave
        self.log("baseline", f"{wave.recipients} recipients in {wave.done_at - wave.sent_at:.1f}s")

    def run(self, seconds: float) -> None:
        start = time.monotonic()
        self.log("chaos", f"{seconds:.0f}s of faults from now")
        end = start + seconds
        next_fault = start + self.rng.uniform(*FAULT_GAP_S)
        next_test = start + self.rng.uniform(0, SPAM_TEST_GAP_S[0])
        next_read = start
        current: Wave | None = None
        while (now := time.monotonic()) < end:
            self.watch_daemon()
            self.heal_due()
            self.take_due_sample()
            self.check_flows()
            self.kill_when_armed()
            try:
                if current is not None and self.wave_done(current):
                    current.done_at = time.monotonic()
                    self.log(
                        "wave",
                        f"{current.number} final in {current.done_at - current.sent_at:.1f}s",
                    )
                    current = None
                elif current is not None and now - current.sent_at > WAVE_TIMEOUT_S:
                    self.log("note", f"wave {current.number} not final after {WAVE_TIMEOUT_S:.0f}s")
                    current = None
                if current is None:
                    current = self.send_wave(self.waves)
                if now >= next_test:
                    self.queue_spam_test()
                    next_test = now + self.rng.uniform(*SPAM_TEST_GAP_S)
                if now >= next_read:
                    self.read_decisions()
                    next_read = now + 10
            except Exception as exc:  # a server may be down or stalled right now
                self.log("note", f"bench step failed: {type(exc).__name__}: {exc}")
            if now >= next_fault:
                self.inject()
                next_fault = time.monotonic() + self.rng.uniform(*FAULT_GAP_S)
            time.sleep(POLL_S)

    def heal_everything(self) -> None:
        self.kill_armed_until = None
        self.heal_due(everything=True)
        deadline = time.monotonic() + 60
        while self.lasting and time.monotonic() < deadline:
            time.sleep(1.0)
            self.heal_due(everything=True)
        with contextlib.suppress(CommandFailed):
            self.node.sim_ctl("clock", "reset")
        self.watch_daemon()

    def drain(self) -> None:
        """Let every run and test become final (bounded), the last wave's time counted."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        runs = [r for w in self.waves for r in w.runs]
        while time.monotonic() < deadline:
            self.watch_daemon()
            self.take_due_sample()
            self.check_flows()
            try:
                for wave in self.waves:
                    if wave.done_at is None and self.wave_done(wave):
                        wave.done_at = time.monotonic()
                (left,) = pg_fetch(
                    "SELECT (SELECT count(*) FROM hanjullo.runs WHERE id = ANY($1::uuid[])"
                    "        AND status NOT IN ('completed', 'cancelled', 'rejected'))"
                    "     + (SELECT count(*) FROM hanjullo.spam_tests WHERE id = ANY($2::uuid[])"
                    "        AND status NOT IN ('completed', 'cancelled'))",
                    runs,
                    self.tests,
                )[0]
                if left == 0:
                    return
            except Exception as exc:
                self.log("note", f"drain poll failed: {exc}")
            time.sleep(0.5)
        self.log("note", f"not everything final after {DRAIN_TIMEOUT_S:.0f}s")


# ---- the invariants, all in one place -------------------------------------------------------
def agent_table_counts(refs: list[str]) -> dict[str, tuple[int, int]]:
    """(rows, distinct numbers) of every run or test in every agent table, live and log
    tables alike, in one statement."""
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_%'")
            tables = [
                r[0]
                for r in cur.fetchall()
                if r[0].split("_")[2].isdigit() and int(r[0].split("_")[2]) <= 10
            ]
            # A run's rows carry its id in bill_id (app_etc1 is its campaign's), a spam
            # test's in app_etc1.
            marks = ", ".join(["%s"] * len(refs))
            union = " UNION ALL ".join(
                f"SELECT COALESCE(bill_id, app_etc1) AS ref, dest_no FROM `{t}`"
                f" WHERE bill_id IN ({marks}) OR (bill_id IS NULL AND app_etc1 IN ({marks}))"
                for t in tables
            )
            cur.execute(
                f"SELECT ref, COUNT(*), COUNT(DISTINCT dest_no) FROM ({union}) AS a GROUP BY ref",
                refs * 2 * len(tables),
            )
            return {str(ref): (int(n), int(d)) for ref, n, d in cur.fetchall()}
    finally:
        conn.close()


def run_views(node: SimulatedNode, runs: list[str]) -> dict[str, dict[str, Any]]:
    def one(run_id: str) -> dict[str, Any]:
        out = node.ctl("run", "show", run_id, "--json", check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {"error": out.stderr}

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(runs, pool.map(one, runs), strict=True))


def overlaps(window: ModemWindow, start: datetime, end: datetime) -> bool:
    return window.start <= end and window.end >= start


def check_invariants(chaos: Chaos, end_sample: Sample | None) -> tuple[list[str], list[str]]:
    """Every invariant of the run: the violations, and what was checked (for the report)."""
    violations: list[str] = []
    checked: list[str] = []
    runs = [r for w in chaos.waves for r in w.runs]
    counts = agent_table_counts(runs + chaos.tests)
    rows_total = sum(counts.get(r, (0, 0))[0] for r in runs)
    distinct_total = sum(counts.get(r, (0, 0))[1] for r in runs)
    checked.append(
        f"agent tables: {rows_total} rows of {distinct_total} distinct numbers"
        f" for {len(runs)} runs (one statement)"
    )

    # Every run final, its counters agreeing, every recipient in the agent tables once.
    for run_id, view in run_views(chaos.node, runs).items():
        if "error" in view:
            violations.append(f"run {run_id}: run show failed: {view['error'].strip()}")
            continue
        expected = view["target"] - sum(view["skipped"].values())
        rows, distinct = counts.get(run_id, (0, 0))
        if view["status"] != "completed":
            violations.append(f"run {run_id}: not final: {view['status']} ({view['reason']})")
        if not view["success"] + view["fail"] == view["inserted"] == expected:
            violations.append(
                f"run {run_id}: counters success {view['success']} + fail {view['fail']},"
                f" inserted {view['inserted']}, target - skipped {expected}"
            )
        if not rows == distinct == view["inserted"]:
            violations.append(
                f"run {run_id}: agent tables hold {rows} rows of {distinct} numbers,"
                f" inserted {view['inserted']}"
            )

    # Spam tests: final, verdicts against the simulator's ground truth and the faults.
    tests = pg_fetch(
        "SELECT id::text, status, message_content_sms, callback_number, started_at"
        " FROM hanjullo.spam_tests WHERE id = ANY($1::uuid[])",
        chaos.tests,
    )
    by_id = {t[0]: t for t in tests}
    results = pg_fetch(
        "SELECT test_id::text, carrier, result, sms_table, sms_msgkey, decided_at"
        " FROM hanjullo.spam_test_results WHERE test_id = ANY($1::uuid[])",
        chaos.tests,
    )
    sent_rows: Counter[str] = Counter()
    verdicts = Counter(str(r[2]) for r in results)
    truth_checked = during_fault = 0
    for test_id, carrier, result, table, msgkey, decided_at in results:
        if msgkey is not None and f"{table}#{msgkey}" in chaos.decisions:
            truth_checked += 1
        started = by_id[test_id][4] if test_id in by_id else None
        if decided_at is not None and started is not None:
            during_fault += any(
                w.carrier == carrier and overlaps(w, started, decided_at)
                for w in chaos.modem_windows
            )
        if msgkey is not None:
            sent_rows[test_id] += 1
        decision = chaos.decisions.get(f"{table}#{msgkey}") if msgkey is not None else None
        if result == "blocked":
            if decision is None:
                violations.append(f"test {test_id} {carrier}: blocked, no ground truth for it")
            elif not decision["blocked"]:
                where = (
                    f"reached the handset at {decision['delivered_at']}"
                    if decision["delivered_at"]
                    else "was not filtered (held for the handset)"
                )
                violations.append(
                    f"test {test_id} {carrier}: blocked, but the text {where};"
                    f" decided at {decided_at}"
                )
            started = by_id[test_id][4]
            for window in chaos.modem_windows:
                if window.carrier == carrier and overlaps(window, started, decided_at):
                    violations.append(
                        f"test {test_id} {carrier}: blocked while its modem was {window.kind}"
                        f" ({window.start:%H:%M:%S}-{window.end:%H:%M:%S}; test"
                        f" {started:%H:%M:%S}-{decided_at:%H:%M:%S})"
                    )
        elif result == "pass" and decision is not None and decision["blocked"]:
            violations.append(f"test {test_id} {carrier}: pass, but the carrier filtered it")
    for test_id, status, *_ in tests:
        if status != "completed":
            violations.append(f"test {test_id}: not final: {status}")
        rows, distinct = counts.get(test_id, (0, 0))
        if not rows == distinct == sent_rows[test_id]:
            violations.append(
                f"test {test_id}: {rows} agent rows ({distinct} numbers) for"
                f" {sent_rows[test_id]} carriers sent"
            )
    checked.append(
        f"verdicts: {', '.join(f'{v} {n}' for v, n in sorted(verdicts.items()))};"
        f" {truth_checked} against the simulator's decisions, {during_fault} while the"
        " carrier's modem was faulted"
    )
    missing = set(chaos.tests) - set(by_id)
    violations += [f"test {t}: not in hanjullo.spam_tests" for t in sorted(missing)]

    # Receipts: each one attributed to a test (as its pass or late) carries that test's
    # text and sender; a stranger's text belongs to no test and is recorded once.
    receipts = pg_fetch(
        "SELECT r.id, r.carrier, r.sender, r.text, r.test_id::text, x.test_id::text"
        " FROM hanjullo.modem_receipts r LEFT JOIN hanjullo.spam_test_results x"
        "   ON r.id IN (x.receipt_id, x.late_receipt_id)"
    )
    for rid, carrier, sender, text, own, claimed in receipts:
        for test_id in {own, claimed} - {None}:
            test = by_id.get(test_id)
            if test is None:
                continue
            if text != stored_text(test[2] or "") or normalise_phone(sender) != test[3]:
                violations.append(
                    f"receipt {rid} ({carrier}, from {sender}, {text!r}) attributed to test"
                    f" {test_id} whose text is {test[2]!r} from {test[3]}"
                )
        if normalise_phone(sender) in chaos.strangers and (own or claimed):
            violations.append(
                f"receipt {rid}: a stranger's text attributed to test {own or claimed}"
            )
    attributed = sum(1 for r in receipts if r[4] or r[5])
    checked.append(
        f"receipts: {len(receipts)}, {attributed} attributed to a test;"
        f" {len(chaos.strangers)} NUL texts from strangers"
    )
    seen = Counter(
        (normalise_phone(s), t)
        for _, _, s, t, *_ in receipts
        if normalise_phone(s) in chaos.strangers
    )
    for sender, text in chaos.strangers.items():
        n = seen[(sender, stored_text(text))]
        if n != 1:
            violations.append(f"the NUL text from {sender}: recorded {n} times (expected once)")

    # The daemon: never exited by itself; memory and descriptors near its own start.
    violations += [f"daemon exited by itself: {e}" for e in chaos.results.exited]
    start = chaos.samples.get(end_sample.pid) if end_sample else None
    if end_sample is None or start is None:
        violations.append("no memory sample of the last daemon")
    else:
        rss_bound = max(start.rss_kb * RSS_GROWTH, start.rss_kb + RSS_GROWTH_KB)
        if end_sample.rss_kb > rss_bound:
            violations.append(
                f"daemon RSS {end_sample.rss_kb} kB at the end, {start.rss_kb} kB at its start"
            )
        if end_sample.fds > start.fds + FD_GROWTH:
            violations.append(f"daemon fds {end_sample.fds} at the end, {start.fds} at its start")
    return violations, checked


# ---- the report -----------------------------------------------------------------------------
def rate(waves: list[Wave]) -> float | None:
    done = [w for w in waves if w.done_at is not None]
    seconds = sum(w.done_at - w.sent_at for w in done if w.done_at is not None)
    return sum(w.recipients for w in done) / seconds if seconds > 0 else None


def report(
    chaos: Chaos,
    end_sample: Sample | None,
    violations: list[str],
    checked: list[str],
    args: Any,
) -> None:
    res = chaos.results
    print(f"seed {args.seed}, {args.minutes:g} minutes of chaos, node at {chaos.node.dir}")
    print("faults injected:")
    for kind in Chaos.KINDS:
        print(f"  {kind:<16} {res.faults[kind]}")
    print(f"faults {sum(res.faults.values())} across {len(+res.faults)} kinds")
    if res.flow_s:
        print(
            f"restart to rows flowing after kill -9: median {statistics.median(res.flow_s):.2f}s,"
            f" max {max(res.flow_s):.2f}s over {len(res.flow_s)} restarts"
            f" ({res.flow_dropped} without flow within {FLOW_WAIT_S:.0f}s)"
        )
    else:
        print("restart to rows flowing after kill -9: no restart met a handoff in progress")
    if res.ready_s:
        print(f"daemon spawn to READY=1: median {statistics.median(res.ready_s):.2f}s")
    base = rate([chaos.baseline]) if chaos.baseline else None
    during = rate(chaos.waves)
    finished = sum(1 for w in chaos.waves if w.done_at is not None)
    if base and during:
        print(
            f"throughput: fault-free wave {base:,.0f} recipients/s, {finished} chaos waves"
            f" {during:,.0f}/s: ratio {during / base:.2f} (goal >= 0.8)"
        )
    runs = sum(len(w.runs) for w in chaos.waves)
    recipients = sum(w.recipients for w in chaos.waves)
    print(f"campaigns: {runs} runs, {recipients} recipients; spam tests: {len(chaos.tests)}")
    start = chaos.samples.get(end_sample.pid) if end_sample else None
    if start and end_sample:
        print(
            f"last daemon (pid {end_sample.pid}, sampled from t={start.at_s:.0f}s):"
            f" RSS {start.rss_kb / 1024:.1f} -> {end_sample.rss_kb / 1024:.1f} MB,"
            f" fds {start.fds} -> {end_sample.fds}"
        )
    for line in checked:
        print(f"checked {line}")
    for note in res.notes:
        print(f"note: {note}")
    for violation in violations:
        print(f"VIOLATION {violation}")
    if violations:
        print(
            f"reproduce: HANJULLO_TEST_INSTANCE={os.environ.get('HANJULLO_TEST_INSTANCE', '')}"
            " flock -o /tmp/hanjullo-integration.lock"
            f" .venv/bin/python bench/chaos.py --seed {args.seed} --minutes {args.minutes:g}"
            f" --wave-size {args.wave_size}"
        )
    print(f"chaos_violations {len(violations)}")


def configure(node: SimulatedNode, proxies: ProxySet) -> None:
    """node.toml (the simulator's and this bench's: direct), daemon.toml (through the
    proxies) and second.toml (the same, with its own socket)."""
    direct = node.config_path.read_text()
    proxied = settings(direct, {name: {"port": port} for name, port in proxies.ports.items()})
    (node.dir / "daemon.toml").write_text(proxied)
    second = settings(proxied, {"socket": {"path": str(node.dir / "second.sock")}})
    (node.dir / "second.toml").write_text(second)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--wave-size", type=int, default=5000, help="recipients per run")
    parser.add_argument("--dir", type=Path, default=None, help="the node's files (kept)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 10**6)
    if not 1 <= args.wave_size <= 9999:
        parser.error("--wave-size must be 1-9999")
    print(f"seed {args.seed}", flush=True)
    print(f"chaos: seed {args.seed}, {args.minutes:g} minutes", file=sys.stderr, flush=True)
    directory = (args.dir or Path(f"/tmp/hj-chaos-{args.seed}-{os.getpid()}")).resolve()
    directory.mkdir(parents=True, exist_ok=True)

    for name, port in services.PORTS.items():
        if not services.port_open(port):
            services.start(name)
    services.fresh_databases(*instance_databases(current_instance()))
    proxies = ProxySet(directory)
    node = SimulatedNode(directory, overrides=lambda text: settings(text, NODE_SETTINGS))
    chaos = Chaos(node, proxies, args.seed, args.wave_size)
    try:
        configure(node, proxies)
        node.db_init()
        node.start_sim()
        chaos.start_daemon()
        node.wait_components(
            lambda s: (
                all(v == "running" for k, v in s.items() if k.startswith("modem:"))
                and s.get("spam-tests") == "running"
            ),
            60,
            "the phones ready",
        )
        chaos.run_baseline()
        chaos.run(args.minutes * 60)
        chaos.log("end", "healing everything, letting runs and tests finish")
        chaos.heal_everything()
        chaos.drain()
        time.sleep(SETTLE_S)
        chaos.take_due_sample(force=True)
        chaos.check_flows()
        chaos.read_decisions()
        end_sample = None
        if node.daemon is not None and node.daemon.poll() is None:
            pid = node.daemon.pid
            end_sample = Sample(pid, chaos.now(), rss_kb(pid), fd_count(pid))
        violations, checked = check_invariants(chaos, end_sample)
        report(chaos, end_sample, violations, checked, args)
    finally:
        with contextlib.suppress(Exception):
            chaos.heal_due(everything=True)
        if chaos.second is not None:
            chaos.second.stop()
        node.close()
        proxies.close()
        for name, port in services.PORTS.items():  # the servers stay up, whatever happened
            if not services.port_open(port):
                services.start(name)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
