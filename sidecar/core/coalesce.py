"""In-flight fetch registry: the first caller for a key fetches, later callers share its result.

The fetch runs in its own task, and every caller (leader included) awaits it through
``asyncio.shield``: a caller that gives up (client disconnect, timeout) never cancels the
fetch the others are waiting for. The registry entry is removed when the task finishes,
whatever its outcome, so an error is shared by the callers of that round only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """One store fetch per key at a time: callers asking for a key while its fetch runs share
    that fetch's result (or error) instead of starting their own."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def inflight(self, key: K) -> bool:
        """Whether a fetch of ``key`` is under way (a caller asking now would share it)."""
        return key in self._inflight

    def start(self, key: K, fetch: Callable[[], Awaitable[V]]) -> tuple[asyncio.Task[V], bool]:
        """The task fetching ``key`` and whether it was already running (``True``: coalesced)."""
        task = self._inflight.get(key)
        if task is not None:
            return task, True
        task = asyncio.ensure_future(fetch())
        self._inflight[key] = task
        task.add_done_callback(lambda done, key=key: self._forget(key, done))  # type: ignore[misc]
        return task, False

    async def run(self, key: K, fetch: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """Await the shared fetch for ``key``; returns the value and whether it was coalesced."""
        task, coalesced = self.start(key, fetch)
        return await asyncio.shield(task), coalesced

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            # Retrieve the exception so a fetch nobody awaits any more is not reported as lost.
            task.exception()

    async def drain(self) -> None:
        """Cancel every in-flight fetch and wait for them (shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
