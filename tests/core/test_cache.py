"""SecretCache against a fake store and a fake clock: time passes only when a test says so."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from sidecar.core.cache import Outcome, PathNotAllowed, SecretCache
from sidecar.core.facts import (
    EntriesChanged,
    Fact,
    FetchFinished,
    LookedUp,
    PreviousRetired,
    Rotated,
    Unavailable,
)
from sidecar.core.policy import OnOutage, Policy, Rule, SecretClass
from sidecar.store.interface import (
    ErrorKind,
    Secret,
    SecretForbidden,
    SecretNotFound,
    StoreError,
    StoreUnavailable,
    VersionInfo,
)

REFRESH = 60.0
MAX_AGE = 600.0
START = 1000.0
WALL_OFFSET = 1_700_000_000.0

APP = "secret/app/db"
OTHER = "secret/app/api"
CRITICAL = "secret/critical/signing-key"


def make_class(name: str, on_outage: OnOutage) -> SecretClass:
    return SecretClass(
        name=name,
        business_function=f"{name} things",
        owner=f"team-{name}",
        refresh_interval=REFRESH,
        max_cache_age=MAX_AGE,
        on_outage=on_outage,
        rotation_method="rotate in the store",
        revocation_steps="revoke in the store",
    )


STANDARD = make_class("standard", OnOutage.SERVE_STALE)
STRICT = make_class("strict", OnOutage.FAIL_CLOSED)
POLICY = Policy([Rule("secret/critical/**", STRICT), Rule("secret/**", STANDARD)])


class Clock:
    def __init__(self) -> None:
        self.now = START

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBackend:
    """Answers ``latest[path]`` (default 1) or the version asked for; can fail or block."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, int | None]] = []
        self.latest: dict[str, int] = {}
        self.error: StoreError | None = None
        self.gate: asyncio.Event | None = None
        self.latency = 0.0  # fake seconds each read takes
        self.metadata = False  # answer version_info (else: "cannot tell", data reads)
        self.metadata_calls: list[str] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def version_info(self, path: str) -> VersionInfo | None:
        if not self.metadata:
            return None
        self.metadata_calls.append(path)
        if self.error is not None:
            raise self.error
        return VersionInfo(current=self.latest.get(path, 1), created_time=None, gone=False)

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        self.calls.append((path, version))
        if self.gate is not None:
            await self.gate.wait()
        self.clock.advance(self.latency)
        if self.error is not None:
            raise self.error
        answered = self.latest.get(path, 1) if version is None else version
        return Secret(path=path, data={"value": f"{path}@v{answered}"}, version=answered)


@dataclass
class Recorder:
    """Listens to the cache's facts, keeping the ones these tests look at."""

    fetches: list[tuple[str, str, float, StoreError | None]] = field(default_factory=list)
    lookups: list[tuple[str, Outcome]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)

    def notify(self, fact: Fact) -> None:
        match fact:
            case FetchFinished(path, secret_class, seconds, error):
                self.fetches.append((path, secret_class.name, seconds, error))
            case LookedUp(secret_class, outcome):
                self.lookups.append((secret_class.name, outcome))
            case Unavailable(secret_class, reason):
                self.refusals.append((secret_class.name, reason))
            case EntriesChanged(count):
                self.counts.append(count)


@dataclass
class Harness:
    cache: SecretCache
    backend: FakeBackend
    clock: Clock
    observer: Recorder


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    clock = Clock()
    backend = FakeBackend(clock)
    observer = Recorder()
    cache = SecretCache(
        backend,
        POLICY,
        listener=observer,
        clock=lambda: clock.now,
        wall=lambda: WALL_OFFSET + clock.now,
        rng=lambda: 0.5,
    )
    yield Harness(cache, backend, clock, observer)
    if backend.gate is not None:
        backend.gate.set()
    await cache.settle()
    await cache.close()


