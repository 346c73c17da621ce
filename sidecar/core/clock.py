"""The time the sidecar's decisions read, in one object that tests can move forward.

Every age, schedule, overlap and grace is measured with ``Clock.monotonic`` (for durations) or
``Clock.wall`` (to compare with the store's timestamps). Production uses ``SYSTEM``, whose
methods are the ``time`` functions themselves, so the hot path pays nothing for the seam.
Tests use ``ManualClock``: real time plus an offset they ``advance``, the way stamina offers a
testing mode. Real time keeps flowing (the real store's latencies and timeouts stay real);
only the sidecar's sense of "how long ago" jumps, and everything waiting on it is told."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A callback that will run later unless cancelled."""

    def cancel(self) -> None:
        """Do not run it."""


class Clock(Protocol):
    """Monotonic and wall time, timers on that time, and word when time jumps."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: ages, schedules, graces."""

    def wall(self) -> float:
        """Seconds since the epoch: compared with the store's ``created_time`` and written
        into snapshots and reports."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once ``delay`` seconds of this clock have passed."""

    def on_jump(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever time moves other than by running (only tests do that):
        a loop that sleeps until something is due must look again."""


class SystemClock:
    """The machine's clocks. ``monotonic``/``wall`` are the C functions themselves."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """A plain event-loop timer."""
        return asyncio.get_running_loop().call_later(delay, callback)

    def on_jump(self, callback: Callable[[], None]) -> None:
        """The system clock never jumps for the sidecar's purposes (monotonic time cannot)."""


SYSTEM: Clock = SystemClock()


class ManualClock:
    """Real time plus an offset that tests ``advance``: "an hour later" without the hour.
    Timers set on it fire when real time or an advance reaches them."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._listeners: list[Callable[[], None]] = []
        self._timers: list[_ManualTimer] = []

    def monotonic(self) -> float:
        """Real monotonic time plus the offset."""
        return time.monotonic() + self.offset

    def wall(self) -> float:
        """Real wall time plus the offset."""
        return time.time() + self.offset

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """A timer that an ``advance`` past its due time fires at once."""
        timer = _ManualTimer(self, self.monotonic() + delay, callback)
        self._timers.append(timer)
        timer.arm()
        return timer

    def on_jump(self, callback: Callable[[], None]) -> None:
        """Tell ``callback`` after every ``advance``."""
        self._listeners.append(callback)

    def advance(self, seconds: float) -> None:
        """Move time forward: timers now due fire, sleeping loops wake and look again."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self.offset += seconds
        for timer in list(self._timers):
            timer.arm()
        for listener in self._listeners:
            listener()

    def _done(self, timer: _ManualTimer) -> None:
        if timer in self._timers:
            self._timers.remove(timer)


class _ManualTimer:
    def __init__(self, clock: ManualClock, due: float, callback: Callable[[], None]) -> None:
        self._clock = clock
        self._due = due
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """(Re)set the loop timer for what is left of this clock's time until due."""
        if self._handle is not None:
            self._handle.cancel()
        left = max(0.0, self._due - self._clock.monotonic())
        self._handle = asyncio.get_running_loop().call_later(left, self._fire)

    def _fire(self) -> None:
        self._clock._done(self)
        self._callback()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._clock._done(self)
