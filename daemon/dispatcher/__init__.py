"""The dispatcher: campaign runs from PostgreSQL into the QTmsg agent tables, exactly once,
and their results back.

Owns the engine; the sending-path library it drives is `dispatch/` (the store's
statements, the agent-table I/O, the pure rules). Module by module:
- `component.py`: the supervised component, its main loop and background loops;
- `grants.py`: line-group grants, fairness, leases (restore, renew, release);
- `handoff.py`: one run's handoff as a supervised task (batches, checkpoints, crash window);
- `guard_pass.py`: one run's guard pass, streamed ahead of its handoff;
- `controls.py`: pause, cancel, hold, resume; draining an agent;
- `failover.py`: agents out of service and moving their waiting rows;
- `results.py`: result sync, the circuit breaker, training metrics, completion;
- `view.py`: the dispatcher's part of the status;
- `state.py`, `context.py`: per-run memory and what the parts share;
- `ports.py`, `backends.py`: the seams to the databases, and their real implementations.
Nothing here holds SQL or a table name.
"""

from daemon.dispatcher.component import Dispatcher

__all__ = ["Dispatcher"]