async def spin(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def outage(reason: str = "connection_refused", **kwargs: object) -> StoreUnavailable:
    return StoreUnavailable(reason, **kwargs)  # type: ignore[arg-type]


# -- hits, misses, coalescing --------------------------------------------------------------


async def test_first_get_is_a_miss_that_reads_the_store_once(h: Harness) -> None:
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.MISS
    assert not lookup.stale
    assert lookup.age == 0.0
    assert lookup.entry.secret.data == {"value": f"{APP}@v1"}
    assert lookup.entry.secret_class is STANDARD
    assert lookup.entry.confirmed_at == START
    assert lookup.entry.fetched_at == WALL_OFFSET + START
    assert h.backend.calls == [(APP, None)]
    assert len(h.cache) == 1
    assert [key for key, _ in h.cache.entries()] == [(APP, None)]


async def test_gets_within_refresh_interval_are_hits(h: Harness) -> None:
    first = await h.cache.get(APP)
    for elapsed in (1.0, 30.0, REFRESH - 0.001):
        h.clock.now = START + elapsed
        lookup = await h.cache.get(APP)
        assert lookup.outcome is Outcome.HIT
        assert lookup.entry is first.entry
        assert lookup.age == pytest.approx(elapsed)
    assert h.backend.calls == [(APP, None)]


async def test_get_past_refresh_interval_reads_the_store_again(h: Harness) -> None:
    await h.cache.get(APP)
    h.backend.latest[APP] = 2
    h.clock.advance(REFRESH)  # the boundary itself is no longer fresh
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.MISS
    assert lookup.age == 0.0
    assert lookup.entry.secret.version == 2
    assert lookup.entry.secret.data == {"value": f"{APP}@v2"}
    assert h.backend.calls == [(APP, None), (APP, None)]
    assert len(h.cache) == 1
    # and the new value is fresh again
    h.clock.advance(1)
    assert (await h.cache.get(APP)).outcome is Outcome.HIT
    assert len(h.backend.calls) == 2


async def test_concurrent_cold_gets_share_one_store_read(h: Harness) -> None:
    h.backend.gate = asyncio.Event()
    tasks = [asyncio.create_task(h.cache.get(APP)) for _ in range(20)]
    await spin()
    assert h.backend.calls == [(APP, None)]
    h.backend.gate.set()
    lookups = await asyncio.gather(*tasks)
    assert h.backend.calls == [(APP, None)]
    assert Counter(lookup.outcome for lookup in lookups) == {
        Outcome.MISS: 1,
        Outcome.COALESCED: 19,
    }
    assert len({id(lookup.entry) for lookup in lookups}) == 1
    assert Counter(outcome for _, outcome in h.observer.lookups) == {
        Outcome.MISS: 1,
        Outcome.COALESCED: 19,
    }
    assert len(h.observer.fetches) == 1


async def test_distinct_paths_are_read_separately(h: Harness) -> None:
    await h.cache.get(APP)
    await h.cache.get(OTHER)
    assert h.backend.calls == [(APP, None), (OTHER, None)]
    assert len(h.cache) == 2


async def test_caller_giving_up_does_not_cancel_the_read(h: Harness) -> None:
    h.backend.gate = asyncio.Event()
    impatient = asyncio.create_task(h.cache.get(APP))
    await spin()
    impatient.cancel()
    await spin()
    assert impatient.cancelled()
    h.backend.gate.set()
    await spin()
    assert len(h.cache) == 1  # the read finished and was cached for the next caller
    assert (await h.cache.get(APP)).outcome is Outcome.HIT
    assert h.backend.calls == [(APP, None)]


# -- outages -------------------------------------------------------------------------------


async def test_serve_stale_class_serves_old_value_until_max_cache_age(h: Harness) -> None:
    first = await h.cache.get(APP)
    h.backend.error = outage(retry_after=5.0)

    h.clock.advance(REFRESH + 1)
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.STALE
    assert lookup.stale
    assert lookup.entry is first.entry
    assert lookup.age == pytest.approx(REFRESH + 1)
    assert len(h.backend.calls) == 2  # it did ask the store

    h.clock.now = START + MAX_AGE - 0.001
    assert (await h.cache.get(APP)).outcome is Outcome.STALE

    h.clock.now = START + MAX_AGE
    with pytest.raises(StoreUnavailable) as info:
        await h.cache.get(APP)
    assert info.value.reason == "max_cache_age_exceeded"
    assert info.value.kind is ErrorKind.CONNECTION
    assert info.value.retry_after == 5.0
    assert info.value.__cause__ is h.backend.error
    assert len(h.cache) == 0

    # the tombstone keeps saying why, not "never heard of it"
    h.clock.advance(10)
    with pytest.raises(StoreUnavailable) as again:
        await h.cache.get(APP)
    assert again.value.reason == "max_cache_age_exceeded"

    # the store comes back: a normal miss, the tombstone is gone
    h.backend.error = None
    assert (await h.cache.get(APP)).outcome is Outcome.MISS
    h.clock.advance(REFRESH)
    h.backend.error = outage()
    assert (await h.cache.get(APP)).outcome is Outcome.STALE


async def test_fail_closed_class_refuses_unconfirmed_values(h: Harness) -> None:
    await h.cache.get(CRITICAL)
    h.backend.error = outage("timeout", kind=ErrorKind.TIMEOUT, retry_after=2.0)

    h.clock.advance(REFRESH - 1)
    assert (await h.cache.get(CRITICAL)).outcome is Outcome.HIT  # still fresh: no store call
    assert len(h.backend.calls) == 1

    h.clock.advance(1)
    with pytest.raises(StoreUnavailable) as info:
        await h.cache.get(CRITICAL)
    assert info.value.reason == "fail_closed"
    assert info.value.kind is ErrorKind.TIMEOUT
    assert info.value.retry_after == 2.0
    assert info.value.__cause__ is h.backend.error
    assert "strict" in str(info.value)
    assert len(h.backend.calls) == 2
    assert len(h.cache) == 1  # kept: the store may confirm it again

    h.backend.error = None
    lookup = await h.cache.get(CRITICAL)
    assert lookup.outcome is Outcome.MISS
    assert lookup.age == 0.0


async def test_fail_closed_past_max_cache_age_reports_expiry(h: Harness) -> None:
    await h.cache.get(CRITICAL)
    h.backend.error = outage()
    h.clock.advance(MAX_AGE + 1)
    with pytest.raises(StoreUnavailable) as info:
        await h.cache.get(CRITICAL)
    assert info.value.reason == "max_cache_age_exceeded"
    assert len(h.cache) == 0


@pytest.mark.parametrize("path", [APP, CRITICAL])
async def test_cold_miss_with_store_down_raises_the_store_error(h: Harness, path: str) -> None:
    down = outage("sealed", kind=ErrorKind.SEALED)
    h.backend.error = down
    with pytest.raises(StoreUnavailable) as info:
        await h.cache.get(path)
    assert info.value is down  # the store's own error, not a not-found kind
    assert not isinstance(info.value, SecretNotFound | SecretForbidden)
    assert info.value.kind is ErrorKind.SEALED
    assert len(h.cache) == 0
    assert h.observer.fetches == [(path, POLICY.classify(path).name, 0.0, down)]  # type: ignore[union-attr]


async def test_expired_entry_is_not_served_when_the_store_answers(h: Harness) -> None:
    await h.cache.get(APP)
    h.backend.latest[APP] = 7
    h.clock.advance(MAX_AGE + 100)
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.MISS
    assert lookup.entry.secret.version == 7
    assert len(h.backend.calls) == 2


async def test_concurrent_stale_reads_during_outage_share_one_attempt(h: Harness) -> None:
    await h.cache.get(APP)
    h.backend.error = outage()
    h.backend.gate = asyncio.Event()
    h.clock.advance(REFRESH + 5)
    tasks = [asyncio.create_task(h.cache.get(APP)) for _ in range(5)]
    await spin()
    h.backend.gate.set()
    lookups = await asyncio.gather(*tasks)
    assert {lookup.outcome for lookup in lookups} == {Outcome.STALE}
    assert len(h.backend.calls) == 2


# -- the store says no ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [SecretNotFound("secret not found"), SecretForbidden("permission denied")],
    ids=["not_found", "forbidden"],
)
@pytest.mark.parametrize("path", [APP, CRITICAL])
async def test_not_found_or_forbidden_on_refresh_drops_the_entry(
    h: Harness, error: StoreError, path: str
) -> None:
    await h.cache.get(path)
    await h.cache.get(OTHER)
    assert len(h.cache) == 2
    h.backend.error = error
    h.clock.advance(REFRESH)
    with pytest.raises(type(error)) as info:
        await h.cache.get(path)
    assert info.value is error
    assert len(h.cache) == 1  # even a serve_stale class stops serving it at once
    assert [key for key, _ in h.cache.entries()] == [(OTHER, None)]
    assert h.observer.counts[-1] == 1

    h.backend.error = None
    # The refusal is remembered for the class's negative_ttl (the negative cache), then the
    # store is asked again.
    calls = len(h.backend.calls)
    with pytest.raises(type(error)):
        await h.cache.get(path)
    assert len(h.backend.calls) == calls
    h.clock.advance(h.cache.classify(path).negative_seconds)
    assert (await h.cache.get(path)).outcome is Outcome.MISS


