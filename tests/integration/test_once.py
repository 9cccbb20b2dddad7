"""Exactly once with two writers and faults between steps (issue 12), on the real servers.

The writer role and its fence on MySQL itself; a batch whose second table's connection the
fault proxy cuts while the first table's load is slow; LOAD DATA's warnings; and two
daemons started on one configuration while a run is handed off.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from config.model import NodeConfig
from daemon.dispatcher import handoff as engine
from daemon.dispatcher import results
from daemon.dispatcher.backends import MySQLAgentTables, MySQLWriterLock
from daemon.role import WriterState
from daemon.runtime import Runtime
from daemon.spamtest.backends import MySQLTestTables
from daemon.supervisor import DependencyDown
from dispatch import agent_tables, handoff, ledger
from dispatch.handoff import AgentRow
from dispatch.store.runs import RunStatus
from simulators.faultproxy import FaultProxy, FaultProxyThread, Rule, RuleAction
from simulators.harness import SimulatedNode, command, instance_database, wait_for
from tests.config_edits import overrides, settings
from tests.integration.helpers import mysql, pg_fetch
from tests.integration.test_dispatch import agent_rows, fast_dispatch, finished, numbers, send
from tests.unit.dispatch_fakes import DAY, Fakes, dispatcher, make_run

MYSQL = ("127.0.0.1", 3306)
POSTGRES = ("127.0.0.1", 5432)
TABLES = ["SMSQ_SEND_1", "SMSQ_SEND_2", "SMSQ_SEND_3"]


def on_mysql(config: NodeConfig, port: int = MYSQL[1]) -> NodeConfig:
    """`config` on this test instance's MySQL database, through `port`."""
    section = config.mysql.model_copy(update={"port": port, "database": instance_database()})
    return config.model_copy(update={"mysql": section})


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    """A dispatcher context on in-process PostgreSQL, leases and agent monitor, with bulk-1's
    agent tables present in this instance's MySQL database."""
    f = dispatcher(tmp_path)
    f.ctx.runtime.config = on_mysql(f.ctx.config)
    conn = await agent_tables.connect(f.ctx.config.mysql)
    try:
        await agent_tables.ensure_tables(conn, TABLES, DAY.date())
        await ledger.ensure_tables(conn)
    finally:
        conn.close()
    yield f


async def run_rows(config: NodeConfig, run_ref: str) -> Counter[str]:
    """How often each number of the run is in bulk-1's tables."""
    conn = await agent_tables.connect(config.mysql)
    try:
        found: Counter[str] = Counter()
        async with conn.cursor() as cur:
            for table in TABLES:
                # A run's rows carry its id in bill_id, a spam test's in app_etc1.
                match = "(bill_id = %s OR (bill_id IS NULL AND app_etc1 = %s))"
                await cur.execute(
                    f"SELECT dest_no FROM `{table}` WHERE {match}", (run_ref, run_ref)
                )
                found.update(r[0] for r in await cur.fetchall())
                await cur.execute(f"DELETE FROM `{table}` WHERE {match}", (run_ref, run_ref))
        return found
    finally:
        conn.close()


def batch(run_ref: str, count: int, dest: str = "0109{:07d}") -> handoff.StagedRows:
    fixed = ("0212345678", "안내", "S", "", "", "", "", run_ref, "acme", run_ref)
    rows = [AgentRow(dest.format(i), *fixed) for i in range(count)]
    return handoff.stage(list(rows), as_data=True)


