"""The secret cache: entries, freshness by class, coalesced fetches, refresh-ahead, expiry.

It reports facts (``Lookup``: which entry, how it was obtained, how old it is); the HTTP layer
turns them into headers, and the observer into metrics. It never imports aiohttp or hvac, and
takes its clocks as arguments so its behaviour can be driven by a fake clock in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sidecar.core.backoff import full_jitter
from sidecar.core.coalesce import Coalescer
from sidecar.core.loglimit import LogLimiter
from sidecar.core.policy import Freshness, OnOutage, Policy, SecretClass
from sidecar.store.interface import (
    Backend,
    ErrorKind,
    Secret,
    SecretForbidden,
    SecretNotFound,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("sidecar.cache")

MAX_TOMBSTONES = 10_000  # keys remembered as "aged out", to say why a read fails (no values)
MAX_REFUSALS = 10_000  # keys remembered as "not found"/"forbidden" (negative cache), bounded

CacheKey = tuple[str, int | None]  # (path, version); version None is "the latest"


class Outcome(enum.StrEnum):
    HIT = "hit"  # fresh value from memory
    MISS = "miss"  # this request fetched from the store
    COALESCED = "coalesced"  # this request waited for a fetch already under way
    STALE = "stale"  # the store could not confirm; an older value within limits was served
    NEGATIVE = "negative"  # the store said "not found" or "forbidden" moments ago: said again


@dataclass(slots=True, eq=False, weakref_slot=True)
class Entry:
    secret: Secret
    secret_class: SecretClass
    confirmed_at: float  # monotonic time the store last confirmed this value
    fetched_at: float  # the same moment on the wall clock, for people
    last_read: float
    provisional: bool = False  # restored from a snapshot: served stale until the store confirms
    served: bool = False  # this version was served at least once (carried across refreshes)
    overlap_until: float = 0.0  # wall time the previous version retires (0: no overlap open)
    view: object | None = field(default=None)  # presentation memo, owned by the HTTP layer
    vault_view: object | None = field(default=None)  # the same, for the Vault-compatible API
    serial: int = 0  # the schedule refers to entries by key and serial, never by reference
    expiry_scheduled: bool = False

    def servable(self, age: float) -> bool:
        """May this value answer a read now, if the store could not be asked?"""
        if age < self.secret_class.refresh_interval and not self.provisional:
            return True
        return self.secret_class.may_serve_stale(age)


@dataclass(frozen=True, slots=True)
class Lookup:
    entry: Entry
    outcome: Outcome
    age: float  # seconds since the store last confirmed the value

    @property
    def stale(self) -> bool:
        return self.outcome is Outcome.STALE


class PathNotAllowed(Exception):
    """No rule in the configuration classifies this path, so the sidecar does not serve it."""


class SecretRevoked(Exception):
    """The path (or this version of it) is on the revocation list."""

    def __init__(self, path: str, version: int | None, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.version = version
        self.reason = reason


class CacheObserver:
    """What the cache reports as it works. Every hook does nothing here; metrics and the audit
    trail override the ones they need, ``Fanout`` calls several."""

    def fetch_finished(
        self, path: str, secret_class: SecretClass, seconds: float, error: StoreError | None
    ) -> None:
        pass

    def lookup(self, secret_class: SecretClass, outcome: Outcome) -> None:
        pass

    def unavailable(self, secret_class: SecretClass, reason: str) -> None:
        pass

    def entries_changed(self, count: int) -> None:
        pass

    def stale_served(self, path: str, secret_class: SecretClass, entry: Entry, age: float) -> None:
        pass

    def rotated(self, path: str, secret_class: SecretClass, old: Secret, new: Secret) -> None:
        pass

    def first_served(
        self, path: str, secret_class: SecretClass, secret: Secret, since_rotation: float | None
    ) -> None:
        pass

    def previous_retired(
        self,
        path: str,
        secret_class: SecretClass,
        version: int,
        current_version: int,
        last_served: float | None,
    ) -> None:
        pass


NullObserver = CacheObserver


class Fanout(CacheObserver):
    def __init__(self, *observers: CacheObserver) -> None:
        self._observers = observers

    def fetch_finished(
        self, path: str, secret_class: SecretClass, seconds: float, error: StoreError | None
    ) -> None:
        for o in self._observers:
            o.fetch_finished(path, secret_class, seconds, error)

    def lookup(self, secret_class: SecretClass, outcome: Outcome) -> None:
        for o in self._observers:
            o.lookup(secret_class, outcome)

    def unavailable(self, secret_class: SecretClass, reason: str) -> None:
        for o in self._observers:
            o.unavailable(secret_class, reason)

    def entries_changed(self, count: int) -> None:
        for o in self._observers:
            o.entries_changed(count)

    def stale_served(self, path: str, secret_class: SecretClass, entry: Entry, age: float) -> None:
        for o in self._observers:
            o.stale_served(path, secret_class, entry, age)

    def rotated(self, path: str, secret_class: SecretClass, old: Secret, new: Secret) -> None:
        for o in self._observers:
            o.rotated(path, secret_class, old, new)

    def first_served(
        self, path: str, secret_class: SecretClass, secret: Secret, since_rotation: float | None
    ) -> None:
        for o in self._observers:
            o.first_served(path, secret_class, secret, since_rotation)

    def previous_retired(
        self,
        path: str,
        secret_class: SecretClass,
        version: int,
        current_version: int,
        last_served: float | None,
    ) -> None:
        for o in self._observers:
            o.previous_retired(path, secret_class, version, current_version, last_served)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_store_time(text: str | None) -> float | None:
    """The store's RFC 3339 times (nanoseconds, ``Z``) as epoch seconds; None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def restore_verdict(policy: Policy, path: str, age: float) -> tuple[SecretClass | None, str | None]:
    """May a value of this age, restored from disk, be used? (class, None) or (class, reason)."""
    secret_class = policy.classify(path)
    if secret_class is None:
        return None, "no rule classifies this path any more"
    if secret_class.on_outage is OnOutage.FAIL_CLOSED:
        return secret_class, "its class is fail_closed (never restored from disk)"
    if age >= secret_class.max_cache_age:
        return secret_class, "older than max_cache_age"
    return secret_class, None