async def test_negative_cache_remembers_refusals_briefly_and_purge_forgets_them(
    h: Harness,
) -> None:
    h.backend.error = SecretNotFound("no such secret")
    for _ in range(30):
        with pytest.raises(SecretNotFound):
            await h.cache.get(APP)
    assert h.backend.calls == [(APP, None)]  # 30 reads of a missing path: one store read
    assert Counter(outcome for _, outcome in h.observer.lookups)[Outcome.NEGATIVE] == 29
    # each refusal is a fresh exception (a re-raised one would grow its traceback forever)
    with pytest.raises(SecretNotFound) as first:
        await h.cache.get(APP)
    with pytest.raises(SecretNotFound) as second:
        await h.cache.get(APP)
    assert first.value is not second.value

    # A secret created meanwhile is seen once the negative TTL ends...
    h.backend.error = None
    h.clock.advance(STANDARD.negative_seconds - 0.001)
    with pytest.raises(SecretNotFound):
        await h.cache.get(APP)
    h.clock.advance(0.001)
    assert (await h.cache.get(APP)).outcome is Outcome.MISS

    # ...or at once after a purge.
    h.backend.error = SecretForbidden("permission denied")
    with pytest.raises(SecretForbidden):
        await h.cache.get(OTHER)
    h.backend.error = None
    assert h.cache.controls.purge(prefix="secret/app/") == 1  # the value of APP; OTHER had none
    assert (await h.cache.get(OTHER)).outcome is Outcome.MISS


async def test_negative_cache_can_be_turned_off_and_is_capped_by_refresh_interval() -> None:
    import dataclasses

    off = dataclasses.replace(STANDARD, negative_ttl=0.0)
    assert off.negative_seconds == 0.0
    long = dataclasses.replace(STANDARD, negative_ttl=3600.0)
    assert long.negative_seconds == REFRESH
    clock = Clock()
    backend = FakeBackend(clock)
    cache = SecretCache(backend, Policy([Rule("**", off)]), clock=lambda: clock.now)
    backend.error = SecretNotFound("no")
    for _ in range(3):
        with pytest.raises(SecretNotFound):
            await cache.get(APP)
    assert len(backend.calls) == 3


async def test_not_found_in_background_refresh_drops_the_entry(h: Harness) -> None:
    await h.cache.get(APP)
    h.backend.error = SecretNotFound("deleted")
    h.clock.advance(0.9 * REFRESH)
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 2
    assert len(h.cache) == 0


async def test_unclassified_path_is_refused_without_asking_the_store(h: Harness) -> None:
    with pytest.raises(PathNotAllowed, match="kv/unlisted"):
        await h.cache.get("kv/unlisted")
    assert h.backend.calls == []
    assert len(h.cache) == 0
    assert h.observer.lookups == []
    assert h.observer.fetches == []