# ---- item 1: one writer per node, and its fence ---------------------------------------------


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
async def test_a_check_waiting_behind_a_takeover_is_fenced_under_either_isolation(
    fakes: Fakes, isolation: str
) -> None:
    """The takeover holds the epoch FOR UPDATE; the old writer's check waits behind it; the
    takeover appends its epoch and commits: the old writer must be fenced (under READ
    COMMITTED a MAX(epoch) read gave it its own epoch back; under REPEATABLE READ the
    takeover's insert deadlocked with it)."""
    config = fakes.ctx.config
    node_id = f"fence-{uuid.uuid4().hex[:12]}"
    old_fence = ledger.Fence(node_id, 1)
    setup, takeover, old = [await agent_tables.connect(config.mysql) for _ in range(3)]
    try:
        async with setup.cursor() as cur:
            await ledger.append_epoch(cur, node_id, 1, "old-host", 1)
        for conn in (takeover, old):
            async with conn.cursor() as cur:
                await cur.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation}")
        await takeover.begin()
        async with takeover.cursor() as tcur:
            assert await ledger.last_epoch_for_update(tcur, node_id) == 1
            await old.begin()
            async with old.cursor() as ocur:
                await ocur.execute("SELECT CONNECTION_ID()")
                (old_id,) = await ocur.fetchone()
                check = asyncio.create_task(ledger.check_fence(ocur, old_fence))
                await lock_wait(setup, int(old_id))
                assert not check.done()
                await ledger.append_epoch(tcur, node_id, 2, "new-host", 2)
                await takeover.commit()
                # The old writer's cursor stays open until its check has answered.
                with pytest.raises(ledger.Fenced, match=r"epochs \[1, 2\]"):
                    await asyncio.wait_for(check, 10)
            await old.rollback()
    finally:
        async with setup.cursor() as cur:
            await cur.execute("DELETE FROM hanjullo_fence WHERE node_id = %s", (node_id,))
        for conn in (setup, takeover, old):
            conn.close()


