"""Incident controls on what the cache holds: purge, the revocation list, and class windows.
The cache's read path never calls these; ``ops/emergency.py`` (the admin API, the revocation
poller) does, and adds the audit records and the snapshot rewrite around them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from sidecar.core.entries import EntryTable
from sidecar.core.leases import PreviousLeases, leased_class
from sidecar.core.policy import Policy, SecretClass
from sidecar.core.refusals import Refusals, covers
from sidecar.core.revocations import Revocation, Revocations
from sidecar.core.upkeep import Upkeep

log = logging.getLogger("sidecar.cache")


class Controls:
    """Drop values now (purge, revocation) or change a class's window, keeping the schedule and
    the negative cache consistent with what is held."""

    def __init__(
        self,
        entries: EntryTable,
        policy: Policy,
        refusals: Refusals,
        revoked: Revocations,
        upkeep: Upkeep,
        clock: Callable[[], float],
        *,
        previous_leases: PreviousLeases | None = None,
    ) -> None:
        self._entries = entries
        self._previous_leases = previous_leases or PreviousLeases()
        self._policy = policy
        self._refusals = refusals
        self._revoked = revoked
        self._upkeep = upkeep
        self._clock = clock

    def purge(self, *, path: str | None = None, prefix: str | None = None) -> int:
        """Drop values (every version) of a path, of a prefix, or all (neither given).
        Preloaded paths are fetched again soon; anything else on its next read. A fetch under
        way keeps nothing it brings back (its answer may predate what the purge is for), and
        the store's remembered refusals (the negative cache) are forgotten too."""
        self._refusals.purged(path, prefix)
        doomed = [key for key, _ in self._entries.items() if covers(path, prefix, key[0])]
        self._entries.remove(doomed)
        self._upkeep.purged(doomed)
        return len(doomed)

    def leases(self, *, path: str | None = None, prefix: str | None = None) -> list[str]:
        """The lease IDs of the leased credentials a ``purge`` with these arguments drops: those
        held, and the replaced ones still retiring (taken out here: they go with the purge)."""
        held = [
            lease
            for key, entry in self._entries.items()
            if covers(path, prefix, key[0]) and (lease := entry.secret.lease_id) is not None
        ]
        retiring = self._previous_leases.take(lambda candidate: covers(path, prefix, candidate))
        return held + [r.entry.secret.lease_id for r in retiring if r.entry.secret.lease_id]

    def set_revocations(
        self, revoked: Iterable[Revocation]
    ) -> tuple[list[Revocation], list[Revocation], int]:
        """Replace the revocation list. Returns (added, removed, values purged). A listed path
        (or path and version) is dropped from memory now and refused until it leaves the list."""
        added, removed = self._revoked.replace(revoked)
        doomed = [
            key
            for key, entry in self._entries.items()
            if self._revoked.covers(key[0], entry.secret.version)
        ]
        return added, removed, self._entries.remove(doomed)

    def revocations(self) -> list[dict[str, object]]:
        """The revocation list in force, one dict (path, version, reason) per entry, for /admin."""
        return self._revoked.listing()

    def replace_class(self, secret_class: SecretClass) -> SecretClass:
        """Swap a class for a changed copy (an incident window); returns the one replaced.
        Entries follow at once; expiry is re-checked against the new max_cache_age."""
        replaced = self._policy.replace_class(secret_class)
        for _, entry in self._entries.items():
            if entry.secret_class.name == secret_class.name:
                lease = entry.secret.lease_duration
                # a leased credential keeps its lease's limits: no window outlives a lease
                entry.secret_class = (
                    secret_class
                    if entry.secret.lease_id is None
                    else leased_class(secret_class, lease)
                )
        self._upkeep.window_changed(
            secret_class, shorter=secret_class.max_cache_age < replaced.max_cache_age
        )
        log.info(
            "class window changed",
            extra={
                "class": secret_class.name,
                "max_cache_age": secret_class.max_cache_age,
                "was": replaced.max_cache_age,
                "at": self._clock(),
            },
        )
        return replaced