# -- refresh-ahead and expiry --------------------------------------------------------------


async def test_recently_read_entry_is_refreshed_ahead_of_time(h: Harness) -> None:
    await h.cache.get(APP)
    # A first value's refresh comes at a uniform point of one refresh cycle after a lead of
    # 5 %, so a fleet started together is spread at once: with rng 0.5, 0.05 + 0.5 x 0.825.
    assert h.cache.run_due() == pytest.approx(0.4625 * REFRESH)
    h.clock.advance(0.4625 * REFRESH)
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 2
    h.clock.advance(0.1 * REFRESH)
    await h.cache.get(APP)  # read again: wanted
    refreshed_at = START + 0.4625 * REFRESH
    # later ones at (0.75 + 0.15 * 0.5) = 0.825 of the interval
    assert h.cache.run_due() == pytest.approx(refreshed_at + 0.825 * REFRESH - h.clock.now)

    h.clock.now = refreshed_at + 0.8 * REFRESH
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 2  # not due yet

    h.backend.latest[APP] = 2
    h.clock.now = refreshed_at + 0.9 * REFRESH
    h.cache.run_due()
    await h.cache.settle()
    assert h.backend.calls == [(APP, None), (APP, None), (APP, None)]

    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.HIT  # the application never waited for the store
    assert lookup.entry.secret.version == 2
    assert lookup.age == 0.0
    assert len(h.backend.calls) == 3


async def test_without_the_first_cycle_spread_every_refresh_is_in_the_window() -> None:
    clock = Clock()
    cache = SecretCache(
        FakeBackend(clock),
        POLICY,
        clock=lambda: clock.now,
        wall=lambda: WALL_OFFSET + clock.now,
        rng=lambda: 0.5,
        spread_load=False,
    )
    await cache.get(APP)
    assert cache.run_due() == pytest.approx(0.825 * REFRESH)
    await cache.close()


async def test_a_refresh_that_succeeds_after_failures_is_spread_like_a_first(h: Harness) -> None:
    h.cache.preload([APP], jitter=0.0)
    h.cache.run_due()
    await h.cache.settle()
    h.clock.advance(0.4625 * REFRESH)
    h.backend.error = outage()
    h.cache.run_due()  # the refresh fails: retried after a backoff
    await h.cache.settle()
    h.backend.error = None
    retry = h.cache.run_due()
    assert retry is not None
    h.clock.advance(retry)
    h.cache.run_due()
    await h.cache.settle()
    # the store is back: the next refresh is drawn as a first one
    assert h.cache.run_due() == pytest.approx(0.4625 * REFRESH)


async def test_entry_not_read_recently_is_not_refreshed(h: Harness) -> None:
    await h.cache.get(APP)
    h.clock.advance(REFRESH + 10)  # the refresh came due, but nobody read it for a while
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 1
    assert len(h.cache) == 1  # not refreshed, not expired either


async def test_refresh_ahead_stops_once_reads_stop(h: Harness) -> None:
    await h.cache.get(APP)
    h.clock.now = START + 0.9 * REFRESH
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 2

    # the refreshed entry's own refresh comes due, but the last read is over an interval ago
    h.clock.now = START + 1.8 * REFRESH
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 2

    # read it again, and it is kept warm again
    h.clock.now = START + 2.0 * REFRESH
    assert (await h.cache.get(APP)).outcome is Outcome.MISS
    assert len(h.backend.calls) == 3
    h.clock.advance(0.9 * REFRESH)
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 4


async def test_failed_background_refresh_keeps_the_entry(h: Harness) -> None:
    first = await h.cache.get(APP)
    h.backend.error = outage()
    h.clock.advance(0.9 * REFRESH)
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 2
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.HIT  # still within its refresh interval
    assert lookup.entry is first.entry


async def test_run_due_expires_entries_past_max_cache_age(h: Harness) -> None:
    await h.cache.get(APP)
    await h.cache.get(OTHER)
    h.clock.advance(MAX_AGE - 1)
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.cache) == 2

    h.clock.advance(1)
    assert h.cache.run_due() is None  # nothing left to do
    await h.cache.settle()
    assert len(h.cache) == 0
    assert h.observer.counts[-2:] == [1, 0]
    assert len(h.backend.calls) == 2  # expiry does not read the store

    h.backend.error = outage()
    with pytest.raises(StoreUnavailable) as info:
        await h.cache.get(APP)
    assert info.value.reason == "max_cache_age_exceeded"


# -- never go backwards --------------------------------------------------------------------


async def test_older_version_from_store_does_not_replace_newer_value(h: Harness) -> None:
    first = await h.cache.get(APP)
    h.backend.latest[APP] = 5
    h.clock.advance(REFRESH)
    newer = await h.cache.get(APP)
    assert newer.entry.secret.version == 5
    assert newer.entry is not first.entry

    h.backend.latest[APP] = 4  # e.g. a lagging standby answered
    h.clock.advance(REFRESH)
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.STALE
    assert lookup.entry is newer.entry
    assert lookup.entry.secret.version == 5
    assert dict(h.cache.entries())[(APP, None)] is newer.entry
    assert len(h.backend.calls) == 3
    path, cls, _, error = h.observer.fetches[-1]
    assert (path, cls) == (APP, "standard")
    assert isinstance(error, StoreUnavailable)
    assert error.kind is ErrorKind.STALE_READ


