"""An asyncio event loop on virtual time: when nothing is ready, time jumps to the next timer
instead of sleeping. Everything the sidecar's code waits on (``asyncio.sleep``, timeouts, the
cache's schedule) reads ``loop.time()``, so an hour of fleet time runs as fast as the work in it.
Nothing else may use the loop: it never polls file descriptors."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _Jumping(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # No file descriptor is ever waited on here (the simulation does no I/O; the loop's
        # wake-up pipe only serves other threads and signals), so no system call per turn.
        if timeout is None:
            raise RuntimeError("virtual loop: nothing scheduled and nothing ready (deadlock)")
        if timeout > 0:
            self.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual seconds from 0; idle waits cost nothing."""

    def __init__(self) -> None:
        self._jumping = _Jumping()
        super().__init__(self._jumping)

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self._jumping.now


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh virtual loop."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