async def lock_wait(watcher: Any, session: int) -> None:
    """Return once MySQL session `session` is stuck in a statement (seen from `watcher`,
    same account): the fence read, which returns at once unless it waits for a lock."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with watcher.cursor() as cur:
            await cur.execute(
                "SELECT 1 FROM information_schema.PROCESSLIST"
                " WHERE ID = %s AND COMMAND = 'Query' AND INFO LIKE '%%hanjullo_fence%%'",
                (session,),
            )
            if await cur.fetchone():
                return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"session {session} never waited for a lock")


async def test_one_writer_per_node_and_a_takeover_fences_the_old_epoch(fakes: Fakes) -> None:
    runtime = fakes.ctx.runtime
    first, second = MySQLWriterLock(runtime), MySQLWriterLock(runtime)
    old = MySQLAgentTables(runtime)
    await old.open()
    run_ref = str(uuid.uuid4())
    try:
        fence = await first.take()
        assert fence is not None
        assert await second.take() is None  # the holder lives: the second waits
        holder = await second.holder()
        assert holder is not None and holder.epoch == fence.epoch
        assert holder.pid > 0 and holder.host
        with pytest.raises(DependencyDown, match="writer role"):  # not the writer yet
            await old.write("SMSQ_SEND_1", batch(run_ref, 5), (1, 5))
        old.fence = fence
        await old.write("SMSQ_SEND_1", batch(run_ref, 5), (1, 5))
        await first.release()  # the holder stops: the role is free at once
        taken = await second.take()
        assert taken is not None and taken.epoch == fence.epoch + 1
        with pytest.raises(DependencyDown, match="another daemon took the writer role"):
            await old.write("SMSQ_SEND_1", batch(run_ref, 5, "0108{:07d}"), (6, 10))
        assert await old.tables_written(run_ref) == ["SMSQ_SEND_1"]
        assert await run_rows(runtime.config, run_ref) == Counter(
            {f"0109{i:07d}": 1 for i in range(5)}
        )
    finally:
        await second.release()
        await old.close()


async def test_spam_test_rows_are_fenced_by_the_writer_epoch(fakes: Fakes) -> None:
    """The spam-test engine's agent rows go in (and are pulled back) only under the node's
    writer epoch: a daemon that lost the role writes no test row."""
    runtime = fakes.ctx.runtime
    first, second = MySQLWriterLock(runtime), MySQLWriterLock(runtime)
    role = WriterState()
    tables = MySQLTestTables(lambda: role.fence)
    tables.pool = await agent_tables.create_pool(runtime.config.mysql, maxsize=2)
    test_ref = str(uuid.uuid4())

    def row(number: str) -> tuple[str, AgentRow]:
        values = AgentRow(number, "0212345678", "테스트", "S", None, None, None, None, test_ref, "")
        return "SMSQ_SEND_3", values

    try:
        with pytest.raises(DependencyDown, match="writer role"):  # not the writer (yet)
            await tables.insert([row("01011110000")])
        fence = await first.take()
        assert fence is not None
        role.taken(fence)
        assert len(await tables.insert([row("01011110001")])) == 1
        await first.release()
        assert await second.take() is not None  # another daemon took the node over
        with pytest.raises(DependencyDown, match="another daemon took the writer role"):
            await tables.insert([row("01011110002")])
        with pytest.raises(DependencyDown, match="another daemon took the writer role"):
            await tables.pull_back(["SMSQ_SEND_3"], test_ref)
        rows = await run_rows(runtime.config, test_ref)
        assert rows == Counter({"01011110001": 1})
    finally:
        await second.release()
        await agent_tables.close_pool(tables.pool)


async def test_the_ledger_is_pruned_of_runs_settled_beyond_the_result_horizon(
    fakes: Fakes,
) -> None:
    """`ledger_runs` and `prune` on the real server, driven by the result horizon."""
    runtime = fakes.ctx.runtime
    lock, tables = MySQLWriterLock(runtime), MySQLAgentTables(runtime)
    await tables.open()
    try:
        tables.fence = await lock.take()
        fakes.ctx.tables = tables
        kept = make_run("acme", status=RunStatus.SENDING, line_group="bulk-1", started_at=DAY)
        done = make_run("acme", status=RunStatus.SENDING, line_group="bulk-1", started_at=DAY)
        for run in (kept, done):
            fakes.book.add(run, 5)
            for table in ("SMSQ_SEND_1", "SMSQ_SEND_2"):
                await tables.write(table, batch(str(run.id), 5), (1, 5))
        await fakes.book.set_status(done.id, RunStatus.COMPLETED, None)
        fakes.clock.moment = DAY + timedelta(hours=fakes.ctx.settings.result_horizon_h + 1)
        await results.prune_ledger(fakes.ctx)
        left = await tables.ledger_runs()
        assert str(kept.id) in left and str(done.id) not in left
        assert await tables.tables_written(str(done.id)) == []
        assert await tables.tables_written(str(kept.id)) == ["SMSQ_SEND_1", "SMSQ_SEND_2"]
        await run_rows(runtime.config, str(kept.id))
        await run_rows(runtime.config, str(done.id))
    finally:
        await lock.release()
        await tables.close()


async def test_a_load_data_the_server_warned_about_is_rolled_back(fakes: Fakes) -> None:
    """LOAD DATA LOCAL behaves like IGNORE: a too-long number is truncated with a warning.
    The batch must fail whole, not land with a damaged row."""
    runtime = fakes.ctx.runtime
    lock, tables = MySQLWriterLock(runtime), MySQLAgentTables(runtime)
    await tables.open()
    try:
        tables.fence = await lock.take()
        run_ref = str(uuid.uuid4())
        with pytest.raises(handoff.BatchRejected, match="warnings"):
            await tables.write("SMSQ_SEND_2", batch(run_ref, 3, "0109{:07d}" + "9" * 20), (1, 3))
        assert await run_rows(runtime.config, run_ref) == Counter()
        assert await tables.tables_written(run_ref) == []
    finally:
        await lock.release()
        await tables.close()


def writes_running() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if "AgentTables.write" in getattr(t.get_coro(), "__qualname__", "")
    ]


# ---- acceptance 4: the second table's write is cut while the first is slow -------------------


async def test_a_batch_cut_on_one_table_while_another_loads_slowly_lands_once(
    fakes: Fakes,
) -> None:
    async with FaultProxy(0, MYSQL, name="mysql") as proxy:
        runtime = Runtime(config=on_mysql(fakes.ctx.config, proxy.port), clock=fakes.clock)
        lock, tables = MySQLWriterLock(fakes.ctx.runtime), MySQLAgentTables(runtime)
        await tables.open()
        try:
            tables.fence = await lock.take()
            fakes.ctx.tables = tables
            run = make_run("acme", status=RunStatus.SENDING, line_group="bulk-1", started_at=DAY)
            run_id = fakes.book.add(run, 900).id
            await proxy.add_rule(
                Rule("slow-1", r"INTO TABLE `SMSQ_SEND_1`", RuleAction.DELAY, delay_s=1.5)
            )
            await proxy.add_rule(Rule("cut-2", r"INTO TABLE `SMSQ_SEND_2`", RuleAction.CUT))
            state = fakes.ctx.registry.state(run_id, "acme")
            await engine.run_handoff(fakes.ctx, state)
            # A write still running ends too (the slow one, had the retry not waited for it).
            await asyncio.gather(*writes_running(), return_exceptions=True)
            assert proxy.rule_hits("cut-2") == 1 and proxy.rule_hits("slow-1") == 1
            counts = await run_rows(fakes.ctx.config, str(run_id))
            assert len(counts) == 900 and set(counts.values()) == {1}, Counter(counts.values())
            assert fakes.book.runs[run_id].status == RunStatus.DRAINING
        finally:
            await lock.release()
            await tables.close()


async def warm(tables: MySQLAgentTables) -> None:
    """Open the pool's connections now: a connection opened later commits its session
    setup, and that COMMIT is not the one a test's rule is after."""
    assert tables.pool is not None
    held = [await tables.pool.acquire() for _ in range(tables.pool.maxsize)]
    for conn in held:
        tables.pool.release(conn)


