"""How the sidecar holds back from a struggling store. Pure: clocks and randomness are arguments.

- ``full_jitter``: the retry delay (AWS's "full jitter": spread retries of a fleet uniformly).
- ``TokenBucket``: a budget of store requests per second, with a burst.
- ``CircuitBreaker``: after consecutive failures stop asking, let a background probe try once
  in a while (requests never wait on a probe), close on success; also holds off for as long
  as the store asked (429 Retry-After).
"""

from __future__ import annotations

import enum
from collections.abc import Callable


def full_jitter(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """``min(cap, base * 2**attempt) * random()``, attempt counting from 0."""
    return min(cap, base * 2.0 ** min(attempt, 62)) * rng()


_EPSILON = 1e-9  # a token refilled over a sum of float seconds is a whole token


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. A reservation may dip below zero:
    the caller then waits for its token instead of racing others for it."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def reserve(self, max_wait: float, *, keep: float = 0.0) -> float | None:
        """Seconds to wait before sending (0: now), or None if that would exceed ``max_wait``.
        ``keep``: tokens this request must leave in the bucket (a share reserved for others);
        such a request is sent only when a token above them is there now, never queued."""
        self._refill()
        if keep > 0:
            if self._tokens + _EPSILON < 1 + keep:
                return None
            self._tokens -= 1
            return 0.0
        wait = 0.0 if self._tokens + _EPSILON >= 1 else (1 - self._tokens) / self._rate
        if wait > max_wait:
            return None
        self._tokens -= 1
        return wait

    def spare_in(self, keep: float = 0.0) -> float:
        """Seconds until a token above ``keep`` is there (0: now), counting the debts of the
        requests already queued for it."""
        self._refill()
        return max(0.0, (1 + keep - self._tokens) / self._rate)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now


class CircuitState(enum.IntEnum):
    """Where a ``CircuitBreaker`` stands (an int: exported as a metric value)."""

    CLOSED = 0  # requests flow
    OPEN = 1  # requests fail fast; a probe goes at the probe time
    HALF_OPEN = 2  # the probe is out; requests still fail fast


class CircuitBreaker:
    """Keeps requests off a failing store node: opens after ``failure_threshold`` consecutive
    failures (or when the store asks for a pause), lets one background probe try at a backed-off,
    jittered time, and closes again on a success."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        base: float,
        cap: float,
        clock: Callable[[], float],
        rng: Callable[[], float],
    ) -> None:
        self._threshold = failure_threshold
        self._base = base
        self._cap = cap
        self._clock = clock
        self._rng = rng
        self.state = CircuitState.CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened = 0  # consecutive openings: how far the probe interval has backed off
        self._until = 0.0

    @property
    def closed(self) -> bool:
        """May requests go to the store?"""
        return self.state is CircuitState.CLOSED

    def probe_due(self) -> bool:
        """Is it time to probe? If so the breaker turns half-open until the probe reports."""
        if self.state is CircuitState.OPEN and self._clock() >= self._until:
            self.state = CircuitState.HALF_OPEN
            return True
        return False

    def success(self) -> None:
        """A request or the probe succeeded: close, forgetting failures and probe backoff."""
        self.state = CircuitState.CLOSED
        self._failures = 0
        self._opened = 0

    def failure(self) -> None:
        """A request or the probe failed: while closed, count it and open at the threshold; else
        (a failed probe) stay open, the next probe further away."""
        if self.state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures < self._threshold:
                return
        # Never probe sooner than ``base``: full jitter alone may draw a delay near zero.
        delay = max(self._base, full_jitter(self._opened, self._base, self._cap, self._rng))
        self._open_for(delay)
        self._opened += 1

    def hold(self, seconds: float) -> None:
        """The store asked us to wait (429 Retry-After): no request before then."""
        self._open_for(max(seconds, self._base))

    def _open_for(self, seconds: float) -> None:
        self.state = CircuitState.OPEN
        self._failures = 0
        self._until = max(self._until, self._clock() + seconds)

    def retry_after(self) -> float:
        """Seconds until the next probe may go (0 when closed or probing)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._until - self._clock())
