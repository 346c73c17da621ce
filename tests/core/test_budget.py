"""Reads come before refresh-ahead when the store request budget is short: which urgency each
store request carries, and what the cache does when the budget puts one off (fake store, fake
clock). The budget itself is tests/store/test_budget.py; with a real store,
tests/integration/test_budget.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from sidecar.core.cache import Outcome, SecretCache
from sidecar.core.facts import BudgetDegraded, Fact, FetchFinished
from sidecar.core.priority import Urgency, urgency
from sidecar.store.interface import Deferred, Secret
from tests.core.test_cache import APP, CRITICAL, POLICY, REFRESH, WALL_OFFSET, Clock, FakeBackend


class ShortBudget(FakeBackend):
    """Records each read's urgency; while ``spent``, a request that need not wait is put off
    (as the real budget does when no token is spare), and a foreground one goes through."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.spent = False
        self.urgencies: list[tuple[str, Urgency]] = []

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        self.urgencies.append((path, urgency()))
        if self.spent and urgency() is not Urgency.FOREGROUND:
            raise Deferred("deferred", retry_after=0.2)
        return await super().read(path, version, urgent=urgent)


@dataclass
class Heard:
    degraded: list[tuple[str, str]] = field(default_factory=list)
    failures: list[object] = field(default_factory=list)

    def notify(self, fact: Fact) -> None:
        match fact:
            case BudgetDegraded(secret_class, action):
                self.degraded.append((secret_class.name, action))
            case FetchFinished(_, _, _, error) if error is not None:
                self.failures.append(error)


@dataclass
class H:
    cache: SecretCache
    store: ShortBudget
    clock: Clock
    heard: Heard


@pytest.fixture
async def h() -> AsyncIterator[H]:
    clock = Clock()
    store = ShortBudget(clock)
    heard = Heard()
    cache = SecretCache(
        store,
        POLICY,
        listener=heard,
        clock=lambda: clock.now,
        wall=lambda: WALL_OFFSET + clock.now,
        rng=lambda: 0.5,
    )
    yield H(cache, store, clock, heard)
    await cache.settle()
    await cache.close()


async def _refresh_due(h: H) -> None:
    h.clock.advance(0.9 * REFRESH)
    h.cache.run_due()
    await h.cache.settle()


async def test_reads_ask_in_the_foreground_and_refresh_ahead_in_the_background(h: H) -> None:
    await h.cache.get(APP)
    await _refresh_due(h)
    assert h.store.urgencies == [(APP, Urgency.FOREGROUND), (APP, Urgency.BACKGROUND)]


async def test_a_deferred_refresh_is_retried_soon_quietly_and_counted(h: H, caplog) -> None:
    await h.cache.get(APP)
    h.store.spent = True
    await _refresh_due(h)
    assert h.heard.degraded == [("standard", "deferred")]
    assert h.heard.failures == []  # not a store failure: no backend error, no backoff
    assert "background refresh failed" not in caplog.text
    assert "refresh-ahead is behind" in caplog.text
    # tried again once a token should be spare (0.2 s, jittered up to twice that), not after
    # a backoff that grows
    assert h.cache.run_due() == pytest.approx(0.2 * 1.5)
    h.store.spent = False
    h.clock.advance(0.3)
    h.cache.run_due()
    await h.cache.settle()
    assert h.store.urgencies[-1] == (APP, Urgency.BACKGROUND)
    assert (await h.cache.get(APP)).outcome is Outcome.HIT
    assert len(h.store.calls) == 2  # the put-off one never reached the store


async def test_a_serve_stale_read_takes_the_value_held_rather_than_wait_for_a_token(h: H) -> None:
    first = await h.cache.get(APP)
    h.store.spent = True
    h.clock.advance(REFRESH + 1)  # past refresh_interval, well within max_cache_age
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.STALE
    assert lookup.entry is first.entry
    assert h.store.urgencies[-1] == (APP, Urgency.STALE_OK)
    assert ("standard", "served_stale") in h.heard.degraded
    # with a token spare it asks, and the answer is fresh again
    h.store.spent = False
    h.clock.advance(1)
    assert (await h.cache.get(APP)).outcome is Outcome.MISS


async def test_a_fail_closed_read_never_gets_a_stale_value_for_want_of_a_token(h: H) -> None:
    await h.cache.get(CRITICAL)
    h.store.spent = True
    h.clock.advance(REFRESH + 1)
    lookup = await h.cache.get(CRITICAL)
    assert lookup.outcome is Outcome.MISS  # confirmed by the store, asked in the foreground
    assert h.store.urgencies[-1] == (CRITICAL, Urgency.FOREGROUND)
    assert h.heard.degraded == []


async def test_a_read_that_joins_a_put_off_refresh_asks_again_in_the_foreground(h: H) -> None:
    await h.cache.get(CRITICAL)
    h.clock.advance(0.5 * REFRESH)
    await h.cache.get(CRITICAL)  # read lately: its refresh-ahead is wanted
    h.store.spent = True
    h.clock.advance(0.55 * REFRESH)  # the refresh is due and the value past its interval
    h.cache.run_due()  # starts the background refresh (it has not run yet)
    lookup = await h.cache.get(CRITICAL)  # joins it; it is put off; the read asks itself
    assert lookup.outcome is Outcome.COALESCED
    assert lookup.entry.confirmed_at == h.clock.now
    assert [u for _, u in h.store.urgencies[1:]] == [Urgency.BACKGROUND, Urgency.FOREGROUND]