async def test_a_key_the_store_answered_older_is_not_asked_again_until_a_backoff_passes(
    h: Harness,
) -> None:
    """A lagging node answers at once and healthily: no breaker opens, no Retry-After comes.
    Without a hold every read of the stale value asked again (the drill's stale_node: ~10
    store requests a second per secret)."""
    h.backend.latest[APP] = 5
    await h.cache.get(APP)
    h.backend.latest[APP] = 4
    h.clock.advance(REFRESH)
    for _ in range(20):
        assert (await h.cache.get(APP)).outcome is Outcome.STALE
    assert len(h.backend.calls) == 2  # the first stale answer, then held for 0.5 s (backoff base)
    h.clock.advance(0.6)
    await h.cache.get(APP)
    assert len(h.backend.calls) == 3  # asked again, older again: held for twice as long
    h.clock.advance(0.6)
    await h.cache.get(APP)
    assert len(h.backend.calls) == 3
    h.clock.advance(0.6)
    h.backend.latest[APP] = 5  # caught up
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.MISS and not lookup.stale
    assert len(h.backend.calls) == 4
    h.backend.latest[APP] = 4
    h.clock.advance(REFRESH)
    await h.cache.get(APP)
    assert len(h.backend.calls) == 5  # a new lag starts from the base again
    h.clock.advance(0.6)
    await h.cache.get(APP)
    assert len(h.backend.calls) == 6


async def test_the_lag_hold_ends_with_a_purge_and_never_outlasts_refresh_interval(
    h: Harness,
) -> None:
    h.backend.latest[APP] = 5
    await h.cache.get(APP)
    h.backend.latest[APP] = 4
    h.clock.advance(REFRESH)
    await h.cache.get(APP)
    assert len(h.backend.calls) == 2
    assert h.cache.controls.purge(path=APP) == 1  # the held value is gone: so is the hold
    h.backend.latest[APP] = 6
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.MISS and lookup.entry.secret.version == 6
    assert len(h.backend.calls) == 3

    short = dataclasses.replace(make_class("short", OnOutage.SERVE_STALE), refresh_interval=0.2)
    cache = SecretCache(
        h.backend,
        Policy([Rule("secret/short", short)]),
        clock=lambda: h.clock.now,
        wall=lambda: WALL_OFFSET + h.clock.now,
        rng=lambda: 0.5,
        backoff=(5.0, 30.0),  # a hold of 5 s, were it not for refresh_interval
    )
    h.backend.latest["secret/short"] = 5
    await cache.get("secret/short")
    h.backend.latest["secret/short"] = 4
    h.clock.advance(0.2)
    await cache.get("secret/short")
    asked = len(h.backend.calls)
    h.clock.advance(0.25)
    await cache.get("secret/short")
    assert len(h.backend.calls) == asked + 1  # held 0.2 s (the class's refresh_interval), not 5
    await cache.settle()
    await cache.close()


async def test_older_version_for_fail_closed_class_is_refused(h: Harness) -> None:
    h.backend.latest[CRITICAL] = 5
    first = await h.cache.get(CRITICAL)
    h.backend.latest[CRITICAL] = 4
    h.clock.advance(REFRESH)
    with pytest.raises(StoreUnavailable) as info:
        await h.cache.get(CRITICAL)
    assert info.value.reason == "fail_closed"
    assert info.value.kind is ErrorKind.STALE_READ
    assert dict(h.cache.entries())[(CRITICAL, None)] is first.entry


async def test_background_refresh_answering_older_version_keeps_entry(h: Harness) -> None:
    h.backend.latest[APP] = 5
    first = await h.cache.get(APP)
    h.backend.latest[APP] = 3
    h.clock.advance(0.9 * REFRESH)
    h.cache.run_due()
    await h.cache.settle()
    assert len(h.backend.calls) == 2
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.HIT
    assert lookup.entry is first.entry
    assert lookup.entry.secret.version == 5


async def test_same_or_newer_version_replaces_entry(h: Harness) -> None:
    h.backend.latest[APP] = 5
    first = await h.cache.get(APP)
    h.clock.advance(REFRESH)
    same = await h.cache.get(APP)
    assert same.outcome is Outcome.MISS
    assert same.entry is not first.entry
    assert same.entry.secret.version == 5
    assert same.entry.confirmed_at == START + REFRESH


# -- versions ------------------------------------------------------------------------------


async def test_specific_versions_are_cached_separately_from_latest(h: Harness) -> None:
    h.backend.latest[APP] = 5
    latest = await h.cache.get(APP)
    pinned = await h.cache.get(APP, 3)
    assert latest.entry.secret.version == 5
    assert pinned.outcome is Outcome.MISS
    assert pinned.entry.secret.version == 3  # an older pinned version is not a "stale read"
    assert pinned.entry.secret.data == {"value": f"{APP}@v3"}
    assert h.backend.calls == [(APP, None), (APP, 3)]
    assert len(h.cache) == 2
    assert {key for key, _ in h.cache.entries()} == {(APP, None), (APP, 3)}

    assert (await h.cache.get(APP, 3)).entry is pinned.entry
    assert (await h.cache.get(APP)).entry is latest.entry
    assert len(h.backend.calls) == 2

    h.backend.error = SecretNotFound("version 3 destroyed")
    h.clock.advance(REFRESH)
    with pytest.raises(SecretNotFound):
        await h.cache.get(APP, 3)
    assert {key for key, _ in h.cache.entries()} == {(APP, None)}


