"""The clock seam: production reads the C clocks directly; tests move time forward and
everything waiting on it hears about it."""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.core.clock import SYSTEM, ManualClock


def test_the_system_clock_is_the_time_functions_themselves():
    """No wrapper on the hot path: the cache reads ``time.monotonic`` itself."""
    assert SYSTEM.monotonic is time.monotonic
    assert SYSTEM.wall is time.time


async def test_advance_moves_both_clocks_fires_due_timers_and_tells_listeners():
    clock = ManualClock()
    before_mono, before_wall = clock.monotonic(), clock.wall()
    fired: list[str] = []
    jumps: list[int] = []
    clock.on_jump(lambda: jumps.append(1))
    clock.call_later(30, lambda: fired.append("30s"))
    clock.call_later(90, lambda: fired.append("90s"))
    cancelled = clock.call_later(10, lambda: fired.append("cancelled"))
    cancelled.cancel()

    clock.advance(60)
    await asyncio.sleep(0.01)
    assert fired == ["30s"]
    assert jumps == [1]
    assert clock.monotonic() - before_mono >= 60
    assert 60 <= clock.wall() - before_wall < 61

    clock.advance(60)
    await asyncio.sleep(0.01)
    assert fired == ["30s", "90s"]
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


async def test_timers_also_fire_as_real_time_passes():
    clock = ManualClock()
    fired = asyncio.Event()
    clock.call_later(0.05, fired.set)
    await asyncio.wait_for(fired.wait(), 2)
