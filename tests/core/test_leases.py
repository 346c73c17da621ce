"""Leased values in the cache, pure: served until the lease's usable end or the class's
max_cache_age, whichever is first; never after, not even during an outage (lease_expired)."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.core.cache import Outcome, SecretCache
from sidecar.core.leases import ended_by_lease, leased_class, usable_for
from sidecar.core.policy import OnOutage, Policy, Rule
from sidecar.store.interface import Secret, StoreUnavailable
from tests.core.test_cache import WALL_OFFSET, Clock, make_class

PATH = "database/creds/app"


def test_a_lease_is_usable_until_a_margin_before_its_end():
    assert usable_for(6) == pytest.approx(5.4)  # 10 %
    assert usable_for(3600) == 3570  # at most 30 s early
    standard = make_class("standard", OnOutage.SERVE_STALE)  # refresh 60 s, max age 600 s
    short = leased_class(standard, 6)
    assert short.max_cache_age == pytest.approx(5.4)  # never served after
    assert short.refresh_interval == pytest.approx(5.4 * 0.85)  # renewal due (not the class's)
    assert ended_by_lease(short, 6)
    long = leased_class(standard, 86_400)  # a day-long lease: the class's max_cache_age wins
    assert long.max_cache_age == 600 and long.refresh_interval == 510
    assert not ended_by_lease(long, 86_400)


class LeasingBackend:
    """Each read is a new credential with a new lease, as the database engine does."""

    token_digest = "0123456789abcdef"  # the store token the sidecar holds (a digest)

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.reads = 0
        self.down = False
        self.renewals: list[str] = []
        self.grant = 10
        self.duration = 10
        self.revoked: list[str] = []

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        if self.down:
            raise StoreUnavailable("connection_failed")
        self.reads += 1
        return Secret(
            path=path,
            data={"username": f"v-{self.reads}", "password": f"pw-{self.reads}"},
            version=None,
            kv_version=0,
            lease_duration=self.duration,
            lease_id=f"{path}/lease{self.reads}",
            renewable=True,
        )

    async def version_info(self, path: str) -> None:
        return None

    async def revoke_lease(self, lease_id: str) -> None:
        self.revoked.append(lease_id)

    async def renew(self, lease_id: str, increment: int) -> int:
        if self.down:
            raise StoreUnavailable("connection_failed")
        self.renewals.append(lease_id)
        return min(increment, self.grant)  # less than asked: the lease's max_ttl is near


@pytest.fixture
async def leasing() -> tuple[SecretCache, LeasingBackend, Clock]:
    clock = Clock()
    backend = LeasingBackend(clock)
    policy = Policy([Rule("database/**", make_class("database", OnOutage.SERVE_STALE))])
    cache = SecretCache(
        backend,  # type: ignore[arg-type]
        policy,
        clock=lambda: clock.now,
        wall=lambda: WALL_OFFSET + clock.now,
        rng=lambda: 0.5,
    )
    yield cache, backend, clock
    await cache.settle()
    await cache.close()


async def test_one_lease_is_shared_renewed_when_due_and_replaced_when_not_renewed(leasing):
    cache, backend, clock = leasing
    first = await cache.get(PATH)
    assert first.outcome is Outcome.MISS and first.entry.secret.lease_id == f"{PATH}/lease1"
    clock.advance(7.5)  # the class says refresh every 60 s; the lease (usable 9 s) rules
    assert (await cache.get(PATH)).entry is first.entry
    assert backend.reads == 1 and backend.renewals == []
    clock.advance(0.5)  # past 85 % of the usable time: the read renews the lease first
    renewed = await cache.get(PATH)
    assert renewed.entry.secret.lease_id == f"{PATH}/lease1" and not renewed.stale
    assert backend.renewals == [f"{PATH}/lease1"] and backend.reads == 1
    backend.grant = 4  # the store grants less than asked: near max_ttl
    clock.advance(8)
    replaced = await cache.get(PATH)
    assert replaced.entry.secret.lease_id == f"{PATH}/lease2" and backend.reads == 2


async def test_during_an_outage_a_lease_is_served_until_its_usable_end_then_lease_expired(
    leasing,
):
    cache, backend, clock = leasing
    first = await cache.get(PATH)
    backend.down = True
    clock.advance(7.5)
    held = await cache.get(PATH)
    assert held.entry is first.entry and not held.stale  # renewal not due yet
    clock.advance(1.0)  # due, and the store cannot renew it: served stale (serve_stale)
    held = await cache.get(PATH)
    assert held.entry is first.entry and held.stale
    clock.advance(0.6)  # past the usable end (9 s of 10)
    with pytest.raises(StoreUnavailable) as refused:
        await cache.get(PATH)
    assert refused.value.reason == "lease_expired"
    with pytest.raises(StoreUnavailable) as again:  # and stays refused: never the dead one
        await cache.get(PATH)
    assert again.value.reason == "lease_expired"


async def test_a_fail_closed_lease_is_refused_once_its_renewal_is_due_and_impossible():
    clock = Clock()
    backend = LeasingBackend(clock)
    cache = SecretCache(
        backend,  # type: ignore[arg-type]
        Policy([Rule("database/**", make_class("signing", OnOutage.FAIL_CLOSED))]),
        clock=lambda: clock.now,
        wall=lambda: WALL_OFFSET + clock.now,
        rng=lambda: 0.5,
    )
    try:
        await cache.get(PATH)
        backend.down = True
        clock.advance(7.5)
        assert not (await cache.get(PATH)).stale  # within its renewal interval: as for KV
        clock.advance(1.0)
        with pytest.raises(StoreUnavailable) as refused:
            await cache.get(PATH)
        assert refused.value.reason == "fail_closed"
    finally:
        await cache.settle()
        await cache.close()


async def test_a_lease_in_use_is_renewed_then_replaced_when_its_max_ttl_is_near(leasing):
    cache, backend, clock = leasing
    first = await cache.get(PATH)
    clock.advance(7.5)  # refresh-ahead: 75-90 % of the usable 9 s (the fake rng draws 82.5 %)
    await cache.get(PATH)  # still read: worth keeping
    cache.run_due()
    await cache.settle()
    assert backend.renewals == [f"{PATH}/lease1"] and backend.reads == 1
    renewed = await cache.get(PATH)
    assert renewed.entry.secret.lease_id == f"{PATH}/lease1"  # the same credential...
    assert renewed.entry.secret.data == first.entry.secret.data
    assert renewed.entry.confirmed_at == clock.now  # ...with a lease counted from the renewal
    backend.grant = 4  # the store grants less than asked: near max_ttl
    clock.advance(7.5)
    await cache.get(PATH)
    cache.run_due()
    await cache.settle()
    assert backend.reads == 2  # a new credential, issued while the old one still works
    assert (await cache.get(PATH)).entry.secret.lease_id == f"{PATH}/lease2"


async def test_a_replaced_credential_is_served_as_previous_during_the_overlap_then_revoked():
    clock = Clock()
    backend = LeasingBackend(clock)
    backend.duration, backend.grant = 100, 40  # usable 90 s; renewals granted short
    overlapping = dataclasses.replace(make_class("database", OnOutage.SERVE_STALE), overlap=5.0)
    cache = SecretCache(
        backend,  # type: ignore[arg-type]
        Policy([Rule("database/**", overlapping)]),
        clock=lambda: clock.now,
        wall=lambda: WALL_OFFSET + clock.now,
        rng=lambda: 0.5,
    )
    try:
        first = await cache.get(PATH)
        assert cache.previous_lease(PATH) is None  # nothing replaced yet
        clock.advance(75)  # refresh-ahead (82.5 % of 90 s): renewal granted short: a new one
        await cache.get(PATH)
        cache.run_due()
        await cache.settle()
        assert (await cache.get(PATH)).entry.secret.lease_id == f"{PATH}/lease2"
        clock.advance(1)
        previous = cache.previous_lease(PATH)
        assert previous is not None and previous.entry is first.entry  # during the overlap
        clock.advance(5)
        assert cache.previous_lease(PATH) is None  # the overlap is over
        await cache.retire_leases()
        assert backend.revoked == []  # read 5 s ago: not quiet yet
        clock.advance(5)
        await cache.retire_leases()
        assert backend.revoked == [f"{PATH}/lease1"]  # quiet, and its lease still running
        await cache.retire_leases()
        assert backend.revoked == [f"{PATH}/lease1"]  # once
    finally:
        await cache.settle()
        await cache.close()


async def test_a_credential_restored_from_the_snapshot_is_kept_only_within_its_lease(leasing):
    cache, backend, clock = leasing
    leased = await backend.read(PATH, None)  # lease 10 s: usable 9 s
    wall = WALL_OFFSET + clock.now
    restored, discarded = cache.restore([((PATH, None), leased, wall - 8.5)], confirm_within=1)
    assert (restored, discarded) == (1, 0)
    lookup = await cache.get(PATH)
    assert lookup.stale and lookup.entry.secret.lease_id == leased.lease_id  # reused
    cache.controls.purge()
    again, gone = cache.restore([((PATH, None), leased, wall - 9.1)], confirm_within=1)
    assert (again, gone) == (0, 1)  # past its usable end: discarded, never served


async def test_a_new_store_token_drops_credentials_made_with_the_old_one(leasing):
    cache, backend, clock = leasing
    first = await cache.get(PATH)
    assert first.entry.issued_by == backend.token_digest
    cache.token_changed()  # the same token again (a restart with the same token file)
    assert (await cache.get(PATH)).entry is first.entry
    backend.token_digest = "fedcba9876543210"  # a new login: the old token's leases end with it
    cache.token_changed()
    replaced = await cache.get(PATH)
    assert replaced.outcome is Outcome.MISS and replaced.entry.secret.lease_id == f"{PATH}/lease2"
    assert replaced.entry.issued_by == "fedcba9876543210"
    backend.token_digest = "0000000000000000"  # changed again, found at renewal time
    clock.advance(8)
    again = await cache.get(PATH)
    assert again.entry.secret.lease_id == f"{PATH}/lease3" and backend.renewals == []
