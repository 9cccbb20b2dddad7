"""The spam-test engine: queued tests on the node's test phones, one phone per carrier
per test, to a verdict per carrier.

Owns the engine's loop and memory; the library it drives is `dispatch/spamtests/` (the
contract, the store's statements, the pure rules). Module by module:
- `engine.py`: the supervised component, one pass per wake-up, the operator's cancel;
- `restore.py`: the engine's memory rebuilt from PostgreSQL after a restart;
- `phones.py`: the phone pool (which phone a test gets, freeing it), the test tables;
- `sending.py`: starting queued tests, their agent rows exactly once, the agent's codes;
- `attribution.py`: which test a recorded receipt belongs to, late receipts;
- `verdicts.py`: deciding each carrier and completing a test;
- `canaries.py`: the engine's own test of each phone and its flag;
- `view.py`: the spam tests' part of the status;
- `web_devices.py`: the test phones kept registered in the web's device table;
- `state.py`, `context.py`: an active test's slots; what the parts share;
- `ports.py`, `backends.py`: the seams to the databases and the phones, and their real
  implementations.
Nothing here holds SQL or a table name.
"""

from daemon.spamtest.engine import SpamTestEngine

__all__ = ["SpamTestEngine"]