def _covers(path: str | None, prefix: str | None, candidate: str) -> bool:
    """Does a purge of ``path``, of ``prefix``, or of everything (neither) cover
    ``candidate``?"""
    if path is None and prefix is None:
        return True
    return candidate == path or (prefix is not None and candidate.startswith(prefix))


class _Due(enum.Enum):
    REFRESH = "refresh"  # a value nears the end of its refresh interval
    EXPIRE = "expire"  # a value reaches max_cache_age
    FETCH = "fetch"  # a preload, or a retry after a failed refresh (no entry required)
    RETIRE = "retire"  # the overlap of a rotation ends: the previous version retires
    CONFIRM = "confirm"  # a value restored from a snapshot is checked with the store


class SecretCache:
    def __init__(
        self,
        backend: Backend,
        policy: Policy,
        *,
        observer: CacheObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        refresh_ahead: tuple[float, float] = (0.75, 0.9),
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        """``refresh_ahead``: a read secret is refreshed at this fraction of its refresh
        interval, drawn uniformly in the range, so a fleet does not refresh in lockstep.
        ``backoff``: (base, cap) of the full-jitter delay before retrying a failed refresh."""
        self._backend = backend
        self._policy = policy
        self._observer: CacheObserver = observer or NullObserver()
        self._clock = clock
        self._wall = wall
        self._rng = rng
        self._ahead = refresh_ahead
        self._backoff = backoff
        self._entries: dict[CacheKey, Entry] = {}
        self.generation = 0  # bumped on every change of the entries, to skip idle snapshots
        self.lookups: dict[tuple[Outcome, str], int] = {}  # (outcome, class) -> reads, but:
        self.hits: dict[str, int] = {}  # class -> hits, apart: the hot path's key is cheaper
        self._pinned: set[CacheKey] = set()  # preloaded: kept fresh whether read or not
        self._attempts: dict[CacheKey, int] = {}  # consecutive failed background fetches
        self._expired: dict[CacheKey, None] = {}  # tombstones: keys dropped for age, no values
        self._coalescer: Coalescer[CacheKey, Entry] = Coalescer()
        # (due, seq, what, key, entry serial or 0): no references to entries, so a replaced,
        # purged or revoked value is gone from memory at once, not when its item comes due.
        self._schedule: list[tuple[float, int, _Due, CacheKey, int]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._background: set[asyncio.Task[Entry]] = set()
        self._rotated_at: dict[str, float] = {}  # path -> wall time the last rotation was seen
        self._overlaps: dict[str, tuple[int, float]] = {}  # path -> (current version, until)
        self._previous_served: dict[str, float] = {}  # path -> wall time previous last served
        self._waiters: dict[CacheKey, int] = {}  # blocking queries waiting on a key
        self._changed: dict[str, asyncio.Event] = {}  # set when a path's latest version moves
        self._revoked: dict[str, dict[int | None, str]] = {}  # path -> {version|None: reason}
        # The negative cache: key -> (monotonic time it ends, the store's refusal).
        self._refusals: dict[CacheKey, tuple[float, SecretNotFound | SecretForbidden]] = {}
        self._log_limit = LogLimiter()
        self._purges = 0  # purges so far; a fetch that spans one keeps nothing
        self._recent_purges: deque[tuple[int, str | None, str | None]] = deque(maxlen=256)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[tuple[CacheKey, Entry]]:
        return iter(list(self._entries.items()))

    def allows(self, path: str) -> bool:
        """Does a rule classify ``path`` (may it be served at all)? No store request."""
        return self._policy.classify(path) is not None

    def classify(self, path: str) -> SecretClass:
        secret_class = self._policy.classify(path)
        if secret_class is None:
            raise PathNotAllowed(path)
        return secret_class

    async def get(self, path: str, version: int | None = None) -> Lookup:
        secret_class = self.classify(path)
        if self._revoked:
            self._check_revoked(path, version)
        key = (path, version)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_read = now
            age = now - entry.confirmed_at
            freshness = entry.secret_class.freshness(age)
            if freshness is Freshness.FRESH and not entry.provisional:
                self._looked_up(secret_class, Outcome.HIT)
                if not entry.served:
                    self._first_served(key, entry)
                return Lookup(entry, Outcome.HIT, age)
            if freshness is Freshness.EXPIRED:
                self._expire(key, entry)
                entry = None
            elif entry.provisional and entry.secret_class.may_serve_stale(age):
                # Restored from a snapshot: served at once, marked stale, while its
                # confirmation with the store is due in the background (no read waits on it).
                self._looked_up(secret_class, Outcome.STALE)
                self._observer.stale_served(path, entry.secret_class, entry, age)
                return self._served(key, Lookup(entry, Outcome.STALE, age))
        elif self._refusals:
            refusal = self._refusals.get(key)
            if refusal is not None:
                until, refused = refusal
                if now < until:
                    self._looked_up(secret_class, Outcome.NEGATIVE)
                    raise refused.again()  # a fresh exception: a re-raised one keeps growing
                del self._refusals[key]
        task, coalesced = self._coalescer.start(key, lambda: self._fetch(key))
        outcome = Outcome.COALESCED if coalesced else Outcome.MISS
        try:
            # shielded: this caller giving up must not cancel a fetch others wait for
            fresh = await asyncio.shield(task)
        except StoreUnavailable as exc:
            lookup = self._on_unavailable(key, entry, secret_class, exc, outcome)
        except StoreError:
            self._looked_up(secret_class, outcome)
            raise
        else:
            fresh.last_read = self._clock()
            self._looked_up(secret_class, outcome)
            lookup = Lookup(fresh, outcome, max(0.0, self._clock() - fresh.confirmed_at))
        return self._served(key, lookup)

    def _served(self, key: CacheKey, lookup: Lookup) -> Lookup:
        if self._revoked:
            self._check_revoked(key[0], lookup.entry.secret.version)
        if not lookup.entry.served:
            self._first_served(key, lookup.entry)
        return lookup

    def hit(self, path: str) -> tuple[Entry, float] | None:
        """The hot path: the latest value of ``path`` if it is fresh and nothing else needs
        doing (already served once, not provisional, no revocations to check). Synchronous:
        no coroutine, no classification, just a dict lookup and a clock read. Anything else
        (None) takes ``get``."""
        entry = self._entries.get((path, None))
        if entry is None or entry.provisional or not entry.served or self._revoked:
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

    def _looked_up(self, secret_class: SecretClass, outcome: Outcome) -> None:
        # Plain counts, exported at scrape time: no metric locks on the request path.
        if outcome is Outcome.HIT:
            self.hits[secret_class.name] = self.hits.get(secret_class.name, 0) + 1
        else:
            key = (outcome, secret_class.name)
            self.lookups[key] = self.lookups.get(key, 0) + 1
        self._observer.lookup(secret_class, outcome)

    def _first_served(self, key: CacheKey, entry: Entry) -> None:
        entry.served = True
        if key[1] is None:
            rotated = self._rotated_at.get(key[0])
            since = None if rotated is None else max(0.0, self._wall() - rotated)
            self._observer.first_served(key[0], entry.secret_class, entry.secret, since)

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
            lookup = self._serve_without_store(key, entry, secret_class, exc)
        except StoreUnavailable as refused:
            self._looked_up(secret_class, outcome)
            self._observer.unavailable(secret_class, refused.reason)
            raise
        self._looked_up(secret_class, lookup.outcome)
        return lookup

    def _serve_without_store(
        self, key: CacheKey, entry: Entry | None, secret_class: SecretClass, exc: StoreUnavailable
    ) -> Lookup:
        if entry is None:
            entry = self._entries.get(key)  # may have arrived while we waited
        if entry is not None:
            age = self._clock() - entry.confirmed_at
            if entry.secret_class.freshness(age) is Freshness.FRESH and not entry.provisional:
                return Lookup(entry, Outcome.HIT, age)
            if entry.secret_class.may_serve_stale(age):
                self._observer.stale_served(key[0], entry.secret_class, entry, age)
                return Lookup(entry, Outcome.STALE, age)
            if age < entry.secret_class.max_cache_age:
                raise StoreUnavailable(
                    "fail_closed",
                    kind=exc.kind,
                    detail=f"class {secret_class.name!r} never serves unconfirmed values "
                    f"({exc.reason})",
                    retry_after=exc.retry_after,
                ) from exc
            self._expire(key, entry)
        if key in self._expired:
            raise StoreUnavailable(
                "max_cache_age_exceeded",
                kind=exc.kind,
                detail=f"cached value is older than max_cache_age "
                f"({secret_class.max_cache_age:g}s) and the store cannot confirm it ({exc.reason})",
                retry_after=exc.retry_after,
            ) from exc
        raise exc

    async def _fetch(self, key: CacheKey) -> Entry:
        path, version = key
        secret_class = self.classify(path)
        started = self._clock()
        purges = self._purges
        held = self._entries.get(key)
        try:
            unchanged = version is None and await self._unchanged(path, held)
            secret = held.secret if unchanged and held else await self._backend.read(path, version)
        except StoreError as exc:
            elapsed = self._clock() - started
            self._observer.fetch_finished(path, secret_class, elapsed, exc)
            dropped = self._log_limit.allow(exc.kind)
            if dropped is not None:
                log.warning(
                    "store fetch failed",
                    extra={
                        "path": path,
                        "class": secret_class.name,
                        "version": version,
                        "kind": exc.kind.value,
                        "reason": exc.reason,
                        "detail": exc.detail,
                        "store_message": exc.store_message,
                        "duration_ms": round(elapsed * 1000, 1),
                        **({"suppressed": dropped} if dropped else {}),
                    },
                )
            if isinstance(exc, SecretNotFound | SecretForbidden):
                # The store says the secret is gone or no longer ours: stop serving it at once,
                # and remember the answer briefly (the negative cache).
                self._drop(key)
                if not self._purged_since(purges, path):
                    self._refuse(key, secret_class, exc)
            raise
        now = self._clock()
        held = self._entries.get(key)
        if (
            held is not None
            and version is None
            and held.secret.version is not None
            and secret.version is not None
            and secret.version < held.secret.version
        ):
            stale_read = StoreUnavailable(
                "stale_read",
                kind=ErrorKind.STALE_READ,
                detail=f"store answered version {secret.version}, "
                f"older than version {held.secret.version} already served",
            )
            self._observer.fetch_finished(path, secret_class, now - started, stale_read)
            log.warning(
                "store answered an older version; keeping ours",
                extra={"path": path, "class": secret_class.name, "version": secret.version},
            )
            raise stale_read
        self._observer.fetch_finished(path, secret_class, now - started, None)
        log.info(
            "store fetch",
            extra={
                "path": path,
                "class": secret_class.name,
                "version": secret.version,
                "checked": "metadata" if unchanged else "data",
                "duration_ms": round((now - started) * 1000, 1),
            },
        )
        if self._revoked:
            try:
                self._check_revoked(path, secret.version)
            except SecretRevoked:
                self._drop(key)  # a revoked value is never kept, not even in memory
                raise
        entry = Entry(
            secret=secret,
            secret_class=secret_class,
            confirmed_at=now,
            fetched_at=self._wall(),
            last_read=held.last_read if held is not None else now,
            served=held is not None and held.served and held.secret.version == secret.version,
            overlap_until=self._overlap_until(secret_class, secret),
        )
        if self._purged_since(purges, path):
            # Purged while this fetch was under way: the answer may predate what the purge
            # was for. It goes to the reads that waited for it, and is not kept.
            log.info("fetched before a purge; not kept", extra={"path": path})
            return entry
        if version is None:
            self._track_version(path, secret_class, held, entry)
        self._store(key, entry)
        return entry

    def _purged_since(self, mark: int, path: str) -> bool:
        """Has a purge covering ``path`` happened since ``self._purges`` was ``mark``?"""
        if mark == self._purges:
            return False
        if not self._recent_purges or self._recent_purges[0][0] > mark + 1:
            return True  # more purges than remembered: assume one covered it
        return any(
            seq > mark and _covers(target, prefix, path)
            for seq, target, prefix in self._recent_purges
        )

    async def _unchanged(self, path: str, held: Entry | None) -> bool:
        """Is the held KV v2 value still current? Asks the metadata endpoint, which moves no
        secret value; False when that cannot tell (then the data is read)."""
        if held is None or held.secret.kv_version != 2 or held.secret.version is None:
            return False
        info = await self._backend.version_info(path)
        if info is None:
            return False
        if info.gone:
            raise SecretNotFound(f"version {info.current} was deleted or destroyed")
        return info.current == held.secret.version

    def _overlap_until(self, secret_class: SecretClass, secret: Secret) -> float:
        """Wall time the previous version retires: the new version's creation plus overlap."""
        if secret_class.overlap <= 0 or secret.version is None or secret.version < 2:
            return 0.0
        created = parse_store_time(secret.created_time)
        return 0.0 if created is None else created + secret_class.overlap

    def _track_version(
        self, path: str, secret_class: SecretClass, held: Entry | None, entry: Entry
    ) -> None:
        old, new = (held.secret if held else None), entry.secret
        wall, now = self._wall(), self._clock()
        if old is not None and new.version is not None and (old.version or 0) < new.version:
            self._rotated_at[path] = wall
            if held is not None and held.last_read > -math.inf:
                self._previous_served[path] = wall - (now - held.last_read)
            log.info(
                "rotation detected",
                extra={
                    "path": path,
                    "class": secret_class.name,
                    "old": old.version,
                    "new": new.version,
                },
            )
            self._observer.rotated(path, secret_class, old, new)
        if old is None or old.version != new.version:
            event = self._changed.pop(path, None)
            if event is not None:
                event.set()  # wake the blocking queries on this path
        if entry.overlap_until > wall and new.version is not None:
            state = (new.version, entry.overlap_until)
            if self._overlaps.get(path) != state:
                self._overlaps[path] = state
                self._push(now + (entry.overlap_until - wall), _Due.RETIRE, (path, None))

    def _refuse(
        self, key: CacheKey, secret_class: SecretClass, exc: SecretNotFound | SecretForbidden
    ) -> None:
        ttl = secret_class.negative_seconds
        if ttl <= 0:
            return
        self._refusals.pop(key, None)
        self._refusals[key] = (self._clock() + ttl, exc)
        if len(self._refusals) > MAX_REFUSALS:
            del self._refusals[next(iter(self._refusals))]  # the oldest; bounded memory

    def _store(self, key: CacheKey, entry: Entry) -> None:
        self._refusals.pop(key, None)
        self.generation += 1
        entry.serial = next(self._seq)
        self._entries[key] = entry
        self._expired.pop(key, None)
        cls = entry.secret_class
        low, high = self._ahead
        due = entry.confirmed_at + cls.refresh_interval * (low + (high - low) * self._rng())
        # One item per value: an expiry is scheduled only once the value stops being
        # refreshed (not wanted, or the refresh failed).
        self._push(due, _Due.REFRESH, key, entry.serial)
        self._observer.entries_changed(len(self._entries))

    def _schedule_expiry(self, key: CacheKey, entry: Entry) -> None:
        if not entry.expiry_scheduled:
            entry.expiry_scheduled = True
            self._push(
                entry.confirmed_at + entry.secret_class.max_cache_age,
                _Due.EXPIRE,
                key,
                entry.serial,
            )

    def _drop(self, key: CacheKey) -> None:
        if self._entries.pop(key, None) is not None:
            self.generation += 1
            self._observer.entries_changed(len(self._entries))

    def _expire(self, key: CacheKey, entry: Entry) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
            self.generation += 1
            self._expired[key] = None
            if len(self._expired) > MAX_TOMBSTONES:
                del self._expired[next(iter(self._expired))]  # the oldest; bounded memory
            log.info(
                "dropped value past max_cache_age",
                extra={"path": key[0], "class": entry.secret_class.name},
            )
            self._observer.entries_changed(len(self._entries))

    # -- background upkeep -------------------------------------------------------------

    def _push(self, due: float, what: _Due, key: CacheKey, serial: int = 0) -> None:
        item = (due, next(self._seq), what, key, serial)
        heapq.heappush(self._schedule, item)
        if self._schedule[0] is item:
            self._wakeup.set()

    def _wanted(self, key: CacheKey, now: float) -> bool:
        """Worth a store request: preloaded, or read within the last refresh interval."""
        if key in self._pinned or self._waiters.get(key):
            return True
        entry = self._entries.get(key)
        return entry is not None and now - entry.last_read <= entry.secret_class.refresh_interval

    def run_due(self) -> float | None:
        """Act on everything due by now; return seconds until the next item (None: nothing)."""
        now = self._clock()
        while self._schedule and self._schedule[0][0] <= now:
            _, _, what, key, serial = heapq.heappop(self._schedule)
            if what is _Due.FETCH:
                if self._wanted(key, now):
                    self._refresh_in_background(key)
                continue
            if what is _Due.RETIRE:
                self._retire(key[0])
                continue
            entry = self._entries.get(key)
            if entry is None or entry.serial != serial:
                continue  # replaced or dropped since this was scheduled
            if what is _Due.CONFIRM:
                if entry.provisional:
                    self._refresh_in_background(key)
                continue
            if what is _Due.EXPIRE:
                due = entry.confirmed_at + entry.secret_class.max_cache_age
                if due > now:  # the class's window was extended meanwhile
                    self._push(due, _Due.EXPIRE, key, serial)
                    continue
                self._expire(key, entry)
            elif self._wanted(key, now):
                self._refresh_in_background(key)
            else:
                self._schedule_expiry(key, entry)
        if not self._schedule:
            return None
        return max(0.0, self._schedule[0][0] - now)

    def _refresh_in_background(self, key: CacheKey) -> None:
        task, coalesced = self._coalescer.start(key, lambda: self._fetch(key))
        if coalesced:
            return
        self._background.add(task)
        task.add_done_callback(lambda done: self._refresh_done(key, done))

    def _refresh_done(self, key: CacheKey, task: asyncio.Task[Entry]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._attempts.pop(key, None)
            return
        # The entry (if any) stays; reads decide by class whether it may still be served,
        # and it expires at max_cache_age unless a retry succeeds first. Try again after a
        # full-jitter backoff while someone still wants the value.
        held = self._entries.get(key)
        if held is not None:
            self._schedule_expiry(key, held)
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        base, cap = self._backoff
        delay = max(0.05, full_jitter(attempt, base, cap, self._rng))
        self._push(self._clock() + delay, _Due.FETCH, key)
        log.warning(
            "background refresh failed; will retry",
            extra={
                "path": key[0],
                "error": type(exc).__name__,
                "reason": str(exc),
                "retry_in_seconds": round(delay, 2),
            },
        )

    def _retire(self, path: str) -> None:
        state = self._overlaps.get(path)
        if state is None:
            return
        current, until = state
        wall, now = self._wall(), self._clock()
        if wall < until:  # the wall clock moved: not yet
            self._push(now + (until - wall), _Due.RETIRE, (path, None))
            return
        del self._overlaps[path]
        previous = current - 1
        last = self._previous_served.pop(path, None)
        pinned = self._entries.get((path, previous))
        if pinned is not None and pinned.last_read > -math.inf:
            pinned_wall = wall - (now - pinned.last_read)
            last = pinned_wall if last is None else max(last, pinned_wall)
        secret_class = self._policy.classify(path)
        if secret_class is not None:
            log.info(
                "previous version retired",
                extra={"path": path, "class": secret_class.name, "version": previous},
            )
            self._observer.previous_retired(path, secret_class, previous, current, last)

    # -- rotation: blocking queries, overlap ----------------------------------------------

    async def wait_newer(self, path: str, newer_than: int, wait: float) -> Lookup | None:
        """Wait until the latest version of ``path`` is newer than ``newer_than``; None when
        ``wait`` seconds pass first. Waiters keep the secret refreshed (one store poll per refresh
        interval, however many wait)."""
        key: CacheKey = (path, None)
        deadline = self._clock() + wait
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            while True:
                entry = self._entries.get(key)
                if entry is not None and (entry.secret.version or 0) > newer_than:
                    if self._revoked:
                        self._check_revoked(path, entry.secret.version)
                    entry.last_read = self._clock()
                    if not entry.served:
                        self._first_served(key, entry)
                    return Lookup(entry, Outcome.HIT, self._clock() - entry.confirmed_at)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                if entry is None:
                    self._push(self._clock(), _Due.FETCH, key)
                changed = self._changed.setdefault(path, asyncio.Event())
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the event fires, and a cancelled waiter must stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await changed.wait()
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]

    def overlap(self, path: str) -> tuple[int, float] | None:
        """(current version, wall time the previous one retires) while an overlap is open."""
        state = self._overlaps.get(path)
        if state is None or self._wall() >= state[1]:
            return None
        return state

    def overlaps_open(self) -> int:
        wall = self._wall()
        return sum(1 for _, until in self._overlaps.values() if until > wall)

    # -- emergency: purge, revocation, incident windows -----------------------------------

    def purge(self, *, path: str | None = None, prefix: str | None = None) -> int:
        """Drop values (every version) of a path, of a prefix, or all (neither given).
        Preloaded paths are fetched again soon; anything else on its next read. A fetch under
        way keeps nothing it brings back (its answer may predate what the purge is for), and
        the store's remembered refusals (the negative cache) are forgotten too."""
        self._purges += 1
        self._recent_purges.append((self._purges, path, prefix))
        doomed = [key for key in self._entries if _covers(path, prefix, key[0])]
        for key in doomed:
            del self._entries[key]
        if doomed:
            self.generation += 1
            self._observer.entries_changed(len(self._entries))
        for key in [key for key in self._refusals if _covers(path, prefix, key[0])]:
            del self._refusals[key]
        now = self._clock()
        for key in doomed:
            if key in self._pinned:
                self._push(now + self._rng(), _Due.FETCH, key)
        return len(doomed)

    def set_revocations(
        self, revoked: Iterable[tuple[str, int | None, str]]
    ) -> tuple[list[tuple[str, int | None, str]], list[tuple[str, int | None, str]], int]:
        """Replace the revocation list. Returns (added, removed, values purged). A listed path
        (or path and version) is dropped from memory now and refused until it leaves the list."""
        table: dict[str, dict[int | None, str]] = {}
        for path, version, reason in revoked:
            table.setdefault(path, {})[version] = reason
        old = {(p, v): r for p, versions in self._revoked.items() for v, r in versions.items()}
        new = {(p, v): r for p, versions in table.items() for v, r in versions.items()}
        added = [(p, v, r) for (p, v), r in new.items() if (p, v) not in old]
        removed = [(p, v, r) for (p, v), r in old.items() if (p, v) not in new]
        self._revoked = table
        doomed = [
            key
            for key, entry in self._entries.items()
            if key[0] in table and (None in table[key[0]] or entry.secret.version in table[key[0]])
        ]
        for key in doomed:
            del self._entries[key]
        if doomed:
            self.generation += 1
            self._observer.entries_changed(len(self._entries))
        return added, removed, len(doomed)

    def revocations(self) -> list[dict[str, Any]]:
        return [
            {"path": path, "version": version, "reason": reason}
            for path, versions in sorted(self._revoked.items())
            for version, reason in versions.items()
        ]

    def _check_revoked(self, path: str, version: int | None) -> None:
        versions = self._revoked.get(path)
        if not versions:
            return
        if None in versions:
            raise SecretRevoked(path, None, versions[None])
        if version is not None and version in versions:
            raise SecretRevoked(path, version, versions[version])

    def replace_class(self, secret_class: SecretClass) -> SecretClass:
        """Swap a class for a changed copy (an incident window); returns the one replaced.
        Entries follow at once; expiry is re-checked against the new max_cache_age."""
        replaced = self._policy.replace_class(secret_class)
        now = self._clock()
        for key, entry in self._entries.items():
            if entry.secret_class.name == secret_class.name:
                entry.secret_class = secret_class
                if entry.expiry_scheduled:  # re-check against the new window
                    self._push(
                        entry.confirmed_at + secret_class.max_cache_age,
                        _Due.EXPIRE,
                        key,
                        entry.serial,
                    )
        if secret_class.max_cache_age < replaced.max_cache_age:
            self._wakeup.set()
        log.info(
            "class window changed",
            extra={
                "class": secret_class.name,
                "max_cache_age": secret_class.max_cache_age,
                "was": replaced.max_cache_age,
                "at": now,
            },
        )
        return replaced

    def class_named(self, name: str) -> SecretClass | None:
        return self._policy.class_named(name)

    # -- warm start and preload ----------------------------------------------------------

    def restore(
        self, items: Iterable[tuple[CacheKey, Secret, float]], confirm_within: float = 0.0
    ) -> tuple[int, int]:
        """Warm the cache from a snapshot: ``(key, secret, confirmed_at wall time)`` each.

        Returns (restored, discarded). Values are provisional: served at once, marked stale,
        without asking the store; each is confirmed in the background at a random moment
        within ``confirm_within`` seconds (so a fleet restarting together asks the store once
        per secret, spread out). Values past max_cache_age, of fail_closed classes, or no
        longer classified by the rules are discarded.
        """
        now, wall = self._clock(), self._wall()
        restored = discarded = 0
        for key, secret, confirmed_wall in items:
            secret_class, why_not = restore_verdict(self._policy, key[0], wall - confirmed_wall)
            if secret_class is None or why_not is not None or key in self._entries:
                discarded += 1
                continue
            age = max(0.0, wall - confirmed_wall)
            entry = Entry(
                secret=secret,
                secret_class=secret_class,
                confirmed_at=now - age,
                fetched_at=confirmed_wall,
                last_read=-math.inf,
                provisional=True,
                serial=next(self._seq),
            )
            self._entries[key] = entry
            self._schedule_expiry(key, entry)
            self._push(now + confirm_within * self._rng(), _Due.CONFIRM, key, entry.serial)
            restored += 1
        self._observer.entries_changed(len(self._entries))
        return restored, discarded

    def export(self) -> list[tuple[CacheKey, Entry]]:
        """What may be written to disk: never values of fail_closed classes."""
        return [
            (key, entry)
            for key, entry in self._entries.items()
            if entry.secret_class.on_outage is not OnOutage.FAIL_CLOSED
        ]

    def preload(self, paths: Iterable[str], jitter: float) -> None:
        """Fetch these (latest versions) soon, each at a random moment within ``jitter``
        seconds so a fleet restarting together does not stampede, and keep them fresh."""
        now = self._clock()
        for path in paths:
            key = (path, None)
            self._pinned.add(key)
            if key not in self._entries:  # a restored value already has its confirmation due
                self._push(now + jitter * self._rng(), _Due.FETCH, key)

    def servable(self, path: str, version: int | None = None) -> bool:
        """Could a read of this key be answered now, even if the store is down?"""
        entry = self._entries.get((path, version))
        return entry is not None and entry.servable(self._clock() - entry.confirmed_at)

    def ages(self) -> Iterator[tuple[SecretClass, float]]:
        """Each cached value's class and age (seconds since the store confirmed it)."""
        now = self._clock()
        for entry in list(self._entries.values()):
            yield entry.secret_class, now - entry.confirmed_at

    def pinned(self) -> list[str]:
        return sorted(path for path, _ in self._pinned)

    async def run_refresher(self, idle: float = 60.0) -> None:
        """Forever: wake when something is due, refresh what was read recently, expire the old."""
        while True:
            self._wakeup.clear()
            delay = self.run_due()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
            # stops this loop if the wakeup fires at the same moment, and shutdown would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle if delay is None else delay):
                    await self._wakeup.wait()

    async def settle(self) -> None:
        """Wait for background refreshes under way (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        await self._coalescer.drain()
