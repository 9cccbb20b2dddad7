"""Exclusive, crash-safe leases on bulk line groups, in Redis (redis-py's Lock).

One key per group, ``hanjullo:<node id>:lease:<group>``, holding the run id as
the lock token, with a TTL renewed while the run holds the group. Because the
token is the run id, a restarted daemon re-takes the leases of the runs that
PostgreSQL says hold a group, and nobody else can take them meanwhile. If the
key vanished (Redis restarted), re-taking it with the same token is safe: the
grant decision lives in PostgreSQL, the lease only enforces it.
"""

from __future__ import annotations

import contextlib

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError


class GroupLeases:
    def __init__(self, client: aioredis.Redis, node_id: str, ttl_s: float) -> None:
        self.client = client
        self.node_id = node_id
        self.ttl_s = ttl_s
        self._locks: dict[str, Lock] = {}

    def key(self, group: str) -> str:
        return f"hanjullo:{self.node_id}:lease:{group}"

    def _lock(self, group: str) -> Lock:
        lock = self._locks.get(group)
        if lock is None:
            lock = self.client.lock(
                self.key(group), timeout=self.ttl_s, blocking=False, thread_local=False
            )
            self._locks[group] = lock
        return lock

    async def acquire(self, group: str, run_id: str) -> bool:
        """Take the group for `run_id`, or re-take it if `run_id` already holds it."""
        lock = self._lock(group)
        token = run_id.encode()
        if await lock.acquire(token=token):
            return True
        holder = await self.client.get(self.key(group))
        if holder == token:
            lock.local.token = token
            await lock.reacquire()
            return True
        return False

    async def renew(self, group: str, run_id: str) -> bool:
        """Extend the lease; False when `run_id` no longer holds it."""
        lock = self._lock(group)
        lock.local.token = run_id.encode()
        try:
            await lock.reacquire()
        except LockError:
            return await self.acquire(group, run_id)
        return True

    async def release(self, group: str, run_id: str) -> None:
        lock = self._lock(group)
        lock.local.token = run_id.encode()
        # Already gone (expired, or Redis restarted): nothing to release.
        with contextlib.suppress(LockError):
            await lock.release()

    async def holder(self, group: str) -> str | None:
        value = await self.client.get(self.key(group))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
