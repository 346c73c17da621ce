"""The secret cache: the read path. A read is answered from memory while fresh, else from the
store (coalesced with the other reads of the same key), else, during an outage, as the class
allows (``outage.py``). Its parts: the values held (``entries.py``), fetching (``fetch.py``),
background work (``upkeep.py``), rotation bookkeeping (``rotation.py``), the revocation list
(``revocations.py``) and the negative cache (``refusals.py``).

A read returns a ``Lookup`` (which entry, how it was obtained, how old it is), which the HTTP
layer turns into headers; what happens along the way is told as facts (``facts.py``), which
become metrics and audit records. It never imports aiohttp or hvac, and takes its clocks as
arguments, so a fake clock drives it in tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator

from sidecar.core.controls import Controls
from sidecar.core.entries import CacheKey, Entry, EntryTable, Lookup, Outcome, PathNotAllowed
from sidecar.core.facts import (
    EntriesChanged,
    FirstServed,
    LeaseEvent,
    Listener,
    LookedUp,
    Quiet,
    StaleServed,
    Unavailable,
)
from sidecar.core.fetch import Fetcher
from sidecar.core.leases import LeaseRetirer, PreviousLeases
from sidecar.core.outage import expiry_reason, without_store
from sidecar.core.policy import Freshness, Policy, SecretClass
from sidecar.core.priority import Urgency, urgent_as
from sidecar.core.refusals import Refusals
from sidecar.core.revocations import Revocations, SecretRevoked
from sidecar.core.rotation import Rotations
from sidecar.core.upkeep import Upkeep
from sidecar.core.warm import Restored, exportable, restore, restore_verdict
from sidecar.store.interface import Backend, Deferred, StoreError, StoreUnavailable

log = logging.getLogger("sidecar.cache")

__all__ = [
    "CacheKey",
    "Entry",
    "Lookup",
    "Outcome",
    "PathNotAllowed",
    "SecretCache",
    "SecretRevoked",
    "restore_verdict",
]


RETRY_PENDING = StoreUnavailable(
    "retry_pending", detail="the store failed this secret lately; its retry is scheduled"
)


class SecretCache:
    """The read path behind both HTTP APIs: answers from memory while fresh, else from the store
    (one fetch per key), else during an outage as the class allows. Also holds the emergency
    controls (purge, revocations, incident windows), warm start and the background upkeep."""

    def __init__(
        self,
        backend: Backend,
        policy: Policy,
        *,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        refresh_ahead: tuple[float, float] = (0.75, 0.9),
        backoff: tuple[float, float] = (0.5, 30.0),
        spread_load: bool = True,
    ) -> None:
        """``refresh_ahead``: a read secret is refreshed at this fraction of its refresh
        interval, drawn uniformly in the range, so a fleet does not refresh in lockstep.
        ``backoff``: (base, cap) of the full-jitter delay before retrying a failed refresh.
        ``spread_load``: spread a fleet's store requests after a mass restart or an outage
        (``Upkeep``: a first refresh drawn over a whole cycle; a long outage's retries over a
        refresh interval, reads of stale values waiting for them); off only to measure what
        that spares the store (the fleet simulator)."""
        self._backend = backend
        self._policy = policy
        self._listener: Listener = listener or Quiet()
        self._clock = clock
        self._wall = wall
        self.wall = wall  # what "now" is to the values held (renderers compare overlaps)
        self._rng = rng
        self._entries = EntryTable(lambda count: self._listener.notify(EntriesChanged(count)))
        self._held = self._entries.by_key  # the hot path's one dict lookup
        self.hits: dict[str, int] = {}  # class -> hits, counted in place (see _looked_up)
        self._rotations = Rotations(self._listener, clock, wall)
        self._revoked = Revocations()
        self._refusals = Refusals(clock)
        self._upkeep = Upkeep(
            self._entries,
            self._rotations,
            policy,
            lambda key: self._fetcher.start(key),  # noqa: PLW0108 - made just below
            self._listener,
            clock=clock,
            rng=rng,
            refresh_ahead=refresh_ahead,
            backoff=backoff,
            spread_load=spread_load,
        )
        self._previous_leases = PreviousLeases()  # replaced credentials, while they retire
        self._retirer = LeaseRetirer(self._previous_leases, backend, self._listener, clock)
        self._expiry_told: set[CacheKey] = set()  # leased keys whose end was told (audit)
        self._fetcher = Fetcher(
            backend,
            self._entries,
            self._rotations,
            self._revoked,
            self._refusals,
            self._upkeep,
            self._listener,
            classify=self.classify,
            clock=clock,
            wall=wall,
            lag_hold=backoff,
            previous=self._previous_leases,
        )
        # purge, revocations and class windows: incident controls, not the read path
        self.controls = Controls(
            self._entries,
            policy,
            self._refusals,
            self._revoked,
            self._upkeep,
            clock,
            previous_leases=self._previous_leases,
        )

    # -- what is held ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def generation(self) -> int:
        """Bumped on every change of the values held (an unchanged cache is not written again)."""
        return self._entries.generation

    def entries(self) -> Iterator[tuple[CacheKey, Entry]]:
        """Every (key, entry) held, from a copy: safe to go through while the cache changes."""
        return iter(self._entries.items())

    def allows(self, path: str) -> bool:
        """Does a rule classify ``path`` (may it be served at all)? No store request."""
        return self._policy.classify(path) is not None

    def classify(self, path: str) -> SecretClass:
        """The class governing ``path``; raises PathNotAllowed if no rule does (never served)."""
        secret_class = self._policy.classify(path)
        if secret_class is None:
            raise PathNotAllowed(path)
        return secret_class

    def class_named(self, name: str) -> SecretClass | None:
        """The class now in force under ``name`` (None: no such class), for incident windows."""
        return self._policy.class_named(name)

    def servable(self, path: str, version: int | None = None) -> bool:
        """Could a read of this key be answered now, even if the store is down?"""
        entry = self._entries.get((path, version))
        return entry is not None and entry.servable(self._clock() - entry.confirmed_at)

    def held(self) -> list[tuple[CacheKey, Entry, float]]:
        """Every value held with its key and age (seconds since the store confirmed it)."""
        now = self._clock()
        return [(key, entry, now - entry.confirmed_at) for key, entry in self._entries.items()]

    def ages(self) -> Iterator[tuple[SecretClass, float]]:
        """Each cached value's class and age (seconds since the store confirmed it)."""
        now = self._clock()
        for entry in self._entries.values():
            yield entry.secret_class, now - entry.confirmed_at

    def kept_fresh(self) -> Iterator[SecretClass]:
        """The class of each value refresh-ahead keeps fresh now (preloaded, awaited, or read
        within its refresh interval): what this sidecar asks of the store in steady state."""
        now = self._clock()
        for key, entry in self._entries.items():
            if key[1] is None and self._upkeep.wanted(key, now):
                yield entry.secret_class

    def leases(self) -> Iterator[tuple[SecretClass, float]]:
        """Each leased credential's class and seconds until its lease ends in the store."""
        now = self._clock()
        for entry in self._entries.values():
            if entry.secret.lease_id is not None:
                yield entry.secret_class, entry.confirmed_at + entry.secret.lease_duration - now

    # -- the read path ---------------------------------------------------------------------

    def hit(self, path: str) -> tuple[Entry, float] | None:
        """The hot path: the latest value of ``path`` if it is fresh and nothing else needs
        doing (already served once, not provisional, no revocations to check). Synchronous:
        no coroutine, no classification, just a dict lookup and a clock read. Anything else
        (None) takes ``get``."""
        entry = self._held.get((path, None))
        if entry is None or entry.provisional or not entry.served or self._revoked.active:
            return None
        now = self._clock()
        age = now - entry.confirmed_at
        if age >= entry.secret_class.refresh_interval:
            return None
        entry.last_read = now
        hits = self.hits
        name = entry.secret_class.name
        hits[name] = hits.get(name, 0) + 1
        return entry, age

    async def get(self, path: str, version: int | None = None, *, serve: bool = True) -> Lookup:
        """Answer a read of ``path`` (``version`` None: the latest): from memory while fresh, else
        from the store (coalesced with other reads of the key), else as the class allows during an
        outage. Raises PathNotAllowed, SecretRevoked, or the StoreError that decided the read.
        ``serve`` False: a look at the value, not the app reading it (finding the previous
        version's number), so it does not count as the app adopting a new version."""
        secret_class = self.classify(path)
        if self._revoked.active:
            self._revoked.check(path, version)
        key = (path, version)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_read = now
            age = now - entry.confirmed_at
            freshness = entry.secret_class.freshness(age)
            if freshness is Freshness.FRESH and not entry.provisional:
                self._looked_up(secret_class, Outcome.HIT)
                if serve and not entry.served:
                    self._first_served(key, entry)
                return Lookup(entry, Outcome.HIT, age)
            if freshness is Freshness.EXPIRED:
                self._entries.expire(key, entry, expiry_reason(entry))
                entry = None
            elif entry.provisional and entry.secret_class.may_serve_stale(age):
                # Restored from a snapshot: served at once, marked stale, while its
                # confirmation with the store is due in the background (no read waits on it).
                self._looked_up(secret_class, Outcome.STALE)
                self._listener.notify(StaleServed(path, entry.secret_class, entry, age))
                return self._served(key, Lookup(entry, Outcome.STALE, age), serve)
        else:
            refused = self._refusals.recall(key, now)
            if refused is not None:
                self._looked_up(secret_class, Outcome.NEGATIVE)
                raise refused
        lookup = await self._ask(key, entry, secret_class, now)
        return self._served(key, lookup, serve)

    async def _ask(
        self, key: CacheKey, entry: Entry | None, secret_class: SecretClass, now: float
    ) -> Lookup:
        """A read the memory cannot answer: the store's answer (coalesced), else what the class
        allows without it. ``entry``: the value held, if any, past its refresh interval."""
        # A value the class may still serve stale need not wait for the request budget: when
        # no token is spare the read gets it (within max_cache_age) and the refresh goes on.
        stale_ok = entry is not None and entry.secret_class.may_serve_stale(
            now - entry.confirmed_at
        )
        if stale_ok and self._upkeep.retrying(key, now):
            # The store failed this key lately and its retry is scheduled (after an outage,
            # spread over up to a refresh interval): the read gets the value held, as during
            # the outage, rather than every read jumping that queue when the store is back.
            return self._on_unavailable(key, entry, secret_class, RETRY_PENDING, Outcome.MISS)
        task, coalesced = self._start(key, Urgency.STALE_OK if stale_ok else Urgency.FOREGROUND)
        outcome = Outcome.COALESCED if coalesced else Outcome.MISS
        try:
            try:
                # shielded: this caller giving up must not cancel a fetch others wait for
                fresh = await asyncio.shield(task)
            except Deferred:
                if stale_ok or not coalesced:
                    raise
                # it joined a background refresh the budget put off: ask, in the foreground
                task, _ = self._start(key, Urgency.FOREGROUND)
                fresh = await asyncio.shield(task)
        except Deferred as exc:
            self._upkeep.behind(key[0], secret_class, "served_stale")
            lookup = self._on_unavailable(key, entry, secret_class, exc, outcome)
        except StoreUnavailable as exc:
            lookup = self._on_unavailable(key, entry, secret_class, exc, outcome)
        except StoreError:
            self._looked_up(secret_class, outcome)
            raise
        else:
            fresh.last_read = self._clock()
            self._looked_up(secret_class, outcome)
            self._expiry_told.discard(key)
            lookup = Lookup(fresh, outcome, max(0.0, self._clock() - fresh.confirmed_at))
        return lookup

    def _start(self, key: CacheKey, level: Urgency) -> tuple[asyncio.Task[Entry], bool]:
        """The fetch of ``key`` for a read (its store requests carry ``level``), and whether it
        joined one under way (then it keeps that one's)."""
        with urgent_as(level):
            return self._fetcher.start(key)

    def _served(self, key: CacheKey, lookup: Lookup, serve: bool = True) -> Lookup:
        if self._revoked.active:
            self._revoked.check(key[0], lookup.entry.secret.version)
        if serve and not lookup.entry.served:
            self._first_served(key, lookup.entry)
        return lookup

    def _looked_up(self, secret_class: SecretClass, outcome: Outcome) -> None:
        # Hits are counted in place, a plain int read at scrape time (a fact per hit on the
        # hot path would cost as much as the hit); listeners hear of every outcome here.
        if outcome is Outcome.HIT:
            self.hits[secret_class.name] = self.hits.get(secret_class.name, 0) + 1
        self._listener.notify(LookedUp(secret_class, outcome))

    def _stale_served(self, entry: Entry, age: float) -> None:
        self._listener.notify(StaleServed(entry.secret.path, entry.secret_class, entry, age))

    def _first_served(self, key: CacheKey, entry: Entry) -> None:
        entry.served = True
        if key[1] is None:
            since = self._rotations.since_rotation(key[0])
            self._listener.notify(FirstServed(key[0], entry.secret_class, entry.secret, since))

    def _on_unavailable(
        self,
        key: CacheKey,
        entry: Entry | None,
        secret_class: SecretClass,
        exc: StoreUnavailable,
        outcome: Outcome,
    ) -> Lookup:
        """The store could not answer. Serve what the class allows, or say why not."""
        try:
            lookup = without_store(
                self._entries, key, entry, secret_class, exc, self._clock(), self._stale_served
            )
        except StoreUnavailable as refused:
            self._looked_up(secret_class, outcome)
            self._listener.notify(Unavailable(secret_class, refused.reason))
            if refused.reason == "lease_expired" and key not in self._expiry_told:
                # once per credential: its lease ended and the store could not replace it
                self._expiry_told.add(key)
                kid = self._entries.ended_kid(key) or key[0]
                self._listener.notify(LeaseEvent(key[0], secret_class, "expired", kid, 0))
            raise
        self._looked_up(secret_class, lookup.outcome)
        return lookup

    # -- rotation: blocking queries, overlap ----------------------------------------------

    async def wait_newer(self, path: str, newer_than: int, wait: float) -> Lookup | None:
        """Wait until the latest version of ``path`` is newer than ``newer_than``; None when
        ``wait`` seconds pass first. Waiters keep the secret refreshed (one store poll per
        refresh interval, however many wait)."""
        key: CacheKey = (path, None)
        deadline = self._clock() + wait
        with self._rotations.waiting(key):
            while True:
                entry = self._entries.get(key)
                if entry is not None and (entry.secret.version or 0) > newer_than:
                    if self._revoked.active:
                        self._revoked.check(path, entry.secret.version)
                    entry.last_read = self._clock()
                    if not entry.served:
                        self._first_served(key, entry)
                    return Lookup(entry, Outcome.HIT, self._clock() - entry.confirmed_at)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                if entry is None:
                    self._upkeep.fetch_soon(key)
                changed = self._rotations.changed(path)
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the event fires, and a cancelled waiter must stop.
                try:
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                except TimeoutError:
                    pass

    def overlap(self, path: str) -> tuple[int, float] | None:
        """(current version, wall time the previous one retires) while an overlap is open."""
        return self._rotations.overlap(path)

    def open_rotations(self) -> list[tuple[SecretClass, str]]:
        """Each rotation not finished, by state: ``awaiting_adoption`` (the app has not read the
        new version yet) or ``overlap_open`` (it has; the previous version is still served)."""
        found = []
        for (path, version), entry in self._entries.items():
            if version is not None or self._rotations.since_rotation(path) is None:
                continue
            if not entry.served:
                found.append((entry.secret_class, "awaiting_adoption"))
            elif self._rotations.overlap(path) is not None:
                found.append((entry.secret_class, "overlap_open"))
        return found

    def overlaps_open(self) -> int:
        """How many paths still serve their previous version after a rotation (metrics, /admin)."""
        return self._rotations.overlaps_open()

    # -- warm start and preload ----------------------------------------------------------

    def restore(self, items: Iterable[Restored], confirm_within: float = 0.0) -> tuple[int, int]:
        """Warm the cache from a snapshot (``warm.py``); returns (restored, discarded)."""
        return restore(
            items,
            self._policy,
            self._entries,
            self._upkeep,
            confirm_within=confirm_within,
            clock=self._clock,
            wall=self._wall,
        )

    def export_all(self) -> list[tuple[CacheKey, Entry]]:
        """Every value held (a copy), whatever its class: for controls that act on all."""
        return self._entries.items()

    def export(self) -> list[tuple[CacheKey, Entry]]:
        """What may be written to disk: never values of fail_closed classes."""
        return exportable(self._entries)

    def preload(self, paths: Iterable[str], jitter: float) -> None:
        """Fetch these (latest versions) soon, each at a random moment within ``jitter``
        seconds so a fleet restarting together does not stampede, and keep them fresh."""
        self._upkeep.preload(paths, jitter)

    def preloaded(self) -> list[str]:
        """The preloaded paths (kept fresh whether read or not; /readyz waits for them)."""
        return self._upkeep.preloaded()

    # -- background ------------------------------------------------------------------------

    def run_due(self) -> float | None:
        """Act on everything due by now; return seconds until the next item (None: nothing)."""
        return self._upkeep.run_due()

    async def run_refresher(self, idle: float = 60.0) -> None:
        """Forever: wake when something is due, refresh what was read recently, expire the old;
        and revoke the leases of replaced credentials once they have retired."""
        async with asyncio.TaskGroup() as both:  # one failing ends (and cancels) the other
            both.create_task(self._upkeep.run(idle))
            both.create_task(self._retirer.run_forever())

    def token_changed(self) -> None:
        """The sidecar holds a different store token: leased credentials made with another one
        end with that token (the store revokes its leases), so each is dropped now and the
        next read gets a new one. Those made with this token (a restart with the same token
        file) are kept."""
        current = self._backend.token_digest
        for key, entry in self._entries.items():
            if entry.secret.lease_id is not None and entry.issued_by != current:
                self._entries.drop(key)
                log.info(
                    "leased credential made with another store token dropped",
                    extra={"path": key[0], "class": entry.secret_class.name},
                )

    def previous_lease(self, path: str) -> Lookup | None:
        """The credential ``path`` had before its current one, while its overlap lasts (a read
        of it, for ``?version=previous``); None when there is none to serve."""
        entry = self._previous_leases.previous(path, self._clock())
        if entry is None:
            return None
        return Lookup(entry, Outcome.HIT, max(0.0, self._clock() - entry.confirmed_at))

    async def retire_leases(self) -> float | None:
        """Revoke the leases of replaced credentials that have retired (``LeaseRetirer``);
        seconds until the next may be due."""
        return await self._retirer.run_once()

    def time_moved(self) -> None:
        """The clock jumped (a test advanced it): look at the schedule again now."""
        self._upkeep.schedule.wakeup.set()

    async def settle(self) -> None:
        """Wait for background refreshes under way (tests, shutdown)."""
        await self._upkeep.settle()

    async def close(self) -> None:
        """Stop fetching: background refreshes end and the store is no longer asked."""
        await self._fetcher.close()
