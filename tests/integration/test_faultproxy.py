"""The fault proxy and the rogue MySQL server, against the real servers and the real clients.

Every fault mode is shown to do what it says on the wire, observed through the
client libraries the daemon uses (asyncpg, aiomysql, PyMySQL, redis-py), and each
test pins the error (or the hang) that library shows for that fault: the daemon's
hardening is written against these reactions, so a library upgrade that changes one
fails here first. The rogue MySQL server's tests show the LOCAL INFILE exposure of the
libraries with ``local_infile=True``, and that the daemon's dispatch pool does not have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import asyncpg
import pymysql
import pytest
import redis
import redis.asyncio as aioredis
from pymysql.constants import CLIENT
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.example import instance_databases
from config.model import MySQLSection
from dispatch import agent_tables, infile
from simulators import harness
from simulators.faultproxy import (
    CutMode,
    Direction,
    FaultProxy,
    FaultProxyError,
    FaultProxyThread,
    Rule,
    RuleAction,
    control_request,
)
from simulators.harness import command
from simulators.rogue_mysql import Ask, Reply, RogueMySQL, RogueMySQLThread, Then

MYSQL = ("127.0.0.1", 3306)
POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
REDIS_DB = instance_databases(harness.current_instance())[1]
# The synchronous redis client retries once even with retry=None: say "no retry" outright.
SYNC_NO_RETRY = Retry(NoBackoff(), 0)
# A stalled call is declared hung when it has not returned after this long.
HANG_S = 1.0


# ---- clients as the daemon configures them -----------------------------------------------------
async def my_connect(port: int, **extra: Any) -> aiomysql.Connection:
    return await aiomysql.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        password="",
        db=harness.instance_database(),
        autocommit=True,
        **extra,
    )


async def my_query(conn: aiomysql.Connection, sql: str, *args: Any) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(sql, args or None)
        return await cur.fetchall()


async def pg_connect(port: int, **extra: Any) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", **extra
    )


def rd_client(port: int, **extra: Any) -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=port, db=REDIS_DB, **extra)


def pymysql_connect(port: int, **extra: Any) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        password="",
        database=harness.instance_database(),
        autocommit=True,
        **extra,
    )


@pytest.fixture(scope="module")
def tables() -> Iterator[tuple[str, str]]:
    """Two tables in this instance's MySQL database, standing in for two agent tables."""
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    names = ("fp_table_a", "fp_table_b")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{harness.instance_database()}`")
        cur.execute(f"USE `{harness.instance_database()}`")
        for name in names:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
            cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, dest_no VARCHAR(20))")
    try:
        yield names
    finally:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f"DROP TABLE IF EXISTS {name}")
        conn.close()


def rows(table: str) -> list[tuple[Any, ...]]:
    conn = pymysql_connect(MYSQL[1])
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, dest_no FROM {table} ORDER BY id")
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
async def my_proxy(tables: tuple[str, str]) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(0, MYSQL, name="mysql") as proxy:
        yield proxy


@pytest.fixture
async def pg_proxy() -> AsyncIterator[FaultProxy]:
    async with FaultProxy(0, POSTGRES, name="postgres") as proxy:
        yield proxy


@pytest.fixture
async def rd_proxy() -> AsyncIterator[FaultProxy]:
    async with FaultProxy(0, REDIS, name="redis") as proxy:
        yield proxy


# ---- pass-through, latency, throttle -----------------------------------------------------------
async def test_pass_through_gives_the_real_answers_and_counts_each_connection(
    my_proxy: FaultProxy, pg_proxy: FaultProxy, rd_proxy: FaultProxy
) -> None:
    conn = await my_connect(my_proxy.port)
    assert await my_query(conn, "SELECT DATABASE()") == ((harness.instance_database(),),)
    conn.close()
    pg = await pg_connect(pg_proxy.port)
    assert await pg.fetchval("SELECT current_database()") == "postgres"
    await pg.close()
    rd = rd_client(rd_proxy.port)
    await rd.set("faultproxy:pass", "한줄로")
    assert (await rd.get("faultproxy:pass")).decode() == "한줄로"
    await rd.aclose()

    for proxy in (my_proxy, pg_proxy, rd_proxy):
        (info,) = proxy.connections()
        assert info.id == 1 and info.bytes_up > 0 and info.bytes_down > 0
    await my_proxy.wait_for_fault("start")
    second = await my_connect(my_proxy.port)
    second.close()
    assert [c.id for c in my_proxy.connections()] == [1, 2]


async def test_latency_delays_each_direction_it_names(rd_proxy: FaultProxy) -> None:
    rd = rd_client(rd_proxy.port)
    await rd.ping()

    async def round_trip() -> float:
        started = time.monotonic()
        assert await rd.ping()
        return time.monotonic() - started

    await rd_proxy.set_latency(0.25, Direction.UP)
    assert await round_trip() >= 0.25
    await rd_proxy.set_latency(0.25, Direction.BOTH)
    assert await round_trip() >= 0.5
    await rd_proxy.clear()
    assert await round_trip() < 0.25
    await rd.aclose()


async def test_throttle_caps_a_result_s_bandwidth(my_proxy: FaultProxy) -> None:
    conn = await my_connect(my_proxy.port)
    await my_proxy.throttle(200_000, Direction.DOWN)
    started = time.monotonic()
    ((text,),) = await my_query(conn, "SELECT REPEAT('x', 150000)")
    assert len(text) == 150_000
    assert time.monotonic() - started >= 0.7  # 150 kB at 200 kB/s
    conn.close()


# ---- stall -------------------------------------------------------------------------------------
async def test_stall_existing_hangs_aiomysql_times_out_asyncpg_and_redis_reconnects(
    my_proxy: FaultProxy, pg_proxy: FaultProxy, rd_proxy: FaultProxy
) -> None:
    my = await my_connect(my_proxy.port)
    pg = await pg_connect(pg_proxy.port)
    rd = rd_client(rd_proxy.port, socket_timeout=HANG_S)
    await rd.set("faultproxy:stall", "before")
    for proxy in (my_proxy, pg_proxy, rd_proxy):
        await proxy.stall(new=False, existing=True)

    # aiomysql has no read timeout: only the caller's own deadline ends the wait, and the
    # cancelled connection is closed by aiomysql ("Cancelled during execution").
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(my_query(my, "SELECT 1"), HANG_S)
    with pytest.raises(pymysql.err.InterfaceError, match="Cancelled during execution"):
        await my_query(my, "SELECT 1")
    # asyncpg's per-call timeout fires; the connection survives and answers once healed.
    with pytest.raises(TimeoutError):
        await pg.fetchval("SELECT 1", timeout=HANG_S)
    # redis-py times out, then its default retry reconnects: a new connection is not
    # stalled (new=False), so the call succeeds on it.
    assert await rd.get("faultproxy:stall") == b"before"
    assert len(rd_proxy.connections()) == 2

    for proxy in (my_proxy, pg_proxy, rd_proxy):
        await proxy.clear()
    assert await pg.fetchval("SELECT 2") == 2
    await pg.close()
    await rd.aclose()
    assert my_proxy.connections()[0].bytes_down > 0


async def test_stall_new_holds_connects_beyond_aiomysql_connect_timeout_until_cleared(
    my_proxy: FaultProxy, pg_proxy: FaultProxy
) -> None:
    await pg_proxy.stall(new=True, existing=False)
    with pytest.raises(TimeoutError):
        await pg_connect(pg_proxy.port, timeout=HANG_S)

    await my_proxy.stall(new=True, existing=False)
    # connect_timeout covers the TCP connect only; the server greeting never comes.
    connecting = asyncio.create_task(my_connect(my_proxy.port, connect_timeout=0.5))
    done, _ = await asyncio.wait({connecting}, timeout=HANG_S + 0.5)
    assert not done, "aiomysql gave up on a stalled handshake"
    assert my_proxy.connections()[0].state == "held"
    await my_proxy.clear()
    conn = await asyncio.wait_for(connecting, 5)
    assert await my_query(conn, "SELECT 7") == ((7,),)
    conn.close()


def test_pymysql_stall_ends_only_with_read_timeout() -> None:
    with FaultProxyThread(0, MYSQL, name="mysql") as proxy:
        conn = pymysql_connect(proxy.port, read_timeout=HANG_S)
        proxy.stall(new=False, existing=True)
        with pytest.raises(pymysql.err.OperationalError) as lost:
            conn.query("SELECT 1")
        assert lost.value.args[0] == 2013 and "timed out" in lost.value.args[1]
        with pytest.raises(pymysql.err.InterfaceError):
            conn.query("SELECT 1")  # PyMySQL closed it

        proxy.clear()
        proxy.stall(new=True, existing=False)
        outcome: list[Any] = []
        thread = threading.Thread(
            target=lambda: outcome.append(pymysql_connect(proxy.port, connect_timeout=0.5))
        )
        thread.start()
        thread.join(HANG_S + 0.5)
        assert thread.is_alive(), "connect_timeout ended a stalled handshake"
        proxy.clear()
        thread.join(5)
        (late,) = outcome
        late.ping()
        late.close()


# ---- cut and refuse ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(CutMode))
async def test_cut_breaks_single_connections_and_pools_reconnect(
    mode: CutMode, my_proxy: FaultProxy, pg_proxy: FaultProxy, rd_proxy: FaultProxy
) -> None:
    my = await my_connect(my_proxy.port)
    my_pool = await aiomysql.create_pool(
        host="127.0.0.1", port=my_proxy.port, user="root", password="", minsize=1, maxsize=1
    )
    pg = await pg_connect(pg_proxy.port)
    pg_pool = await asyncpg.create_pool(
        host="127.0.0.1", port=pg_proxy.port, user="postgres", database="postgres", min_size=1
    )
    rd = rd_client(rd_proxy.port, retry=None)
    await rd.ping()
    assert await my_proxy.cut_all(mode) == 2
    assert await pg_proxy.cut_all(mode) == 2
    assert await rd_proxy.cut_all(mode) == 1

    with pytest.raises(pymysql.err.OperationalError) as lost:
        await my_query(my, "SELECT 1")
    assert lost.value.args[0] == 2013
    with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
        await pg.fetchval("SELECT 1")
    assert pg.is_closed()
    expected = "Connection reset by peer" if mode is CutMode.RST else "Connection closed by server"
    # redis-py before 8.2 fails the next command on the cut connection; from 8.2 its pool
    # checks an idle connection when it is taken and opens a new one for the command.
    # Either way nothing is answered over the cut connection.
    opened = len(rd_proxy.connections())
    try:
        await rd.ping()
    except redis.ConnectionError as exc:
        assert re.search(expected, str(exc)), exc
    else:
        assert len(rd_proxy.connections()) == opened + 1, "answered over the cut connection"
    # Both pools noticed their idle connection's end and open a new one.
    async with my_pool.acquire() as conn:
        assert await my_query(conn, "SELECT 1") == ((1,),)
    assert await pg_pool.fetchval("SELECT 1") == 1

    assert {c.closed_by for c in my_proxy.connections()[:2]} == {f"cut {mode}"}
    my.close()
    my_pool.close()
    await my_pool.wait_closed()
    await pg_pool.close()
    await rd.aclose()


def test_pymysql_sees_gone_away_after_rst_and_lost_after_fin() -> None:
    with FaultProxyThread(0, MYSQL, name="mysql") as proxy:
        for mode, code in ((CutMode.RST, 2006), (CutMode.FIN, 2013)):
            conn = pymysql_connect(proxy.port, read_timeout=5)
            proxy.cut_all(mode)
            with pytest.raises(pymysql.err.OperationalError) as lost:
                conn.query("SELECT 1")
            assert lost.value.args[0] == code, lost.value.args


async def test_refuse_gives_connection_refused_until_cleared(
    my_proxy: FaultProxy, pg_proxy: FaultProxy, rd_proxy: FaultProxy
) -> None:
    kept = await my_connect(my_proxy.port)
    for proxy in (my_proxy, pg_proxy, rd_proxy):
        await proxy.refuse()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        await my_connect(my_proxy.port)
    assert refused.value.args[0] == 2003
    with pytest.raises(ConnectionRefusedError):
        await pg_connect(pg_proxy.port)
    rd = rd_client(rd_proxy.port, retry=None)
    with pytest.raises(redis.ConnectionError, match="Connect call failed"):
        await rd.ping()
    assert await my_query(kept, "SELECT 1") == ((1,),)  # open connections go on

    for proxy in (my_proxy, pg_proxy, rd_proxy):
        await proxy.clear()
    conn = await my_connect(my_proxy.port)
    conn.close()
    assert await rd.ping()
    await rd.aclose()
    (await pg_connect(pg_proxy.port)).terminate()
    kept.close()


async def test_cut_after_bytes_ends_a_result_midway(my_proxy: FaultProxy) -> None:
    conn = await my_connect(my_proxy.port)
    already = my_proxy.connections()[0].bytes_down
    await my_proxy.cut_after(already + 50_000, Direction.DOWN)
    with pytest.raises(pymysql.err.OperationalError) as lost:
        await my_query(conn, "SELECT REPEAT('x', 200000)")
    assert lost.value.args[0] == 2013
    (info,) = my_proxy.connections()
    assert info.bytes_down == already + 50_000 and info.closed_by == "byte limit"


# ---- rules on what the client sends ------------------------------------------------------------
async def test_rules_slow_first_table_while_the_second_table_s_connection_is_cut(
    my_proxy: FaultProxy, tables: tuple[str, str]
) -> None:
    """Issue 12, acceptance 4's fault: a batch's second table write fails (its connection
    is cut before the server sees the statement) while the first is slow."""
    first, second = tables
    await my_proxy.add_rule(
        Rule("slow-a", rf"INSERT INTO {first}\b", RuleAction.DELAY, delay_s=1.0)
    )
    await my_proxy.add_rule(Rule("cut-b", rf"INSERT INTO {second}\b", RuleAction.CUT))
    pool = await aiomysql.create_pool(
        host="127.0.0.1", port=my_proxy.port, user="root", password="",
        db=harness.instance_database(), autocommit=True, maxsize=2,
    )  # fmt: skip

    async def write(table: str, key: int) -> float:
        async with pool.acquire() as conn:
            started = time.monotonic()
            await my_query(conn, f"INSERT INTO {table} VALUES (%s, '01012345678')", key)
            return time.monotonic() - started

    slow, cut = await asyncio.gather(write(first, 1), write(second, 1), return_exceptions=True)
    assert isinstance(slow, float) and slow >= 1.0
    assert isinstance(cut, pymysql.err.OperationalError) and cut.args[0] == 2013
    assert rows(first) == [(1, "01012345678")]
    assert rows(second) == []  # the server never saw it
    faults = [(e.fault, e.detail.split(":")[0]) for e in my_proxy.fault_log() if e.connection]
    assert ("rule delay", "slow-a") in faults and ("rule cut", "cut-b") in faults
    assert my_proxy.rule_hits("cut-b") == 1

    # forward_first: the server runs the statement, the client only sees its connection die.
    await my_proxy.add_rule(
        Rule("cut-b-after", rf"INSERT INTO {second}\b", RuleAction.CUT, forward_first=True)
    )
    with pytest.raises(pymysql.err.OperationalError):
        await write(second, 2)
    assert rows(second) == [(2, "01012345678")]
    pool.close()
    await pool.wait_closed()


async def test_rule_orphan_commits_after_the_client_saw_its_connection_reset(
    my_proxy: FaultProxy, tables: tuple[str, str]
) -> None:
    """Issue 12, review finding F4's fault: the client's COMMIT is on its way when its
    connection resets; the server commits it later, for a client that is gone."""
    first, _ = tables
    await my_proxy.add_rule(Rule("late", r"\x03COMMIT", RuleAction.ORPHAN, delay_s=1.0))
    conn = await my_connect(my_proxy.port)
    await conn.begin()
    await my_query(conn, f"INSERT INTO {first} VALUES (7, '01012345678')")
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as lost:
        await conn.commit()
    assert lost.value.args[0] in (2013, 2006) and time.monotonic() - started < 1.0
    assert (7, "01012345678") not in rows(first)  # not committed yet: the COMMIT is held
    for _ in range(200):  # up to 10 s: the held COMMIT reaches the server after 1 s
        if (7, "01012345678") in rows(first):
            break
        await asyncio.sleep(0.05)
    assert (7, "01012345678") in rows(first)
    (info,) = my_proxy.connections()
    assert info.rules_fired == ("late",)
    conn.close()


async def test_rule_on_postgres_statement_text_cuts_only_that_connection(
    pg_proxy: FaultProxy,
) -> None:
    bystander = await pg_connect(pg_proxy.port)
    victim = await pg_connect(pg_proxy.port)
    await pg_proxy.add_rule(Rule("pg", r"FROM pg_namespace", RuleAction.CUT, times=1))
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await victim.fetch("SELECT nspname FROM pg_namespace")
    assert await bystander.fetchval("SELECT count(*) > 0 FROM pg_namespace")  # fired once
    await bystander.close()


async def test_rule_stall_holds_one_redis_command_until_cleared(rd_proxy: FaultProxy) -> None:
    rd = rd_client(rd_proxy.port, retry=None)
    await rd.set("faultproxy:held", "x")
    await rd_proxy.add_rule(Rule("held", r"faultproxy:held", RuleAction.STALL))
    reading = asyncio.create_task(rd.get("faultproxy:held"))
    await rd_proxy.wait_for_fault("rule stall")
    assert rd_proxy.connections()[0].state == "stalled" and not reading.done()
    await rd_proxy.clear()
    assert await asyncio.wait_for(reading, 5) == b"x"
    await rd.aclose()


async def test_redis_default_retry_runs_a_command_twice_when_its_reply_is_lost(
    rd_proxy: FaultProxy,
) -> None:
    """redis-py retries on a connection error by default; the server already ran the
    command (the proxy cut the connection as the reply came back), so INCR counts twice."""
    rd = rd_client(rd_proxy.port)
    await rd.set("faultproxy:n", 0)
    await rd_proxy.add_rule(Rule("incr", r"INCR", RuleAction.CUT, forward_first=True))
    assert await rd.incr("faultproxy:n") == 2
    bare = rd_client(rd_proxy.port, retry=None)
    await rd_proxy.add_rule(Rule("incr", r"INCR", RuleAction.CUT, forward_first=True))
    with pytest.raises(redis.ConnectionError):
        await bare.incr("faultproxy:n")
    assert await rd.get("faultproxy:n") == b"3"
    await rd.delete("faultproxy:n")
    await rd.aclose()
    await bare.aclose()


async def test_bad_rules_and_unknown_connections_are_refused(rd_proxy: FaultProxy) -> None:
    with pytest.raises(FaultProxyError, match="bad pattern"):
        Rule("broken", "(", RuleAction.CUT)
    with pytest.raises(FaultProxyError, match="delay_s"):
        Rule("no-delay", "x", RuleAction.DELAY)
    with pytest.raises(FaultProxyError, match="no open connection 99"):
        await rd_proxy.cut(99)


# ---- another process ---------------------------------------------------------------------------
def test_hanjullo_sim_proxy_is_controlled_over_its_socket(tmp_path: Path) -> None:
    control = tmp_path / "proxy.sock"
    server = subprocess.Popen(
        [*command("hanjullo-sim"), "proxy", "serve", "--listen", f"redis=0:{REDIS[0]}:{REDIS[1]}",
         "--control", str(control)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1].rsplit(":", 1)[1])
        assert server.stdout.readline().startswith("control ")
        client = redis.Redis(port=port, db=REDIS_DB, retry=SYNC_NO_RETRY, socket_timeout=5)
        assert client.ping()

        def ctl(*args: str) -> str:
            done = subprocess.run(
                [*command("hanjullo-sim"), "proxy", "ctl", "--control", str(control), *args],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            return done.stdout

        assert ctl("cut", "redis").strip() == "1"
        # The synchronous pool finds its idle connection readable (reset) on checkout
        # and reconnects before sending: the cut is invisible to the caller.
        assert client.ping()
        status = ctl("status")
        assert "cut rst" in status and len(status.splitlines()) == 3
        ctl("refuse", "redis")
        with pytest.raises(redis.ConnectionError, match=r"Connection refused|Connect call failed"):
            redis.Redis(port=port, db=REDIS_DB, retry=SYNC_NO_RETRY).ping()
        log = ctl("log")
        assert "cut all" in log and "refuse" in log
        with pytest.raises(FaultProxyError, match="no proxy 'mysql'"):
            control_request(control, {"cmd": "clear", "proxy": "mysql"})
        ctl("clear", "redis")
        assert redis.Redis(port=port, db=REDIS_DB).ping()
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0 and "clear" in out  # the fault log, printed at exit


# ---- the rogue MySQL server (issue 14, item 1) -------------------------------------------------
@dataclass(frozen=True)
class Canary:
    path: Path
    content: bytes


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    """A file the rogue asks for, with content no other test run has."""
    path = tmp_path / "canary-secret.txt"
    content = f"training_secret=canary-{os.getpid()}-{time.time_ns()}\n".encode()
    path.write_bytes(content)
    return Canary(path, content)


def test_rogue_reads_a_file_through_pymysql_with_local_infile_on(canary: Canary) -> None:
    with RogueMySQLThread(0, MYSQL, file_name=str(canary.path), ask=Ask.FIRST_QUERY) as rogue:
        conn = pymysql_connect(rogue.port, local_infile=True)
        assert conn.server_capabilities & CLIENT.SSL == 0
        with conn.cursor() as cur:
            assert cur.execute("SELECT @@version") == 0  # answered by the rogue: OK, no rows
            cur.execute("SELECT @@version")
            via_rogue = cur.fetchall()
        conn.close()
        leaks = rogue.leaks
    # PyMySQL reads its connect-time SET NAMES with a bare packet read that ignores the
    # request: nothing leaks there. The first cursor statement sends the file.
    assert [(leak.query, leak.reply) for leak in leaks] == [
        ("SET NAMES utf8mb4", Reply.SILENT),
        ("SELECT @@version", Reply.CONTENT),
    ]
    assert leaks[1].content == canary.content
    direct = pymysql_connect(MYSQL[1])
    with direct.cursor() as cur:
        cur.execute("SELECT @@version")
        assert via_rogue == cur.fetchall()
    direct.close()


async def test_the_daemons_dispatch_pool_refuses_a_file_request_at_connect(
    canary: Canary,
) -> None:
    """The dispatcher's pool (`dispatch.infile`) refuses the request made on its first
    statement, the pool's init_command, and drops that connection: nothing leaks. (Its
    former `local_infile=True` pool sent the canary here.)"""
    async with RogueMySQL(0, MYSQL, file_name=str(canary.path), ask=Ask.FIRST_QUERY) as rogue:
        section = MySQLSection(port=rogue.port, database=harness.instance_database())
        pool = await infile.create_pool(section, maxsize=2)
        with pytest.raises(infile.InfileRefused):
            async with infile.guarded(pool) as conn:
                await my_query(conn, "SELECT DATABASE()")
        assert pool.size == 0  # the refused connection never joined the pool
        await agent_tables.close_pool(pool)
        deadline = time.monotonic() + 5  # until the rogue sees the connection close
        while not rogue.leaks:
            if time.monotonic() > deadline:
                raise TimeoutError("the rogue never saw the refused connection close")
            await asyncio.sleep(0.02)
    (leak,) = rogue.leaks
    assert leak.query == agent_tables.SESSION_INIT
    assert (leak.reply, leak.content) == (Reply.CLOSED, b"")


async def test_rogue_gets_nothing_when_local_infile_is_off(canary: Canary) -> None:
    secret_statement = r"^SELECT 'ask me'"
    async with RogueMySQL(0, MYSQL, file_name=str(canary.path), match=secret_statement) as rogue:
        conn = await my_connect(rogue.port)
        with pytest.raises(RuntimeError, match="local_infile option is false"):
            await my_query(conn, "SELECT 'ask me'")
        assert await my_query(conn, "SELECT 'next'") == (("next",),)  # still in step
        conn.close()

        def sync_client() -> None:
            blocking = pymysql_connect(rogue.port)
            with pytest.raises(RuntimeError, match="local_infile option is false"):
                blocking.query("SELECT 'ask me'")
            blocking.close()

        await asyncio.to_thread(sync_client)
        # The rogue notes the second client's silence when it reads the client's next
        # packet (its COM_QUIT), in a session of its own: give it that turn on a busy machine.
        with contextlib.suppress(TimeoutError):  # the assertion below says what is missing
            await asyncio.to_thread(
                harness.wait_for, lambda: len(rogue.leaks) >= 2, 10, "the second client's leak"
            )
    assert [leak.reply for leak in rogue.leaks] == [Reply.SILENT, Reply.SILENT]
    assert all(leak.content == b"" for leak in rogue.leaks)


@pytest.mark.parametrize(("then", "code"), [(Then.ERROR, 1105), (Then.DROP, 2013)])
async def test_rogue_answers_error_or_drops_after_the_file(
    then: Then, code: int, canary: Canary
) -> None:
    async with RogueMySQL(
        0, MYSQL, file_name=str(canary.path), match="^SELECT 'ask me'", then=then
    ) as rogue:
        conn = await my_connect(rogue.port, local_infile=True)
        with pytest.raises(pymysql.err.OperationalError) as failed:
            await my_query(conn, "SELECT 'ask me'")
        assert failed.value.args[0] == code
        if then is Then.ERROR:
            assert await my_query(conn, "SELECT 'next'") == (("next",),)
        conn.close()
    assert rogue.leaks[0].content == canary.content


async def test_rogue_relays_a_real_load_data_local_unchanged(
    tables: tuple[str, str], tmp_path: Path
) -> None:
    first, _ = tables
    data = tmp_path / "rows.tsv"
    data.write_text("".join(f"{100 + i}\t0101234{i:04d}\n" for i in range(500)))
    async with RogueMySQL(0, MYSQL, file_name="/etc/hostname", ask=Ask.NEVER) as rogue:
        conn = await my_connect(rogue.port, local_infile=True)
        await my_query(conn, f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE {first}")
        conn.close()
    assert rogue.leaks == [] and rogue.stats.queries_forwarded >= 1
    loaded = [r for r in rows(first) if r[0] >= 100]
    assert len(loaded) == 500 and loaded[-1] == (599, "01012340499")