# -- observer ------------------------------------------------------------------------------


async def test_observer_sees_fetches_lookups_and_entry_counts(h: Harness) -> None:
    h.backend.latency = 0.25
    await h.cache.get(APP)
    assert h.observer.fetches == [(APP, "standard", 0.25, None)]
    assert h.observer.counts == [1]
    assert h.observer.lookups == [("standard", Outcome.MISS)]

    await h.cache.get(APP)
    await h.cache.get(CRITICAL)
    assert h.observer.lookups[1:] == [("standard", Outcome.HIT), ("strict", Outcome.MISS)]
    assert h.observer.counts == [1, 2]

    down = outage()
    h.backend.error = down
    h.clock.advance(REFRESH)
    await h.cache.get(APP)
    assert h.observer.fetches[-1] == (APP, "standard", 0.25, down)
    assert h.observer.lookups[-1] == ("standard", Outcome.STALE)
    with pytest.raises(StoreUnavailable):
        await h.cache.get(CRITICAL)
    assert h.observer.fetches[-1] == (CRITICAL, "strict", 0.25, down)
    # a refused request is still counted, as the fetch it attempted
    assert h.observer.lookups[-1] == ("strict", Outcome.MISS)
    assert len(h.observer.lookups) == 5

    h.backend.error = SecretForbidden("denied")
    with pytest.raises(SecretForbidden):
        await h.cache.get(APP)
    assert h.observer.counts[-1] == 1
    assert h.observer.fetches[-1][3] is h.backend.error
    assert h.observer.lookups[-1] == ("standard", Outcome.MISS)
    assert len(h.observer.lookups) == 6

    h.clock.advance(MAX_AGE)
    h.cache.run_due()
    assert h.observer.counts[-1] == 0


async def test_close_cancels_reads_in_flight(h: Harness) -> None:
    h.backend.gate = asyncio.Event()
    waiter = asyncio.create_task(h.cache.get(APP))
    await spin()
    async with asyncio.timeout(2):  # a close that does not cancel would wait forever
        await h.cache.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(h.cache) == 0


# -- warm start, preload, retries -------------------------------------------------------------


def _snap(path: str, age: float, version: int | None = None) -> tuple:
    secret = Secret(path=path, data={"value": f"{path}@snap"}, version=1)
    return (path, version), secret, WALL_OFFSET + START - age


async def test_restore_keeps_what_is_young_enough_and_of_a_persistable_class(h: Harness) -> None:
    restored, discarded = h.cache.restore(
        [
            _snap(APP, age=10),  # kept
            _snap(OTHER, age=MAX_AGE + 1),  # too old
            _snap(CRITICAL, age=10),  # fail_closed: never restored
            _snap("kv/unclassified", age=10),  # no rule any more
            _snap(APP, age=5, version=2),  # a pinned version: its own key
        ]
    )
    assert (restored, discarded) == (2, 3)
    assert {key for key, _ in h.cache.entries()} == {(APP, None), (APP, 2)}
    assert h.cache.servable(APP)
    assert not h.cache.servable(CRITICAL)
    assert [e.provisional for _, e in h.cache.entries()] == [True, True]
    assert h.backend.calls == []


async def test_restored_values_are_served_stale_at_once_and_confirmed_in_background(
    h: Harness,
) -> None:
    h.cache.restore([_snap(APP, age=10)], confirm_within=4.0)  # rng 0.5: confirmed at +2 s
    lookup = await h.cache.get(APP)  # young (10 s < refresh_interval) but unconfirmed
    assert lookup.outcome is Outcome.STALE
    assert lookup.age == pytest.approx(10)
    assert lookup.entry.secret.data == {"value": f"{APP}@snap"}
    assert h.backend.calls == []  # nobody waited on the store
    assert h.cache.run_due() == pytest.approx(2.0)
    h.clock.advance(2.0)
    h.cache.run_due()
    await h.cache.settle()
    assert h.backend.calls == [(APP, None)]  # one confirmation
    confirmed = await h.cache.get(APP)
    assert confirmed.outcome is Outcome.HIT
    assert not confirmed.entry.provisional


async def test_a_failed_confirmation_keeps_serving_the_restored_value(h: Harness) -> None:
    h.cache.restore([_snap(APP, age=10)])
    await h.cache.get(APP)  # read: wanted, so retried
    h.backend.error = outage()
    h.cache.run_due()
    await h.cache.settle()
    assert (await h.cache.get(APP)).outcome is Outcome.STALE
    h.backend.error = None
    h.clock.advance(h.cache.run_due() or 0)
    h.cache.run_due()
    await h.cache.settle()
    assert (await h.cache.get(APP)).outcome is Outcome.HIT


