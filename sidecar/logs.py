"""One JSON object per line on stdout. Callers pass facts as ``extra``; never values or tokens."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter (urllib3 connection pool lines) is noise at info level.
    for noisy in ("urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


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
