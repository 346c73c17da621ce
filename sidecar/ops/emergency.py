"""Emergency controls: purge, the fleet-wide revocation list, and incident cache windows.

Every action is audited, and anything that removes values rewrites the snapshot at once, so a
purged or revoked value survives neither in memory nor on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sidecar.core.cache import SecretCache
from sidecar.core.clock import SYSTEM, Clock, Timer
from sidecar.core.durations import format_duration
from sidecar.core.facts import Listener, RevocationsPolled, Revoked
from sidecar.core.policy import OnOutage, SecretClass
from sidecar.ops.audit import AuditLog, iso_time
from sidecar.ops.warmstart import Snapshotter
from sidecar.store.interface import Backend, SecretNotFound, StoreError

log = logging.getLogger("sidecar.admin")

MAX_EXTENSION = 7 * 86400.0  # an incident window that lasts longer is a configuration change

Revocation = tuple[str, int | None, str]


class MalformedList(Exception):
    """The revocation list's shape is wrong as a whole (not one bad entry)."""


class AdminError(Exception):
    """An admin request refused, with the HTTP status to answer (404 for an unknown class, 400
    for a value out of range, 409 for a request the class's policy makes meaningless)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Admin:
    """The emergency controls behind /admin and the revocation list: every action is audited, and
    whatever one drops is dropped from the snapshot too."""

    def __init__(
        self,
        cache: SecretCache,
        audit: AuditLog,
        listener: Listener,
        snapshotter: Snapshotter | None,
        *,
        ceiling: float,
        clock: Clock = SYSTEM,
        revoke_lease: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._cache = cache
        self._revoke_lease = revoke_lease
        self._audit = audit
        self._listener = listener
        self._snapshotter = snapshotter
        self._ceiling = ceiling
        self._clock = clock
        self._wall = clock.wall
        self._configured: dict[str, SecretClass] = {}  # classes as configured, while extended
        self._reverts: dict[str, Timer] = {}
        self._extended_until: dict[str, float] = {}
        self.revocations_polled_at: float | None = None

    async def _persist(self, why: str) -> None:
        """Rewrite the snapshot without what was just dropped; if that fails, remove it: a
        purged or revoked value must not come back after a restart."""
        if self._snapshotter is not None and not await self._snapshotter.save(force=True):
            self._snapshotter.remove(why)

    # -- purge -------------------------------------------------------------------------

    async def purge(
        self, *, path: str | None = None, prefix: str | None = None, by: str = "admin"
    ) -> int:
        """Drop cached values (one path, a prefix, or everything) from memory and from the
        snapshot, e.g. after a leak; returns how many entries went. A purged leased credential
        is revoked in the store too (its database user dropped): after a leak, a credential
        nobody holds any more must not keep working until its lease ends."""
        leases = self._cache.controls.leases(path=path, prefix=prefix)
        count = self._cache.controls.purge(path=path, prefix=prefix)
        revoked, failed = await self._revoke_leases(leases)
        scope = "path" if path is not None else "prefix" if prefix is not None else "all"
        self._audit.record(
            "purged",
            scope=scope,
            target=path or prefix,
            entries=count,
            by=by,
            leases_revoked=revoked if leases else None,
            leases_not_revoked=failed or None,
        )
        log.warning("purged", extra={"scope": scope, "target": path or prefix, "entries": count})
        await self._persist("purge")
        return count

    async def revoke_leases(self) -> int:
        """At shutdown (``revoke_leases_on_shutdown``): purge every leased credential, which
        revokes its lease in the store; returns how many paths were purged."""
        paths = sorted({key[0] for key, entry in self._cache.export_all() if entry.secret.lease_id})
        for path in paths:
            await self.purge(path=path, by="shutdown")
        return len(paths)

    async def _revoke_leases(self, leases: list[str]) -> tuple[int, int]:
        """Revoke each lease in the store; (revoked, failed). A failure is logged with what to
        do, and the purge stands: the value is gone from the sidecar either way."""
        if self._revoke_lease is None:
            return 0, len(leases)
        revoked = 0
        for lease in leases:
            try:
                await self._revoke_lease(lease)
                revoked += 1
            except StoreError as exc:
                log.error(
                    "purged credential's lease not revoked in the store; revoke it there "
                    "(bao lease revoke -prefix on the path) before its lease ends",
                    extra={"reason": exc.reason, "kind": exc.kind.value},
                )
        return revoked, len(leases) - revoked

    # -- incident cache windows --------------------------------------------------------

    def extend(
        self, class_name: str, max_cache_age: float, duration: float, requested: str
    ) -> dict[str, Any]:
        """Raise a class's max_cache_age for ``duration`` during an incident (audited, reverted
        by itself), so riding out a long outage needs no configuration change; never below the
        configured age nor above the ceiling."""
        current = self._cache.class_named(class_name)
        if current is None:
            raise AdminError(404, f"no class named {class_name!r}")
        configured = self._configured.get(class_name, current)
        if configured.on_outage is not OnOutage.SERVE_STALE:
            raise AdminError(
                409,
                f"class {class_name!r} is {configured.on_outage}: it never serves a value the "
                "store cannot confirm, so a longer cache window changes nothing; extend is for "
                "serve_stale classes",
            )
        if max_cache_age > self._ceiling:
            raise AdminError(
                400,
                f"max_cache_age {format_duration(max_cache_age)} is above max_cache_age_ceiling "
                f"({format_duration(self._ceiling)})",
            )
        if max_cache_age < configured.max_cache_age:
            raise AdminError(
                400,
                f"max_cache_age {format_duration(max_cache_age)} is below the configured "
                f"{format_duration(configured.max_cache_age)}; to drop values use /admin/purge",
            )
        if not 0 < duration <= MAX_EXTENSION:
            raise AdminError(
                400, f"'for' must be more than 0 and at most {format_duration(MAX_EXTENSION)}"
            )
        self._configured[class_name] = configured
        self._cache.controls.replace_class(
            dataclasses.replace(configured, max_cache_age=max_cache_age)
        )
        previous = self._reverts.pop(class_name, None)
        if previous is not None:
            previous.cancel()
        self._reverts[class_name] = self._clock.call_later(
            duration, lambda: self._revert(class_name)
        )
        until = self._wall() + duration
        self._extended_until[class_name] = until
        self._audit.record(
            "cache_window_extended",
            **{"class": class_name},
            owner=configured.owner,
            max_cache_age=max_cache_age,
            previous_max_cache_age=configured.max_cache_age,
            until=iso_time(until),
            requested=requested,
        )
        log.warning(
            "cache window extended",
            extra={"class": class_name, "max_cache_age": max_cache_age, "until": iso_time(until)},
        )
        return {
            "class": class_name,
            "max_cache_age": max_cache_age,
            "configured_max_cache_age": configured.max_cache_age,
            "until": iso_time(until),
        }

    def _revert(self, class_name: str) -> None:
        configured = self._configured.pop(class_name, None)
        self._reverts.pop(class_name, None)
        self._extended_until.pop(class_name, None)
        if configured is None:
            return
        self._cache.controls.replace_class(configured)
        self._audit.record(
            "cache_window_reverted",
            **{"class": class_name},
            owner=configured.owner,
            max_cache_age=configured.max_cache_age,
        )
        log.warning("cache window reverted", extra={"class": class_name})

    def extensions(self) -> dict[str, str]:
        """The incident windows in force and when each ends, for /admin/status."""
        return {name: iso_time(until) for name, until in self._extended_until.items()}

    def close(self) -> None:
        """Cancel the pending reverts at shutdown, so no timer fires after the event loop is
        gone."""
        for handle in self._reverts.values():
            handle.cancel()

    # -- the revocation list -----------------------------------------------------------

    async def apply_revocations(self, revoked: list[Revocation]) -> None:
        """Make the cache follow a newly read revocation list: revoked values are dropped now
        (and from the snapshot), additions and lifted entries are audited, and listeners hear of
        each revocation."""
        added, removed, purged = self._cache.controls.set_revocations(revoked)
        for path, version, reason in added:
            self._audit.record("revoked", path=path, version=version, reason=reason, entries=purged)
            self._listener.notify(Revoked(path, version, reason))
            log.warning("revoked", extra={"path": path, "version": version, "reason": reason})
        for path, version, reason in removed:
            self._audit.record("unrevoked", path=path, version=version, reason=reason)
            log.info("revocation lifted", extra={"path": path, "version": version})
        if purged:
            await self._persist("revocation")

    async def poll_revocations(
        self,
        backend: Backend,
        list_path: str,
        interval: float,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """Poll the list kept in the store. It is small and polled on its own path (urgent:
        past circuit breakers and the request budget), so revoking works in a degraded store.
        A failed poll keeps the last list: an outage never lifts a revocation, and neither does
        a malformed list (it is refused whole, logged and counted) or a missing one (a misspelt
        or deleted path is a failure that alerts, not an empty list: to revoke nothing, write
        ``{"revoked": []}``)."""
        failing = False
        while True:
            try:
                secret = await backend.read(list_path, None, urgent=True)
                entries, problems = parse_revocations(secret.data)
                if problems and not entries and secret.data.get("revoked") not in (None, []):
                    raise MalformedList(problems[0])
                for problem in problems:
                    log.error("revocation list entry ignored", extra={"problem": problem})
            except (StoreError, MalformedList) as exc:
                self._listener.notify(RevocationsPolled(ok=False, at=self._wall()))
                if not failing:
                    log.warning(
                        "revocation list not readable; keeping the last one",
                        extra={
                            "path": list_path,
                            "reason": str(exc),
                            "fix": 'write {"revoked": []} there to revoke nothing'
                            if isinstance(exc, SecretNotFound)
                            else None,
                        },
                    )
                failing = True
                await asyncio.sleep(interval * (0.8 + 0.4 * rng()))
                continue
            failing = False
            await self.apply_revocations(entries)
            self.revocations_polled_at = self._wall()
            self._listener.notify(RevocationsPolled(ok=True, at=self.revocations_polled_at))
            await asyncio.sleep(interval * (0.8 + 0.4 * rng()))


def parse_revocations(data: Mapping[str, Any]) -> tuple[list[Revocation], list[str]]:
    """The revocation list document, ``{"revoked": [{"path": ..., "version": N (optional),
    "reason": ...}]}``, as entries, plus one problem line per entry left out: one bad entry
    must not void the rest of the list."""
    items = data.get("revoked", [])
    if not isinstance(items, list):
        return [], ["'revoked' must be a list"]
    entries: list[Revocation] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
            problems.append(f"revoked[{i}]: needs a 'path'")
            continue
        version = item.get("version")
        if version is not None and (
            not isinstance(version, int) or isinstance(version, bool) or version < 1
        ):
            problems.append(f"revoked[{i}]: 'version' must be a positive whole number")
            continue
        reason = item.get("reason")
        entries.append((item["path"], version, str(reason) if reason else "revoked"))
    return entries, problems