async def test_a_failed_confirmation_is_retried_even_when_nobody_read_it_lately(
    h: Harness,
) -> None:
    """A restored value is served (stale) without any read fetching it: if its confirmation
    failed, a retry must not wait for a read, or the value stays unconfirmed once the store is
    back (found by `sidecar drill`, restart_in_outage)."""
    h.cache.restore([_snap(APP, age=10)])  # never read since: not "wanted"
    h.backend.error = outage()
    h.cache.run_due()
    await h.cache.settle()
    failed = len(h.backend.calls)
    assert failed == 1
    h.backend.error = None  # the store is back
    for _ in range(5):  # the retry comes after its backoff, with no read in between
        if len(h.backend.calls) > failed:
            break
        h.clock.advance(h.cache.run_due() or 0)
        h.cache.run_due()
        await h.cache.settle()
    assert len(h.backend.calls) == failed + 1  # retried once, and that confirmed it
    ((_, held),) = list(h.cache.entries())
    assert not held.provisional and held.secret.data == {"value": f"{APP}@v1"}


async def test_restored_values_expire_at_max_cache_age_counted_from_the_store(
    h: Harness,
) -> None:
    h.cache.restore([_snap(APP, age=MAX_AGE - 5)])
    h.clock.advance(5)
    h.cache.run_due()
    assert len(h.cache) == 0
    h.backend.error = outage()
    with pytest.raises(StoreUnavailable) as caught:
        await h.cache.get(APP)
    assert caught.value.reason == "max_cache_age_exceeded"


async def test_export_never_includes_fail_closed_values(h: Harness) -> None:
    await h.cache.get(APP)
    await h.cache.get(CRITICAL)
    assert [key for key, _ in h.cache.export()] == [(APP, None)]


async def test_preload_fetches_within_the_jitter_window_and_keeps_fresh_unread(
    h: Harness,
) -> None:
    h.cache.preload([APP], jitter=10.0)  # rng 0.5: due 5 s from now
    assert h.cache.run_due() == pytest.approx(5.0)
    h.clock.advance(5)
    h.cache.run_due()
    await h.cache.settle()
    assert h.backend.calls == [(APP, None)]
    assert h.cache.servable(APP)
    assert h.cache.preloaded() == [APP]
    # never read by anyone, yet refreshed ahead of each interval (0.825 * 60 s with rng 0.5)
    for round_ in range(1, 4):
        h.clock.advance(REFRESH * 0.825)
        h.cache.run_due()
        await h.cache.settle()
        assert len(h.backend.calls) == 1 + round_


async def test_failed_background_refresh_retries_with_backoff_while_wanted(h: Harness) -> None:
    h.cache.preload([APP], jitter=0.0)
    h.backend.error = outage()
    h.cache.run_due()
    await h.cache.settle()
    delays = []
    for _ in range(6):
        delay = h.cache.run_due()
        assert delay is not None
        delays.append(delay)
        h.clock.advance(delay)
        h.cache.run_due()
        await h.cache.settle()
    # full jitter with rng 0.5: 0.25, 0.5, 1, 2, 4, 8 s (base 0.5, cap 30)
    assert delays == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    h.backend.error = None
    h.clock.advance(h.cache.run_due() or 0)
    h.cache.run_due()
    await h.cache.settle()
    assert h.cache.servable(APP)


async def test_unread_secret_is_not_retried_after_a_failed_refresh(h: Harness) -> None:
    await h.cache.get(APP)
    h.backend.error = outage()
    h.clock.advance(REFRESH * 0.825)
    h.cache.run_due()  # read within the interval: refreshed (and fails)
    await h.cache.settle()
    calls = len(h.backend.calls)
    h.clock.advance(REFRESH * 2)  # nobody reads it any more
    for _ in range(5):
        h.cache.run_due()
        await h.cache.settle()
        h.clock.advance(30)
    assert len(h.backend.calls) == calls


async def test_replaced_and_purged_values_leave_memory_at_once(h: Harness) -> None:
    import gc
    import weakref

    first = weakref.ref((await h.cache.get(APP)).entry)
    h.clock.advance(REFRESH + 1)
    h.backend.latest[APP] = 2
    await h.cache.get(APP)  # replaced by version 2
    gc.collect()
    assert first() is None  # the schedule does not keep the old value alive
    second = weakref.ref((await h.cache.get(APP)).entry)
    assert h.cache.controls.purge(path=APP) == 1
    await spin()  # let the loop drop its own finished futures
    gc.collect()
    assert second() is None


class _AskedThenHeld(FakeBackend):
    """The store's answer is decided when it is asked; the reply is held back by ``gate``."""

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        error = self.error
        self.calls.append((path, version))
        if self.gate is not None:
            await self.gate.wait()
        if error is not None:
            raise error
        return Secret(path=path, data={"value": f"{path}@v1"}, version=1)


