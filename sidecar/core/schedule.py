"""When the cache's background work comes due: a heap of (time, what, key, serial), driven by
whatever clock reads it (a fake one in tests, a virtual one in a fleet simulation)."""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from collections.abc import Iterator

from sidecar.core.entries import CacheKey


class Due(enum.Enum):
    """The kinds of background work a schedule item stands for."""

    REFRESH = "refresh"  # a value nears the end of its refresh interval
    EXPIRE = "expire"  # a value reaches max_cache_age
    FETCH = "fetch"  # fetch the key, held or not: preloads, retries, waits, after a purge
    RETIRE = "retire"  # the overlap of a rotation ends: the previous version retires
    CONFIRM = "confirm"  # a value restored from a snapshot is checked with the store


class Schedule:
    """Items name a key and, for a value, its serial, never the entry itself: a replaced,
    purged or revoked value is gone from memory at once, not when its item comes due.
    ``wakeup`` is set whenever an item becomes the earliest."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Due, CacheKey, int]] = []
        self._seq = itertools.count()
        self._serials = itertools.count(1)
        self.wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def serial(self) -> int:
        """A new serial for a value about to be held."""
        return next(self._serials)

    def push(self, due: float, what: Due, key: CacheKey, serial: int = 0) -> None:
        """Have ``what`` done for ``key`` at ``due`` (``serial``: the value it concerns; 0: none);
        wakes the runner if it is now the earliest item."""
        item = (due, next(self._seq), what, key, serial)
        heapq.heappush(self._heap, item)
        if self._heap[0] is item:
            self.wakeup.set()

    def due(self, now: float) -> Iterator[tuple[Due, CacheKey, int]]:
        """Pop what is due by ``now``, earliest first (items pushed meanwhile included)."""
        while self._heap and self._heap[0][0] <= now:
            _, _, what, key, serial = heapq.heappop(self._heap)
            yield what, key, serial

    def next_in(self, now: float) -> float | None:
        """Seconds until the earliest item (None: nothing scheduled)."""
        return max(0.0, self._heap[0][0] - now) if self._heap else None
