"""The node's test phones kept registered in the web service's device table while this
daemon is the node's writer, so the web creates a result row for each of them in every
test it creates: at the engine's start and then every `DEVICE_REFRESH_S`, each configured
phone whether its modem is ready or not (a phone not ready is the web's `timeout`, never
a carrier silently left out). The statement is `dispatch/spamtests/devices.py`, reached
through `SpamBook.register_devices`; this module only decides when.

A failure is logged and kept for the status, and retried on the next pass; it never
stops the loop or degrades the engine: the rows already registered stay active, so the
web keeps testing every carrier meanwhile (only ``last_seen_at`` ages).
"""

from __future__ import annotations

import structlog

from config.logs import mask_phones
from daemon.spamtest.context import SpamContext
from daemon.stores import PG_ERRORS
from daemon.supervisor import DependencyDown

log = structlog.get_logger("spamtests")

# Seconds between two registrations: keeps ``last_seen_at`` fresh at one statement per
# refresh, not per pass (a pass may run every two seconds, or on every receipt).
DEVICE_REFRESH_S = 30.0


async def refresh(ctx: SpamContext) -> None:
    """Register the phones if none was registered since the engine started or in the last
    `DEVICE_REFRESH_S`; after a failure, on the next call."""
    mono = ctx.monotonic()
    if ctx.devices_mono is not None and mono - ctx.devices_mono < DEVICE_REFRESH_S:
        return
    try:
        done = await ctx.book.register_devices([p.modem for p in ctx.phones.values()])
    except (*PG_ERRORS, DependencyDown) as exc:
        error = mask_phones(f"{type(exc).__name__}: {exc}")
        if error != ctx.devices_error:  # once per kind of failure, not once per pass
            log.warning("test phones not registered with the web; retrying", error=error)
        ctx.devices_error = error
        return
    if ctx.devices_mono is None or ctx.devices_error is not None or done.deactivated:
        log.info(
            "test phones registered with the web",
            active=done.active,
            deactivated=done.deactivated,
        )
    ctx.devices_mono, ctx.devices_at, ctx.devices_done = mono, ctx.now(), done
    ctx.devices_error = None


def restart(ctx: SpamContext) -> None:
    """The engine (re)starts as the writer: register at once on its first pass."""
    ctx.devices_mono = None