async def test_a_fetch_under_way_during_a_purge_keeps_nothing() -> None:
    clock = Clock()
    backend = _AskedThenHeld(clock)
    cache = SecretCache(backend, POLICY, clock=lambda: clock.now, rng=lambda: 0.5)

    # A value fetched before the purge is given to the read that waited, and not kept.
    backend.gate = asyncio.Event()
    read = asyncio.create_task(cache.get(APP))
    await _asked(backend)
    assert cache.controls.purge(path=APP) == 0
    backend.gate.set()
    assert (await read).entry.secret.data == {"value": f"{APP}@v1"}
    assert len(cache) == 0
    assert (await cache.get(APP)).outcome is Outcome.MISS  # asked again

    # A refusal fetched before the purge is not remembered after it.
    backend.error, backend.gate = SecretNotFound("not yet"), asyncio.Event()
    read = asyncio.create_task(cache.get(OTHER))
    await _asked(backend)
    backend.error = None  # the secret is written, then the operator purges
    cache.controls.purge(prefix="secret/app/")
    backend.gate.set()
    with pytest.raises(SecretNotFound):
        await read
    backend.gate = None
    assert (await cache.get(OTHER)).outcome is Outcome.MISS

    # A purge of another path changes nothing for this one.
    backend.gate = asyncio.Event()
    read = asyncio.create_task(cache.get(CRITICAL))
    await _asked(backend)
    cache.controls.purge(path=APP)
    backend.gate.set()
    await read
    assert (await cache.get(CRITICAL)).outcome is Outcome.HIT


async def _asked(backend: FakeBackend) -> None:
    """Until the store has been asked (the fetch is under way, held at its gate)."""
    asked = len(backend.calls)
    for _ in range(100):
        await asyncio.sleep(0)
        if len(backend.calls) > asked:
            return
    raise AssertionError("the store was not asked")


async def test_a_rotation_after_a_purge_is_still_a_rotation() -> None:
    """The value was purged (or revoked), then the store moved on: the new version is a
    rotation from the version last seen, so the evidence keeps every step (v1 -> v2 -> v3)."""
    clock = Clock()
    backend = FakeBackend(clock)
    rotations: list[tuple[int | None, int | None, bool]] = []
    retired: list[tuple[int, int]] = []

    class Listen:
        def notify(self, fact: Fact) -> None:
            if isinstance(fact, Rotated):
                rotations.append((fact.old_version, fact.new.version, fact.old is not None))
            elif isinstance(fact, PreviousRetired):
                retired.append((fact.version, fact.current_version))

    cache = SecretCache(
        backend, POLICY, listener=Listen(), clock=lambda: clock.now, rng=lambda: 0.5
    )
    await cache.get(APP)
    backend.latest[APP] = 2
    clock.advance(REFRESH + 1)
    await cache.get(APP)  # held v1, the store has v2: a rotation with the old value known
    assert cache.controls.purge(path=APP) == 1
    backend.latest[APP] = 3
    await cache.get(APP)  # nothing held: still a rotation, from the version last seen
    backend.latest[APP] = 3
    clock.advance(REFRESH + 1)
    await cache.get(APP)  # the same version again: no rotation
    assert rotations == [(1, 2, True), (2, 3, False)]
    # no overlap in this class: each previous version is retired when the rotation is seen,
    # as /verify already calls it (one definition of "retired")
    assert retired == [(1, 2), (2, 3)]
    await cache.settle()
    await cache.close()


async def _preloaded_store_down(h: Harness) -> None:
    """APP (serve_stale) and CRITICAL (fail_closed) preloaded, then the store fails."""
    h.cache.preload([APP, CRITICAL], jitter=0.0)
    h.cache.run_due()
    await h.cache.settle()
    h.backend.error = outage()


async def _next_due(h: Harness) -> None:
    """Move to the next scheduled item and do it (and what it started)."""
    h.clock.advance(h.cache.run_due() or 0.0)
    h.cache.run_due()
    await h.cache.settle()


async def test_after_a_failed_refresh_stale_reads_wait_for_the_retry_not_the_store(
    h: Harness,
) -> None:
    await _preloaded_store_down(h)
    # the refreshes fail, and their retries back off, until both values are past their interval
    while h.clock.now < START + REFRESH + 1:
        await _next_due(h)
    assert (h.cache.run_due() or 0.0) > 0  # a retry still to come
    h.backend.error = None  # the store is back, before the retries come due
    asked = len(h.backend.calls)
    # serve_stale: the value held, as during the outage; the read does not ask the store
    lookup = await h.cache.get(APP)
    assert lookup.outcome is Outcome.STALE
    assert len(h.backend.calls) == asked
    # fail_closed never gets an unconfirmed value: it asks
    assert (await h.cache.get(CRITICAL)).outcome is Outcome.MISS
    assert len(h.backend.calls) == asked + 1
    # its retry comes (the background's own, spread): fresh again
    for _ in range(5):
        await _next_due(h)
    assert (APP, None) in h.backend.calls[asked + 1 :]
    assert (await h.cache.get(APP)).outcome is Outcome.HIT


async def test_a_long_outage_stretches_retries_of_servable_values_to_the_refresh_interval(
    h: Harness,
) -> None:
    await _preloaded_store_down(h)
    attempts: dict[str, list[float]] = {APP: [], CRITICAL: []}
    last: dict[str, float] = {}
    for _ in range(40):
        h.clock.advance(h.cache.run_due() or 0.0)
        before = len(h.backend.calls)
        h.cache.run_due()
        await h.cache.settle()
        for path, _version in h.backend.calls[before:]:
            if path in last:
                attempts[path].append(h.clock.now - last[path])
            last[path] = h.clock.now
    # full jitter with rng 0.5 halves each delay: the serve_stale value's retries grow past the
    # backoff cap (30 s) to its refresh_interval (60 s); the fail_closed one's stop at the cap
    assert max(attempts[APP]) == pytest.approx(0.5 * REFRESH)
    assert max(attempts[CRITICAL]) == pytest.approx(0.5 * 30.0)