async def test_a_batch_commit_whose_outcome_the_client_never_learned_lands_once(
    fakes: Fakes,
) -> None:
    """Review finding F4: one table's COMMIT is on its way when its connection resets; the
    server commits it seconds later. The retry's lookup ran meanwhile, in the same epoch:
    a plain read of the ledger did not see the entry yet and the rows went in twice."""
    async with FaultProxy(0, MYSQL, name="mysql") as proxy:
        runtime = Runtime(config=on_mysql(fakes.ctx.config, proxy.port), clock=fakes.clock)
        lock, tables = MySQLWriterLock(fakes.ctx.runtime), MySQLAgentTables(runtime)
        await tables.open()
        try:
            tables.fence = await lock.take()
            fakes.ctx.tables = tables
            await warm(tables)
            run = make_run("acme", status=RunStatus.SENDING, line_group="bulk-1", started_at=DAY)
            run_id = fakes.book.add(run, 900).id
            await proxy.add_rule(Rule("late", r"\x03COMMIT", RuleAction.ORPHAN, delay_s=3.0))
            state = fakes.ctx.registry.state(run_id, "acme")
            await engine.run_handoff(fakes.ctx, state)
            assert proxy.rule_hits("late") == 1
            deadline = time.monotonic() + 15
            while any(
                c.state != "closed" for c in proxy.connections() if "late" in c.rules_fired
            ):  # the orphaned COMMIT has reached the server and been answered
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            counts = await run_rows(fakes.ctx.config, str(run_id))
            assert len(counts) == 900 and set(counts.values()) == {1}, Counter(counts.values())
            assert fakes.book.runs[run_id].status == RunStatus.DRAINING
        finally:
            await lock.release()
            await tables.close()


# ---- acceptance 2: two daemons on one configuration -----------------------------------------


