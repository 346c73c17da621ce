"""Background loops that never die silently.

Every long-running task (snapshot writer, refresh-ahead, revocation poll, token watchers, the
store prober and token renewal) runs under ``supervised``: if its loop raises, the failure is
logged with its traceback, counted in ``sidecar_background_errors_total{task}``, and the loop is
started again after a backoff. Only cancellation (shutdown) ends it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from sidecar.core.backoff import full_jitter
from sidecar.core.facts import BackgroundFailed, Listener

log = logging.getLogger("sidecar.background")

ErrorCounter = Callable[[str], None]


def listener_of_failures(listener: Listener) -> ErrorCounter:
    """Failures told as facts (``BackgroundFailed``), for ``supervised``."""
    return lambda task: listener.notify(BackgroundFailed(task))


async def supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    on_error: ErrorCounter,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> None:
    """Run ``loop()`` forever; restart it after each unexpected failure."""
    failures = 0
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            on_error(name)
            delay = max(0.05, full_jitter(failures, base, cap, rng))
            failures += 1
            log.exception(
                "background task failed; restarting it",
                extra={"task": name, "failures": failures, "restart_in_seconds": round(delay, 2)},
            )
            await asyncio.sleep(delay)
        else:
            failures = 0  # a loop that returns is restarted at once (it should not return)
            await asyncio.sleep(base)
