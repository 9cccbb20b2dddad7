"""What the dispatcher keeps in memory per run, and when it forgets it.

All of it can be re-derived from PostgreSQL and the agent tables; it is kept for the
runs that are active (holding a group, waiting for results) and dropped once a run is
not, so memory is bounded by the active runs. Touches no database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class RunState:
    """One active run's in-memory state."""

    id: uuid.UUID
    company: str
    group: str | None = None
    lease_lost: bool = False
    # When the lease was last taken or renewed (monotonic): a renewal that keeps failing
    # stops the inserts once the lease may have expired.
    lease_confirmed_at: float = float("-inf")
    # The lease was given up for that reason (not taken by someone else): renewal goes on,
    # and once it succeeds again the run inserts again.
    lease_unconfirmed: bool = False
    # Per log table: results at or after this time are read again (result sync).
    watermarks: dict[str, datetime | None] = field(default_factory=dict)
    # The guard pass's progress as the handoff last saw it, and its wake-up.
    prepared: bool = False
    prepared_upto: int = 0
    prepared_event: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the handoff wrote its first batch (or waits for checked recipients): until
    # then the guard pass stops after its first page, so the run's first rows do not
    # share the event loop with checking the rest of the run.
    first_batch: asyncio.Event = field(default_factory=asyncio.Event)
    # Waiting rows per agent table as last counted plus what this run inserted since: an
    # upper bound while agents consume (re-counted every WAITING_RECOUNT_S, or sooner
    # when it leaves no room), so a batch does not cost a COUNT over the whole backlog.
    waiting: dict[str, int] = field(default_factory=dict)
    counted_at: float = float("-inf")
    # The highest seq ever written ahead of its checkpoint (hanjullo.runs.verify_until):
    # recipients between the checkpoint and it are looked up before they are inserted.
    verify_until: int = 0
    # Batches written since the handoff started; a retry after progress starts its
    # backoff afresh.
    batches: int = 0
    # The handoff task, supervised by handoff.supervise: its failures (logged), those in a
    # row, the last one's error, and the monotonic time before which it is not restarted.
    handoff: asyncio.Task[None] | None = None
    handoff_failures: int = 0
    handoff_streak: int = 0
    handoff_error: str | None = None
    handoff_retry_at: float = float("-inf")
    guard_pass: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        """A task of this run is still running."""
        return any(t is not None and not t.done() for t in (self.handoff, self.guard_pass))


class RunRegistry:
    """Per-run state and per-run locks (a control and a batch of the same run never
    interleave), and per-group locks (a pull-back and a failover move never interleave)."""

    def __init__(self) -> None:
        self.runs: dict[uuid.UUID, RunState] = {}
        self.locks: dict[uuid.UUID, asyncio.Lock] = {}
        # Per line group (as many as the configuration names): a pull-back and a failover
        # move of the same group never interleave.
        self.group_locks: dict[str, asyncio.Lock] = {}

    def group_lock(self, group: str) -> asyncio.Lock:
        lock = self.group_locks.get(group)
        if lock is None:
            lock = self.group_locks[group] = asyncio.Lock()
        return lock

    def state(self, run_id: uuid.UUID, company: str) -> RunState:
        state = self.runs.get(run_id)
        if state is None:
            state = self.runs[run_id] = RunState(run_id, company)
        return state

    def lock(self, run_id: uuid.UUID) -> asyncio.Lock:
        lock = self.locks.get(run_id)
        if lock is None:
            lock = self.locks[run_id] = asyncio.Lock()
        return lock

    def prune(self, active: Collection[uuid.UUID]) -> list[uuid.UUID]:
        """Forget the runs not in `active` whose tasks have ended and whose lock nobody
        holds; returns their ids."""
        gone = [
            run_id
            for run_id in {*self.runs, *self.locks}
            if run_id not in active
            and not (run_id in self.runs and self.runs[run_id].busy())
            and not (run_id in self.locks and self.locks[run_id].locked())
        ]
        for run_id in gone:
            self.runs.pop(run_id, None)
            self.locks.pop(run_id, None)
        return gone
