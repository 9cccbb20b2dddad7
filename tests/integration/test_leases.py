"""Line-group leases in the real Redis: exclusive, re-takeable by their own run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from dispatch.leases import GroupLeases


@pytest.fixture
async def leases() -> AsyncIterator[GroupLeases]:
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    yield GroupLeases(client, "lease-test-" + uuid.uuid4().hex[:8], ttl_s=5)
    await client.aclose()


async def test_exclusive_and_renewable(leases: GroupLeases) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert await leases.acquire("bulk-1", first)
    assert not await leases.acquire("bulk-1", second)
    assert await leases.renew("bulk-1", first)
    assert await leases.holder("bulk-1") == first
    await leases.release("bulk-1", first)
    assert await leases.acquire("bulk-1", second)
    await leases.release("bulk-1", second)


async def test_a_restarted_daemon_retakes_its_own_lease(leases: GroupLeases) -> None:
    run = str(uuid.uuid4())
    assert await leases.acquire("bulk-2", run)
    restarted = GroupLeases(leases.client, leases.node_id, ttl_s=5)  # a fresh process
    assert await restarted.acquire("bulk-2", run)
    assert not await restarted.acquire("bulk-2", str(uuid.uuid4()))
    await restarted.release("bulk-2", run)


async def test_a_vanished_key_is_taken_again_by_its_run(leases: GroupLeases) -> None:
    run = str(uuid.uuid4())
    assert await leases.acquire("bulk-3", run)
    await leases.client.delete(leases.key("bulk-3"))  # e.g. Redis restarted without data
    assert await leases.renew("bulk-3", run)
    assert await leases.holder("bulk-3") == run
    await leases.release("bulk-3", run)
    assert await leases.holder("bulk-3") is None
