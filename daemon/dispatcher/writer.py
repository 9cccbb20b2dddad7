"""The node's writer role as the dispatcher holds it: one daemon per node id writes.

A starting dispatcher becomes the writer only when the holder is gone (its MySQL
session, and with it the named lock, ended): `become_writer` takes the role, which
advances the fencing epoch every agent-row write checks (`dispatch/ledger.py`). While
another daemon holds it, this one stays passive — it writes nothing, says who holds the
node (host, pid, since) in its status and log, and asks again every `WRITER_RETRY_S`.
The writer confirms its lock every `WRITER_CONFIRM_S` (`keep_writer`); a lost lock ends
the component, whose restart starts passive again. Touches MySQL only through
`ports.WriterLock`. The role as held is `daemon/role.py`'s `WriterState`, which the
spam-test engine and the modem managers wait on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from daemon.dispatcher.context import ERRORS
from daemon.dispatcher.ports import WriterLock
from daemon.role import WriterState
from daemon.supervisor import Health
from dispatch.ledger import WRITER_SESSION_TIMEOUT_S, Fence

log = structlog.get_logger("dispatcher")

# A passive daemon asks for the role again this often (the holder's death frees it at once).
WRITER_RETRY_S = 2.0
# The writer confirms it still holds its lock this often: well inside the session timeout
# that ends a vanished holder's session, so its own session never idles out.
WRITER_CONFIRM_S = WRITER_SESSION_TIMEOUT_S / 6


class WriterLost(Exception):
    """This daemon no longer holds the node's writer lock: stop writing at once."""


async def become_writer(
    lock: WriterLock,
    node_id: str,
    state: WriterState,
    health: Health,
    sleep: Callable[[float], Awaitable[None]],
) -> Fence:
    """Wait, passive, until this daemon holds the node's writer role; returns its fence."""
    said: int | None = None
    while True:
        fence = await lock.take()
        if fence is not None:
            state.taken(fence)
            log.info("writer role taken", node=node_id, epoch=fence.epoch)
            return fence
        holder = await lock.holder()
        state.passive(holder)
        what = "held by another daemon" if holder is None else holder.describe()
        health.running(f"passive: node {node_id} {what}; this daemon writes nothing")
        if said != (holder.epoch if holder else None):
            log.warning(
                "another daemon is this node's writer: staying passive",
                node=node_id,
                host=None if holder is None else holder.host,
                pid=None if holder is None else holder.pid,
                since=None if holder is None else holder.since.isoformat(),
            )
            said = holder.epoch if holder else None
        await sleep(WRITER_RETRY_S)


async def keep_writer(
    lock: WriterLock, node_id: str, sleep: Callable[[float], Awaitable[None]]
) -> None:
    """Confirm the lock every WRITER_CONFIRM_S; raise WriterLost when it is gone."""
    while True:
        await sleep(WRITER_CONFIRM_S)
        try:
            held = await lock.still_held()
        except ERRORS as exc:
            raise WriterLost(f"node {node_id}: writer lock unconfirmed ({exc})") from exc
        if not held:
            raise WriterLost(f"node {node_id}: writer lock lost")
