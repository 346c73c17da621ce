"""Log lines by the handful: a flood of the same failure is a count, not a flood of lines."""

from __future__ import annotations

import time
from typing import Any


class LogLimiter:
    """At most ``burst`` lines per ``period`` seconds for each key; the lines dropped in between
    are counted and reported with the next line let through (``suppressed``). A flood of
    requests for missing paths must not become a flood of log lines."""

    def __init__(self, burst: int = 10, period: float = 10.0, clock: Any = time.monotonic) -> None:
        self._burst = burst
        self._period = period
        self._clock = clock
        self._windows: dict[object, list[float]] = {}  # key -> [window start, lines, dropped]

    def allow(self, key: object) -> int | None:
        """None: drop this line. Otherwise log it, with this many dropped since the last one."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self._period:
            dropped = int(window[2]) if window is not None else 0
            self._windows[key] = [now, 1, 0]
            return dropped
        if window[1] < self._burst:
            window[1] += 1
            dropped, window[2] = int(window[2]), 0
            return dropped
        window[2] += 1
        return None