class SecondDaemon:
    """Another `hanjullo-noded` on a copy of the node's configuration (its own socket)."""

    def __init__(self, node: SimulatedNode) -> None:
        self.config = node.dir / "second.toml"
        self.config.write_text(
            settings(
                node.config_path.read_text(), {"socket": {"path": str(node.dir / "second.sock")}}
            )
        )
        self.proc = subprocess.Popen(
            [*command("hanjullo-noded"), "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=(node.dir / "second.stderr").open("ab"),
            start_new_session=True,
        )

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [*command("hanjulloctl"), "status", "--json", "--config", str(self.config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def writer(self) -> dict[str, Any]:
        return dict(self.status().get("dispatch", {}).get("writer") or {})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Acceptance 2's run: 60,000 recipients, handed off and drained while two daemons run.
TWO_DAEMON_RUN = 60_000


@pytest.fixture
def slow_node(node_dir: Path) -> Iterator[SimulatedNode]:
    """Agents at 1,500 rows/s each and a small backlog bound: the handoff goes at the
    agents' drain rate, so 60,000 recipients take about 15 s and the kill lands mid-run
    (the simulated agents' default 100 rows/s would make it 200 s)."""
    edit = overrides(
        fast_dispatch,
        {
            "simulator": {"agents": {"rate_per_s": 1500}},
            "dispatch": {"batch_size": 1500, "backlog_bound": 2000},
        },
    )
    node = SimulatedNode(node_dir, overrides=edit)
    node.db_init()
    node.start_sim()
    node.start_daemon()
    try:
        yield node
    finally:
        node.close()


def ledger_epochs(run_id: str) -> Counter[int]:
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT epoch, SUM(row_count) FROM hanjullo_ledger WHERE run_ref = %s"
                " AND kind = 'insert' GROUP BY epoch",
                (run_id,),
            )
            return Counter({int(e): int(n) for e, n in cur.fetchall()})
    finally:
        conn.close()


def test_two_daemons_on_one_node_one_writes_and_the_other_takes_over_after_a_kill_9(
    slow_node: SimulatedNode,
) -> None:
    """Acceptance 2 with the issue's 60,000 recipients."""
    node = slow_node
    assert node.daemon is not None
    first_pid = node.daemon.pid
    second = SecondDaemon(node)
    try:
        passive = wait_for(
            lambda: (w := second.writer()).get("role") == "passive" and w,
            30,
            "the second daemon to stay passive",
            interval_s=0.3,
        )
        assert passive["holder"]["pid"] == first_pid
        # Nor does it test for spam or own the test phones (their ports are the writer's).
        status = second.status()
        assert status["modems"] and {m["state"] for m in status["modems"]} == {"passive"}
        (spam,) = [c for c in status["components"] if c["name"] == "spam-tests"]
        assert spam["reason"].startswith("passive"), spam
        run_id = send(node, "K", numbers("71", TWO_DAEMON_RUN))
        wait_for(
            lambda: (
                int(json.loads(node.ctl("run", "show", run_id, "--json").stdout)["inserted"])
                >= TWO_DAEMON_RUN // 3
            ),
            90,
            "the first daemon to hand off a third",
            interval_s=0.2,
        )
        epochs = ledger_epochs(run_id)
        assert list(epochs) == [passive["epoch"]]  # only the first daemon has inserted
        refused = subprocess.run(
            [*command("hanjulloctl"), "run", "pause", run_id, "--config", str(second.config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert refused.returncode != 0 and "passive" in refused.stdout + refused.stderr
        node.stop_daemon(signal.SIGKILL)
        taken = wait_for(
            lambda: (w := second.writer()).get("role") == "writer" and w,
            30,
            "the second daemon to become the writer",
            interval_s=0.3,
        )
        assert taken["epoch"] > passive["epoch"]
        wait_for(
            lambda: "passive" not in {m["state"] for m in second.status()["modems"]},
            30,
            "the new writer to open the test phones",
            interval_s=0.3,
        )
        started = time.monotonic()
        info = finished(node, run_id, 180)
        rows = agent_rows(run_id)
        assert rows["total"] == rows["distinct"] == info["inserted"] == TWO_DAEMON_RUN
        epochs = ledger_epochs(run_id)
        assert set(epochs) == {passive["epoch"], taken["epoch"]}  # both wrote, neither twice
        assert sum(epochs.values()) == TWO_DAEMON_RUN, (epochs, time.monotonic() - started)
    finally:
        second.close()


# ---- acceptance 3: kill -9 at each step of a pull-back --------------------------------------


@pytest.fixture
def proxied_node(
    node_dir: Path,
) -> Iterator[tuple[SimulatedNode, FaultProxyThread, FaultProxyThread]]:
    """A node whose daemon (and simulator) reach MySQL and PostgreSQL through fault proxies;
    its bulk agents hang (nothing is picked up: every row waits), and are not declared
    stalled (failover stays out of it)."""
    with (
        FaultProxyThread(0, MYSQL, name="mysql") as my_proxy,
        FaultProxyThread(0, POSTGRES, name="postgres") as pg_proxy,
    ):
        edit = overrides(
            fast_dispatch,
            {
                "mysql": {"port": my_proxy.port},
                "postgres": {"port": pg_proxy.port},
                "dispatch": {"batch_size": 200},
                "supervision": {"stuck_after_s": 600.0},
            },
        )
        node = SimulatedNode(node_dir, overrides=edit)
        node.db_init()
        node.start_sim()
        for agent in range(1, 10):
            node.sim_ctl("agent", str(agent), "hang")
        node.start_daemon()
        try:
            yield node, my_proxy, pg_proxy
        finally:
            node.close()


def waiting_of(run_id: str) -> int:
    """The run's rows waiting in any live table, in one statement."""
    conn = mysql()
    try:
        with conn.cursor() as cur:
            union = " UNION ALL ".join(
                f"SELECT COUNT(*) AS c FROM SMSQ_SEND_{n} WHERE bill_id = %s AND rsv1 = '1'"
                for n in range(1, 10)
            )
            cur.execute(f"SELECT SUM(c) FROM ({union}) AS w", [run_id] * 9)
            row = cur.fetchone()
            return int(row[0] or 0)
    finally:
        conn.close()


def pulled_of(run_id: str) -> int:
    [(pulled,)] = pg_fetch(
        "SELECT count(*) FROM hanjullo.run_recipients WHERE run_id = $1 AND is_pulled",
        uuid.UUID(run_id),
    )
    return int(pulled)


def reached(proxy: FaultProxyThread, rule: str) -> None:
    wait_for(lambda: proxy.rule_hits(rule) == 1, 30, f"{rule} reached", interval_s=0.05)


def test_kill_9_at_each_step_of_a_pull_back_loses_and_doubles_nothing(
    proxied_node: tuple[SimulatedNode, FaultProxyThread, FaultProxyThread],
) -> None:
    node, my_proxy, pg_proxy = proxied_node
    count = 600
    run_id = send(node, "P", numbers("72", count))
    wait_for(lambda: waiting_of(run_id) == count, 60, "the run handed off", interval_s=0.2)
    steps = [
        # before anything is deleted: the pull-back's first locking read
        (my_proxy, r"SELECT seqno, dest_no FROM `SMSQ_SEND_\d` WHERE app_etc1"),
        # between the table deletes
        (my_proxy, r"DELETE FROM `SMSQ_SEND_[2356789]`"),
        # after the deletes, before PostgreSQL's bookkeeping: the first statement that
        # sends recipients' numbers to PostgreSQL (its text is a prepared statement by now)
        (pg_proxy, r"0107200000\d"),
    ]
    for index, (proxy, pattern) in enumerate(steps):
        proxy.add_rule(Rule(f"step-{index}", pattern, RuleAction.STALL))
        pause = subprocess.Popen(
            [*command("hanjulloctl"), "run", "pause", run_id, "--config", str(node.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        reached(proxy, f"step-{index}")
        node.stop_daemon(signal.SIGKILL)
        pause.kill()
        pause.wait()
        proxy.clear()
        node.start_daemon()
        # The next daemon finishes the stop: nothing of the run waits, all of it is pulled.
        wait_for(
            lambda: waiting_of(run_id) == 0 and pulled_of(run_id) == count,
            30,
            f"step {index}: pulled back and marked",
            interval_s=0.2,
        )
        assert agent_rows(run_id).get("total", 0) == 0
        node.ctl("run", "resume", run_id)
        wait_for(lambda: waiting_of(run_id) == count, 60, f"step {index}: re-inserted")
        rows = agent_rows(run_id)
        assert rows["total"] == rows["distinct"] == count, (index, rows)
    for agent in range(1, 10):
        node.sim_ctl("agent", str(agent), "ok")
    info = finished(node, run_id, 120)
    rows = agent_rows(run_id)
    assert rows["total"] == rows["distinct"] == info["inserted"] == count
