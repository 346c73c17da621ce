"""Bringing a value from the store: one fetch per key at a time (the others wait for it),
checked before it is kept (never an older version than one already served, never a revoked
one, nothing that a purge overtook), then refreshed ahead of time by the upkeep."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.coalesce import Coalescer
from sidecar.core.entries import CacheKey, Entry, EntryTable
from sidecar.core.facts import FetchFinished, LeaseEvent, Listener
from sidecar.core.leases import PreviousLeases, leased_class
from sidecar.core.loglimit import LogLimiter
from sidecar.core.policy import SecretClass
from sidecar.core.refusals import Refusals
from sidecar.core.revocations import Revocations
from sidecar.core.rotation import Rotations, overlap_until
from sidecar.core.upkeep import Upkeep
from sidecar.store.interface import (
    Backend,
    Deferred,
    ErrorKind,
    InvalidRequest,
    Secret,
    SecretForbidden,
    SecretNotFound,
    StoreError,
    StoreUnavailable,
    Unaskable,
)

log = logging.getLogger("sidecar.cache")


@dataclass(frozen=True)
class Lag:
    """A key the store answered with an older version than the one held: not asked again until
    ``until``, as long as that same version is still held. Holds no secret and no exception
    (a raised exception's traceback would keep the reads' frames, and their values, alive)."""

    until: float
    times: int  # older answers in a row, counting from 0
    held_version: int | None
    detail: str

    def holds(self, held: Entry | None, now: float) -> bool:
        """Is the hold still in force for ``held`` (what the cache has now) at ``now``?"""
        return held is not None and held.secret.version == self.held_version and now < self.until

    def refusal(self) -> StoreUnavailable:
        """A new error for a read answered from the hold, as the store's older answer was."""
        return StoreUnavailable("stale_read", kind=ErrorKind.STALE_READ, detail=self.detail)


