"""The sending path's PostgreSQL store: every statement on runs, recipients, checkpoints,
results and training metrics, and nowhere else.

Functions take a connection and hold no state; the engine reaches them through one
interface (`daemon/dispatcher/ports.py`), so it knows no table name. By step:
- `runs`: a run's state (`RunStatus`, `Run`), grants and status changes;
- `progress`: the guard pass, the handoff's pages and checkpoints, pull-back bookkeeping;
- `results`: per-recipient results, the run's counters, the breaker's evidence;
- `training`: the run's row in ``ai_training_logs``;
- `intake`: what the web service (or `hanjulloctl send`) writes, and pruning.
The MySQL agent-table side is `dispatch/handoff.py`.
"""
