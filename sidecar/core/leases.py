"""Leased secrets (database credentials and the like) in the cache, pure: how long one may be
served. Every read of a leased path makes a new credential in the store (a new database user),
so one lease is shared by every caller until shortly before it ends, whatever the class's
refresh_interval says; and it is never served past that point, whatever its max_cache_age says:
a dead credential is "invalid", not "stale"."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from sidecar.core.entries import Entry
from sidecar.core.facts import LeaseEvent, Listener
from sidecar.core.policy import SecretClass
from sidecar.store.interface import Backend, StoreError

log = logging.getLogger("sidecar.cache")

MARGIN_SHARE = 0.1  # of the lease: served until this much before its end
MARGIN_CAP = 30.0  # seconds: the margin is never longer (a day-long lease ends 30 s early)


def usable_for(lease_duration: float) -> float:
    """Seconds a lease of ``lease_duration`` is served: its duration less a safety margin, so
    that a credential handed out is still valid when the app uses it."""
    return max(0.0, lease_duration - min(MARGIN_CAP, lease_duration * MARGIN_SHARE))


CONFIRM_SHARE = 0.85  # of the usable time: the lease's "refresh interval" (renewal due)


def leased_class(secret_class: SecretClass, lease_duration: float) -> SecretClass:
    """``secret_class`` as it applies to one leased value. Its end (``max_cache_age``) is the
    lease's usable end or the class's max_cache_age, whichever is first: never served after
    it, not even during an outage. Its ``refresh_interval`` is 85 % of that (not the class's:
    a refresh would make a new database user): refresh-ahead renews the lease at 75-90 % of
    it (about two thirds of the lease), and if the store cannot be asked past it, the class's
    outage behaviour applies as for KV: ``serve_stale`` serves it marked stale until its end,
    ``fail_closed`` refuses."""
    limit = min(usable_for(lease_duration), secret_class.max_cache_age)
    limit = max(limit, 0.001)  # a zero-length lease is served to the reads that asked for it
    return dataclasses.replace(
        secret_class, refresh_interval=limit * CONFIRM_SHARE, max_cache_age=limit
    )


def ended_by_lease(leased: SecretClass, lease_duration: float) -> bool:
    """Did the lease (rather than the class's max_cache_age) set the end of a value whose class
    is ``leased`` (as ``leased_class`` made it)?"""
    return usable_for(lease_duration) <= leased.max_cache_age + 1e-6


QUIET_AFTER = 10.0  # seconds without a read of a retired credential before its lease is revoked


@dataclasses.dataclass
class Retiring:
    """A credential a new one replaced: served as ``?version=previous`` until ``until`` (its
    class's overlap), never past ``ends`` (its lease's usable end); then, once nobody has read
    it for QUIET_AFTER, its lease is revoked in the store."""

    entry: Entry
    until: float  # monotonic
    ends: float  # monotonic
    last_read: float


class PreviousLeases:
    """The credential each leased path had before its current one, while it is retiring."""

    def __init__(self) -> None:
        self._held: dict[str, Retiring] = {}
        self._displaced: list[Retiring] = []  # replaced again before their time: revoke now

    def __len__(self) -> int:
        return len(self._held)

    def keep(self, path: str, entry: Entry, now: float) -> None:
        """``entry`` was replaced by a new credential at ``now``: keep it for its class's
        overlap (one before it, if still here, is revoked at the next ``due``)."""
        if entry.secret_class.overlap <= 0:
            # no overlap declared: apps may still hold connections opened with it, so it is
            # left to end with its lease in the store, never revoked early
            return
        ends = entry.confirmed_at + entry.secret_class.max_cache_age
        until = min(now + entry.secret_class.overlap, ends)
        displaced = self._held.get(path)
        if displaced is not None:
            self._displaced.append(displaced)
        self._held[path] = Retiring(entry, until, ends, last_read=now)

    def previous(self, path: str, now: float) -> Entry | None:
        """The previous credential of ``path`` if still served (within the overlap and its
        lease); counts as a read of it."""
        retiring = self._held.get(path)
        if retiring is None or now >= retiring.until:
            return None
        retiring.last_read = now
        return retiring.entry

    def due(self, now: float) -> list[Retiring]:
        """The retiring credentials whose time is up, removed: their overlap ended and nobody
        read them for QUIET_AFTER, or their lease ended by itself."""
        done = [
            path
            for path, r in self._held.items()
            if now >= r.ends or (now >= r.until and now - r.last_read >= QUIET_AFTER)
        ]
        displaced, self._displaced = self._displaced, []
        return displaced + [self._held.pop(path) for path in done]

    def take(self, covers: Callable[[str], bool]) -> list[Retiring]:
        """Remove and return the retiring credentials of the paths ``covers`` (a purge)."""
        return [self._held.pop(path) for path in [p for p in self._held if covers(p)]]

    def next_in(self, now: float) -> float | None:
        """Seconds until the next one could be due (None: none held)."""
        if self._displaced:
            return 0.0
        if not self._held:
            return None
        soonest = min(
            min(r.ends, max(r.until, r.last_read + QUIET_AFTER)) for r in self._held.values()
        )
        return max(0.0, soonest - now)


class LeaseRetirer:
    """Revokes the leases of replaced credentials once they have retired (their overlap over,
    nobody reading them), so their database users go before their leases would end; those
    whose lease ended by itself are just forgotten."""

    def __init__(
        self,
        previous: PreviousLeases,
        backend: Backend,
        listener: Listener,
        clock: Callable[[], float],
    ) -> None:
        self._previous = previous
        self._backend = backend
        self._listener = listener
        self._clock = clock

    async def run_once(self) -> float | None:
        """Revoke what is due now; seconds until the next may be due (None: nothing held)."""
        now = self._clock()
        for retiring in self._previous.due(now):
            secret = retiring.entry.secret
            if secret.lease_id is None or now >= retiring.ends:
                continue  # its lease ends (or ended) in the store by itself
            try:
                await self._backend.revoke_lease(secret.lease_id)
            except StoreError as exc:
                log.warning(
                    "a retired credential's lease could not be revoked; it ends with its lease",
                    extra={"path": secret.path, "kind": exc.kind.value, "reason": exc.reason},
                )
                continue
            self._listener.notify(
                LeaseEvent(secret.path, retiring.entry.secret_class, "revoked", secret.kid, 0)
            )
        return self._previous.next_in(self._clock())

    async def run_forever(self) -> None:
        """``run_once`` whenever something may be due (at least every 5 s); a failure is
        logged and tried again, never the end of the loop."""
        while True:
            try:
                delay = await self.run_once()
            except Exception:
                log.exception("retiring replaced credentials failed; trying again")
                delay = 5.0
            await asyncio.sleep(5.0 if delay is None else min(5.0, max(0.2, delay)))
