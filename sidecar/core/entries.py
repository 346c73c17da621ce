"""The values the cache holds: one entry per (path, version), what is known about each, and
the table that keeps them."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sidecar.core.policy import SecretClass
from sidecar.store.interface import Secret

log = logging.getLogger("sidecar.cache")

MAX_TOMBSTONES = 10_000  # keys remembered as "aged out", to say why a read fails (no values)

CacheKey = tuple[str, int | None]  # (path, version); version None is "the latest"


class Outcome(enum.StrEnum):
    """How a read was answered (a bounded set: a metric label)."""

    HIT = "hit"  # fresh value from memory
    MISS = "miss"  # this request fetched from the store
    COALESCED = "coalesced"  # this request waited for a fetch already under way
    STALE = "stale"  # the store could not confirm; an older value within limits was served
    NEGATIVE = "negative"  # the store said "not found" or "forbidden" moments ago: said again


@dataclass(slots=True, eq=False, weakref_slot=True)
class Entry:
    """One value held, with its class and what the store last said about it."""

    secret: Secret
    secret_class: SecretClass
    confirmed_at: float  # monotonic time the store last confirmed this value
    fetched_at: float  # the same moment on the wall clock, for people
    last_read: float
    provisional: bool = False  # restored from a snapshot: served stale until the store confirms
    served: bool = False  # this version was served at least once (carried across refreshes)
    overlap_until: float = 0.0  # wall time the previous version retires (0: no overlap open)
    # Presentation memos, owned by the HTTP layer: the rendered native envelope (without its
    # per-request members) and the rendered Vault-compatible body (without its request_id).
    native_body: bytes | None = field(default=None)
    vault_body: bytes | None = field(default=None)
    serial: int = 0  # the schedule refers to entries by key and serial, never by reference
    issued_by: str | None = None  # a leased value: digest of the store token whose lease it is
    expiry_scheduled: bool = False

    def servable(self, age: float) -> bool:
        """May this value answer a read now, if the store could not be asked?"""
        if age < self.secret_class.refresh_interval and not self.provisional:
            return True
        return self.secret_class.may_serve_stale(age)


@dataclass(frozen=True, slots=True)
class Lookup:
    """The facts of one read: which entry, how it was obtained, how old it is."""

    entry: Entry
    outcome: Outcome
    age: float  # seconds since the store last confirmed the value

    @property
    def stale(self) -> bool:
        """Was the value served unconfirmed by the store (an outage, or restored from a snapshot)?
        The HTTP layer then says so to the caller."""
        return self.outcome is Outcome.STALE


class PathNotAllowed(Exception):
    """No rule in the configuration classifies this path, so the sidecar does not serve it."""


class EntryTable:
    """The values held, by key. Every change bumps ``generation`` (an unchanged table need not
    be written to the snapshot again) and reports the new count. Values dropped for age leave
    a tombstone (the key only, bounded), so a failing read can say why."""

    def __init__(self, on_count: Callable[[int], None]) -> None:
        # Read directly by the cache's hot path (one dict lookup); changed only through here.
        self.by_key: dict[CacheKey, Entry] = {}
        self._entries = self.by_key
        # key -> (why: its max_cache_age or its lease, the kid of the value that ended)
        self._aged_out: dict[CacheKey, tuple[str, str]] = {}
        self._on_count = on_count
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def get(self, key: CacheKey) -> Entry | None:
        """The entry held for ``key``, or None (``aged_out`` says if it was dropped for age)."""
        return self._entries.get(key)

    def items(self) -> list[tuple[CacheKey, Entry]]:
        """A copy: safe to change the table while going through it."""
        return list(self._entries.items())

    def values(self) -> Iterator[Entry]:
        """The entries held, from a copy: safe to change the table while going through them."""
        return iter(list(self._entries.values()))

    def put(self, key: CacheKey, entry: Entry) -> None:
        """Hold ``entry`` for ``key`` (a value from the store): bumps the generation, clears the
        key's tombstone and reports the new count."""
        self.generation += 1
        self._entries[key] = entry
        self._aged_out.pop(key, None)
        self._on_count(len(self._entries))

    def adopt(self, key: CacheKey, entry: Entry) -> None:
        """Hold a restored value: already on disk, so the generation does not move (call
        ``report`` once the batch is in)."""
        self._entries[key] = entry

    def report(self) -> None:
        """Report the current count (once a batch of ``adopt`` is in)."""
        self._on_count(len(self._entries))

    def drop(self, key: CacheKey) -> bool:
        """Forget ``key``'s value at once (revoked, or refused by the store), leaving no tombstone;
        False if nothing was held."""
        if self._entries.pop(key, None) is None:
            return False
        self.generation += 1
        self._on_count(len(self._entries))
        return True

    def remove(self, keys: list[CacheKey]) -> int:
        """Drop these keys, all held, as one change (a purge, a revocation); returns how many.
        No tombstones: nothing aged out."""
        for key in keys:
            del self._entries[key]
        if keys:
            self.generation += 1
            self._on_count(len(self._entries))
        return len(keys)

    def expire(self, key: CacheKey, entry: Entry, why: str = "max_cache_age_exceeded") -> None:
        """Drop ``entry`` (if still the one held) for having reached max_cache_age, or, ``why``
        ``lease_expired``, the end of its lease."""
        if self._entries.get(key) is not entry:
            return
        del self._entries[key]
        self.generation += 1
        self._aged_out[key] = (why, entry.secret.kid)
        if len(self._aged_out) > MAX_TOMBSTONES:
            del self._aged_out[next(iter(self._aged_out))]  # the oldest; bounded memory
        log.info(
            "dropped value past max_cache_age" if why != "lease_expired" else "lease ended",
            extra={"path": key[0], "class": entry.secret_class.name},
        )
        self._on_count(len(self._entries))

    def aged_out(self, key: CacheKey) -> str | None:
        """Why ``key``'s value was dropped for age, if it was (so a failing read can say why):
        ``max_cache_age_exceeded`` or ``lease_expired``."""
        ended = self._aged_out.get(key)
        return None if ended is None else ended[0]

    def ended_kid(self, key: CacheKey) -> str | None:
        """The kid of ``key``'s value dropped for age, if one was (no value is kept)."""
        ended = self._aged_out.get(key)
        return None if ended is None else ended[1]
