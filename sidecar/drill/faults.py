"""What the fault proxy does to a request: the fault in force, checked once when it is set, and
the decision for one request (pure: no I/O, the clock and the random source are passed in)."""

from __future__ import annotations

import enum
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from sidecar.core.durations import parse_duration

MAX_DELAY = 600.0


class Mode(enum.StrEnum):
    """The faults the proxy knows, one at a time."""

    PASS = "pass"  # noqa: S105 - forward untouched (a mode, not a password)
    LATENCY = "latency"  # wait `delay` (± `jitter`), then forward
    BLACKHOLE = "blackhole"  # accept and never answer
    RESET = "reset"  # reset the connection
    REFUSE = "refuse"  # stop listening: connections are refused
    ERROR = "error"  # answer `status` (500 or 503) without asking the store
    RATE_LIMIT = "ratelimit"  # answer 429 with Retry-After: `retry_after`
    STALE = "stale"  # answer KV reads with an older version seen earlier (a lagging node)


class FaultError(ValueError):
    """A fault that cannot be set, with the reason (the control API answers 400 with it)."""


@dataclass(frozen=True)
class Fault:
    """The fault in force. ``fraction`` of the requests get it (1: all); ``period`` > 0 makes it
    flap: on for a period, off for the next; ``prefix`` (a store path such as `secret/app/`)
    and ``node`` (an index into the proxy's stores) narrow it."""

    mode: Mode = Mode.PASS
    delay: float = 0.0
    jitter: float = 0.0
    status: int = 503
    retry_after: float = 5.0
    fraction: float = 1.0
    period: float = 0.0
    prefix: str = ""
    node: int | None = None

    def describe(self) -> dict[str, Any]:
        """The fault as the control API and the log show it."""
        shown = asdict(self)
        shown["mode"] = self.mode.value
        return shown


FIELDS = {
    "mode",
    "delay",
    "jitter",
    "status",
    "retry_after",
    "fraction",
    "period",
    "prefix",
    "node",
}


def parse_fault(document: Any, nodes: int) -> Fault:
    """A fault from the control API's JSON body, every field checked; raises FaultError."""
    if not isinstance(document, dict):
        raise FaultError('send a JSON object such as {"mode": "latency", "delay": "3s"}')
    unknown = set(document) - FIELDS
    if unknown:
        raise FaultError(f"unknown field(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
    try:
        mode = Mode(document.get("mode", "pass"))
    except ValueError:
        raise FaultError(f"mode must be one of {[m.value for m in Mode]}") from None
    values: dict[str, Any] = {"mode": mode}
    for key in ("delay", "jitter", "retry_after", "period"):
        if key in document:
            values[key] = _seconds(document[key], key)
    if mode is Mode.LATENCY and values.get("delay", 0.0) <= 0:
        raise FaultError('latency needs a delay, e.g. "delay": "3s"')
    if "status" in document:
        status = document["status"]
        if status not in (500, 502, 503, 504) or isinstance(status, bool):
            raise FaultError("status must be 500, 502, 503 or 504")
        values["status"] = status
    if "fraction" in document:
        fraction = document["fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise FaultError("fraction must be a number from 0 to 1")
        if not 0 <= fraction <= 1:
            raise FaultError("fraction must be a number from 0 to 1")
        values["fraction"] = float(fraction)
    if "prefix" in document:
        prefix = document["prefix"]
        if not isinstance(prefix, str) or any(c in prefix for c in "?#%\\") or ".." in prefix:
            raise FaultError("prefix must be a store path prefix such as secret/app/")
        values["prefix"] = prefix.lstrip("/")
    if document.get("node") is not None:
        node = document["node"]
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < nodes:
            raise FaultError(f"node must be an index from 0 to {nodes - 1}")
        values["node"] = node
    fault = Fault(**values)
    if mode is Mode.REFUSE and (fault.prefix or fault.fraction < 1 or fault.period):
        raise FaultError(
            "refuse closes the listener: it takes node, not prefix, fraction or period"
        )
    return fault


def _seconds(value: Any, key: str) -> float:
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise FaultError(f"{key}: {exc}") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DELAY:
        raise FaultError(f"{key} must be from 0 to {MAX_DELAY:g}s")
    return seconds


def applies(fault: Fault, store_path: str, node: int, now: float, rng: random.Random) -> bool:
    """Does ``fault`` hit this request (``store_path`` without /v1/, on store ``node``)?"""
    if fault.mode is Mode.PASS:
        return False
    if fault.node is not None and fault.node != node:
        return False
    if fault.prefix and not store_path.startswith(fault.prefix):
        return False
    if fault.period > 0 and int(now // fault.period) % 2 == 1:
        return False  # flapping: the off half of the cycle
    return fault.fraction >= 1 or rng.random() < fault.fraction


def delay_for(fault: Fault, rng: random.Random) -> float:
    """The wait of a latency fault: ``delay`` ± ``jitter``, never below 0."""
    return max(0.0, fault.delay + (rng.uniform(-fault.jitter, fault.jitter) if fault.jitter else 0))