class Fetcher:
    """Brings values from the store for the cache: one fetch per key at a time, checked before it
    is kept (see the module docstring), then handed to the upkeep to be refreshed ahead."""

    def __init__(
        self,
        backend: Backend,
        entries: EntryTable,
        rotations: Rotations,
        revoked: Revocations,
        refusals: Refusals,
        upkeep: Upkeep,
        listener: Listener,
        *,
        classify: Callable[[str], SecretClass],
        clock: Callable[[], float],
        wall: Callable[[], float],
        lag_hold: tuple[float, float] = (0.5, 30.0),
        previous: PreviousLeases | None = None,
    ) -> None:
        """``lag_hold``: (base, cap) of how long a key is not asked again after the store
        answered it with an older version than the one held (doubling while it keeps lagging)."""
        self._backend = backend
        self._entries = entries
        self._rotations = rotations
        self._revoked = revoked
        self._refusals = refusals
        self._upkeep = upkeep
        self._listener = listener
        self._classify = classify
        self._clock = clock
        self._wall = wall
        self._coalescer: Coalescer[CacheKey, Entry] = Coalescer()
        self._log_limit = LogLimiter()
        # A lagging node answers fast and healthily, so neither the circuit breaker nor a
        # Retry-After slows the asking; without this hold, every read of a value past its
        # refresh_interval asked again (found by `sidecar drill`'s stale_node: ~10 store
        # requests a second per secret). key -> (ask again at, times in a row, the answer)
        self._lag_hold = lag_hold
        self._previous = previous if previous is not None else PreviousLeases()
        self._gone: set[str] = set()  # leases the store said are gone at renewal (until replaced)
        self._lagging: dict[CacheKey, Lag] = {}

    def start(self, key: CacheKey) -> tuple[asyncio.Task[Entry], bool]:
        """The fetch of ``key``, and whether it was already under way (coalesced)."""
        return self._coalescer.start(key, lambda: self._fetch(key))

    async def close(self) -> None:
        """Cancel every fetch under way and wait for them to end (shutdown)."""
        await self._coalescer.drain()

    async def _fetch(self, key: CacheKey) -> Entry:
        path, version = key
        secret_class = self._classify(path)
        started = self._clock()
        purges = self._refusals.mark()
        held = self._entries.get(key)
        lagging = self._lagging.get(key)
        if lagging is not None and not lagging.holds(held, started):
            lagging = None  # purged, expired or replaced since, or the hold is over
        if lagging is not None:
            raise lagging.refusal()  # it said older a moment ago: not asked again yet
        try:
            renewed = await self._renewed(held) if version is None else None
            unchanged = renewed is None and version is None and await self._unchanged(path, held)
            if renewed is not None:
                secret = renewed
            elif unchanged and held:
                secret = held.secret
            else:
                secret = await self._backend.read(path, version)
        except StoreError as exc:
            self._failed(key, secret_class, self._clock() - started, exc, purges)
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
            self._listener.notify(FetchFinished(path, secret_class, now - started, stale_read))
            self._hold(key, held, secret_class, now, stale_read.detail or "")
            log.warning(
                "store answered an older version; keeping ours",
                extra={"path": path, "class": secret_class.name, "version": secret.version},
            )
            raise stale_read
        self._lagging.pop(key, None)
        self._listener.notify(FetchFinished(path, secret_class, now - started, None))
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
        if self._revoked.active and self._revoked.covers(path, secret.version):
            self._entries.drop(key)  # a revoked value is never kept, not even in memory
            self._revoked.check(path, secret.version)
        confirmed_at, fetched_at = now, self._wall()
        if secret.lease_id is not None:  # one credential shared until near its lease's end
            secret_class = self._leased(secret, secret_class, held)
            # The lease began somewhere between asking and the answer: count from the asking,
            # so a slow answer never stretches it past its end in the store.
            fetched_at -= now - started
            confirmed_at = started
        entry = Entry(
            secret=secret,
            secret_class=secret_class,
            confirmed_at=confirmed_at,
            fetched_at=fetched_at,
            last_read=held.last_read if held is not None else now,
            served=held is not None and held.served and held.secret.kid == secret.kid,
            overlap_until=overlap_until(secret_class, secret),
            issued_by=self._issuer(secret, held),
        )
        if self._refusals.purged_since(purges, path):
            # Purged while this fetch was under way: the answer may predate what the purge
            # was for. It goes to the reads that waited for it, and is not kept.
            log.info("fetched before a purge; not kept", extra={"path": path})
            return entry
        if version is None:
            retire = self._rotations.track(path, secret_class, held, entry)
            if retire is not None:
                self._upkeep.retire_at((path, None), retire)
        self._store(key, entry, first=held is None or held.provisional)
        return entry

    def _hold(
        self, key: CacheKey, held: Entry, secret_class: SecretClass, now: float, detail: str
    ) -> None:
        """Do not ask the store for ``key`` again for a while: it answered older than ``held``.
        The hold doubles while the node keeps lagging, from ``backend.backoff``'s base up to
        its cap, and never past the class's refresh_interval (a recovery, or a deletion, is
        noticed no later than without the hold)."""
        previous = self._lagging.get(key)
        times = previous.times + 1 if previous is not None else 0
        base, cap = self._lag_hold
        hold = min(cap, secret_class.refresh_interval, base * 2.0 ** min(times, 62))
        # forget holds long over (a key nobody reads again must not stay here forever)
        for other in [k for k, lag in self._lagging.items() if lag.until + cap < now]:
            del self._lagging[other]
        self._lagging[key] = Lag(now + hold, times, held.secret.version, detail)

    def _failed(
        self,
        key: CacheKey,
        secret_class: SecretClass,
        elapsed: float,
        exc: StoreError,
        purges: int,
    ) -> None:
        path, version = key
        if isinstance(exc, Unaskable | Deferred):
            # the caller's mistake, or our own budget putting the request off, found without
            # asking the store: not a store failure
            return
        self._listener.notify(FetchFinished(path, secret_class, elapsed, exc))
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
            self._entries.drop(key)
            if not self._refusals.purged_since(purges, path):
                self._refusals.remember(key, secret_class, exc)

    async def _renewed(self, held: Entry | None) -> Secret | None:
        """The held leased credential with its lease renewed for as long again, if the store
        grants that much; None when there is nothing to renew or a new credential is due: not
        renewable, renewal refused (the lease is gone), or granted less than asked (its
        max_ttl is near: the next one is issued now, while this one still works)."""
        if held is None or held.secret.lease_id is None or not held.secret.renewable:
            return None
        if held.issued_by != self._backend.token_digest:
            # made with a token the sidecar no longer holds: the lease ends with that token,
            # whatever a renewal says now. A new credential; the old one is not kept.
            self._gone.add(held.secret.lease_id)
            return None
        asked, secret = held.secret.lease_duration, held.secret
        try:
            granted = min(asked, await self._backend.renew(held.secret.lease_id, asked))
        except (SecretNotFound, SecretForbidden, InvalidRequest):
            # the lease is gone (revoked, expired) or not ours: the credential is dead, so it
            # is not kept as the previous one either; a new credential instead
            self._lease_event(held, "renewal_refused", 0)
            self._gone.add(held.secret.lease_id)
            return None
        if granted < asked:
            self._lease_event(held, "renewal_refused", granted)
            return None
        self._lease_event(held, "renewed", granted)
        return dataclasses.replace(secret, lease_duration=granted)

    def _leased(self, secret: Secret, secret_class: SecretClass, held: Entry | None) -> SecretClass:
        """The class as it applies to leased ``secret``; says when it is a new credential."""
        leased = leased_class(secret_class, secret.lease_duration)
        if held is None or held.secret.lease_id != secret.lease_id:
            event = "issued" if held is None or held.secret.lease_id is None else "reissued"
            self._listener.notify(
                LeaseEvent(secret.path, leased, event, secret.kid, secret.lease_duration)
            )
            old_lease = held.secret.lease_id if held is not None else None
            if held is not None and old_lease is not None and old_lease not in self._gone:
                self._previous.keep(secret.path, held, self._clock())  # retiring: overlap
            self._gone.discard(old_lease or "")
        return leased

    def _issuer(self, secret: Secret, held: Entry | None) -> str | None:
        """Which token's lease ``secret`` is: a renewal keeps the held one's, a new credential
        is the current token's; None when not leased."""
        if secret.lease_id is None:
            return None
        if held is not None and held.secret.lease_id == secret.lease_id:
            return held.issued_by
        return self._backend.token_digest

    def _lease_event(self, entry: Entry, event: str, granted: int) -> None:
        secret = entry.secret
        self._listener.notify(
            LeaseEvent(secret.path, entry.secret_class, event, secret.kid, granted)
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

    def _store(self, key: CacheKey, entry: Entry, *, first: bool) -> None:
        self._refusals.forget(key)
        entry.serial = self._upkeep.schedule.serial()
        self._entries.put(key, entry)
        self._upkeep.held(key, entry, first=first)
