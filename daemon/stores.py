"""Keepers of the node's PostgreSQL and Redis connections.

Each keeper owns its client, proves it works with a heartbeat (the node's row in
``hanjullo.nodes``, and a Redis key with a TTL, both readable by the control
plane), and turns an outage into ``degraded`` with the reason. Other components
borrow the client through :meth:`require`, which raises :class:`DependencyDown`
while the store is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
import structlog

from daemon import schema
from daemon.runtime import Runtime
from daemon.supervisor import DependencyDown, Health

log = structlog.get_logger("stores")

PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
REDIS_ERRORS = (OSError, redis.exceptions.RedisError, TimeoutError)


class PostgresKeeper:
    name = "postgres"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pool: asyncpg.Pool | None = None
        self.ready = asyncio.Event()
        self.schema_ok = False

    def require(self) -> asyncpg.Pool:
        if self.pool is None or not self.ready.is_set():
            raise DependencyDown("postgres unreachable")
        return self.pool

    async def wait_ready(self, timeout_s: float = 10.0) -> asyncpg.Pool:
        """The pool once PostgreSQL is reachable; DependencyDown after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.ready.wait()
        except TimeoutError as exc:
            raise DependencyDown("postgres unreachable") from exc
        return self.require()

    @contextlib.asynccontextmanager
    async def listening(self, channel: str, callback: Callable[..., None]) -> AsyncIterator[None]:
        """LISTEN on `channel` for the duration, on a connection of its own."""
        pool = self.require()
        conn = await pool.acquire()
        try:
            await conn.add_listener(channel, callback)
            yield
        finally:
            with contextlib.suppress(Exception):
                await conn.remove_listener(channel, callback)
            with contextlib.suppress(Exception):
                await pool.release(conn)

    async def run(self, health: Health) -> None:
        config = self.runtime.config
        try:
            while True:
                try:
                    if self.pool is None:
                        self.pool = await schema.create_pg_pool(config)
                    await self._heartbeat(health)
                except PG_ERRORS as exc:
                    self.runtime.metrics.heartbeat_failures.labels("postgres").inc()
                    self.ready.clear()
                    health.degraded(f"postgres unreachable: {type(exc).__name__}: {exc}")
                    await self._drop_pool()
                await asyncio.sleep(self.runtime.config.supervision.check_interval_s)
        finally:
            self.ready.clear()
            await self._drop_pool()

    async def _heartbeat(self, health: Health) -> None:
        assert self.pool is not None
        config = self.runtime.config
        async with self.pool.acquire(timeout=config.postgres.connect_timeout_s) as conn:
            # The schema is checked until it is current, not on every heartbeat.
            if not self.schema_ok and not await self._check_schema(conn, health):
                return
            await conn.execute(
                """INSERT INTO hanjullo.nodes (node_id, name, version, started_at, last_seen)
                   VALUES ($1, $2, $3, $4, now())
                   ON CONFLICT (node_id) DO UPDATE SET name = EXCLUDED.name,
                       version = EXCLUDED.version, started_at = EXCLUDED.started_at,
                       last_seen = now()""",
                config.node.id,
                config.node.name,
                self.runtime.version,
                self.runtime.started_at,
                timeout=config.postgres.connect_timeout_s,
            )
        self.runtime.metrics.heartbeat_last.labels("postgres").set_to_current_time()
        self.ready.set()
        health.running()

    async def _check_schema(self, conn: asyncpg.Connection | Any, health: Health) -> bool:
        exists = await conn.fetchval("SELECT to_regclass('hanjullo.schema_versions') IS NOT NULL")
        have = (
            await conn.fetchval("SELECT max(version) FROM hanjullo.schema_versions")
            if exists
            else None
        ) or 0
        if have < schema.latest_version():
            self.ready.clear()
            health.degraded(
                f"schema version {have}, this daemon needs {schema.latest_version()}; "
                "run `hanjulloctl db init`"
            )
            return False
        self.schema_ok = True
        return True

    async def _drop_pool(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.terminate()


class RedisKeeper:
    name = "redis"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        section = runtime.config.redis
        self.client = aioredis.Redis(
            host=section.host,
            port=section.port,
            db=section.db,
            password=section.password.get_secret_value() or None,
            socket_timeout=section.connect_timeout_s,
            socket_connect_timeout=section.connect_timeout_s,
        )
        self.ready = asyncio.Event()

    def key(self, *parts: str) -> str:
        """A Redis key namespaced by node id."""
        return ":".join(("hanjullo", self.runtime.config.node.id, *parts))

    def require(self) -> aioredis.Redis:
        if not self.ready.is_set():
            raise DependencyDown("redis unreachable")
        return self.client

    async def run(self, health: Health) -> None:
        try:
            while True:
                interval = self.runtime.config.supervision.check_interval_s
                try:
                    await self.client.set(
                        self.key("heartbeat"),
                        json.dumps({"pid": os.getpid(), "at": datetime.now(UTC).isoformat()}),
                        ex=max(1, int(interval * 3)),
                    )
                    self.runtime.metrics.heartbeat_last.labels("redis").set_to_current_time()
                    self.ready.set()
                    health.running()
                except REDIS_ERRORS as exc:
                    self.runtime.metrics.heartbeat_failures.labels("redis").inc()
                    self.ready.clear()
                    health.degraded(f"redis unreachable: {type(exc).__name__}: {exc}")
                await asyncio.sleep(interval)
        finally:
            self.ready.clear()

    async def close(self) -> None:
        await self.client.aclose()
