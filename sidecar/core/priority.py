"""Who is waiting for a store request, so the request budget can put them in order.

A read that blocks on the store is foreground: it may queue for the budget. Background work
(refresh-ahead, retries, confirmations) never queues: it takes a token that is spare now,
leaving a reserved share to reads, or it is deferred and tried again a little later. A read of
a value the class may still serve stale (within max_cache_age) does not queue either: when no
token is spare it is answered with the value held, and the refresh stays in the background.

The urgency travels with the task (a context variable), set where the work is started: a fetch
task copies the context it was created in, so every store request it makes carries it."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar


class Urgency(enum.Enum):
    """How a store request may wait for the budget (``backend.rate_limit``)."""

    FOREGROUND = "foreground"  # a read waits for the answer: queue, ahead of the rest
    STALE_OK = "stale_ok"  # a read that can be answered with the value held: no queueing
    BACKGROUND = "background"  # refresh-ahead: only spare tokens, above the reserved share


_urgency: ContextVar[Urgency] = ContextVar("store_request_urgency", default=Urgency.FOREGROUND)


def urgency() -> Urgency:
    """The urgency of store requests made from the current task."""
    return _urgency.get()


@contextlib.contextmanager
def urgent_as(level: Urgency) -> Iterator[None]:
    """Tasks started within this block (and requests made in it) carry ``level``."""
    token = _urgency.set(level)
    try:
        yield
    finally:
        _urgency.reset(token)
