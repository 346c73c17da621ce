"""Rotation bookkeeping: when a new version is seen, how long the previous one stays available
(the class's overlap), when it retires, and who is waiting for the next version."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from sidecar.core.entries import CacheKey, Entry
from sidecar.core.facts import Listener, PreviousRetired, Rotated
from sidecar.core.policy import SecretClass
from sidecar.store.interface import Secret

MAX_SEEN = 65536  # paths whose last version is remembered after a purge (bounded memory)

log = logging.getLogger("sidecar.cache")

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


def overlap_until(secret_class: SecretClass, secret: Secret) -> float:
    """Wall time the previous version retires: the new version's creation plus overlap."""
    if secret_class.overlap <= 0 or secret.version is None or secret.version < 2:
        return 0.0
    created = parse_store_time(secret.created_time)
    return 0.0 if created is None else created + secret_class.overlap


class Rotations:
    """Per path: when the last rotation was seen, the open overlap (current version, wall time
    the previous one retires), when the previous version was last served, and the blocking
    queries waiting for a newer version."""

    def __init__(
        self,
        listener: Listener,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._listener = listener
        self._clock = clock
        self._wall = wall
        self._rotated_at: dict[str, float] = {}  # path -> wall time the last rotation was seen
        self._seen: dict[str, int] = {}  # path -> the latest version ever held (survives purges)
        self._overlaps: dict[str, tuple[int, float]] = {}  # path -> (current version, until)
        self._previous_served: dict[str, float] = {}  # path -> wall time previous last served
        self._changed: dict[str, asyncio.Event] = {}  # set when a path's latest version moves
        self._waiters: dict[CacheKey, int] = {}  # blocking queries waiting on a key

    def track(
        self, path: str, secret_class: SecretClass, held: Entry | None, entry: Entry
    ) -> float | None:
        """A new latest value is about to be held. Returns the monotonic time the previous
        version's overlap ends when a retirement is newly due, else None."""
        old, new = (held.secret if held else None), entry.secret
        wall, now = self._wall(), self._clock()
        # The version last seen, even when its value was purged or revoked since: a new one
        # after that is a rotation too, and the evidence must not lose it.
        last = (old.version or 0) if old is not None else self._seen.get(path)
        if new.version is not None:
            self._seen[path] = max(new.version, self._seen.pop(path, 0))  # newest last
            if len(self._seen) > MAX_SEEN:
                del self._seen[next(iter(self._seen))]  # the path not rotated for longest
        if last is not None and new.version is not None and last < new.version:
            old_version = old.version if old is not None else last
            self._rotated_at[path] = wall
            if held is not None and held.last_read > -math.inf:
                self._previous_served[path] = wall - (now - held.last_read)
            log.info(
                "rotation detected",
                extra={
                    "path": path,
                    "class": secret_class.name,
                    "old": old_version,
                    "new": new.version,
                },
            )
            self._listener.notify(Rotated(path, secret_class, old_version, new, old))
            if entry.overlap_until <= wall and old_version is not None:
                # No overlap for the previous version (the class has none, or it is already
                # over): it is retired now, the same moment /verify starts calling it retired.
                last_served = self._previous_served.pop(path, None)
                self._listener.notify(
                    PreviousRetired(path, secret_class, old_version, new.version, last_served)
                )
        if old is None or old.version != new.version:
            event = self._changed.pop(path, None)
            if event is not None:
                event.set()  # wake the blocking queries on this path
        if entry.overlap_until > wall and new.version is not None:
            state = (new.version, entry.overlap_until)
            if self._overlaps.get(path) != state:
                self._overlaps[path] = state
                return now + (entry.overlap_until - wall)
        return None

    def retire(
        self,
        path: str,
        secret_class: SecretClass | None,
        previous_entry: Callable[[CacheKey], Entry | None],
    ) -> float | None:
        """The overlap of ``path`` is due to end. Returns a monotonic time to try again when
        the wall clock says it is not yet over, else None."""
        state = self._overlaps.get(path)
        if state is None:
            return None
        current, until = state
        wall, now = self._wall(), self._clock()
        if wall < until:  # the wall clock moved: not yet
            return now + (until - wall)
        del self._overlaps[path]
        previous = current - 1
        last = self._previous_served.pop(path, None)
        previous_held = previous_entry((path, previous))
        if previous_held is not None and previous_held.last_read > -math.inf:
            previous_held_wall = wall - (now - previous_held.last_read)
            last = previous_held_wall if last is None else max(last, previous_held_wall)
        if secret_class is not None:
            log.info(
                "previous version retired",
                extra={"path": path, "class": secret_class.name, "version": previous},
            )
            self._listener.notify(PreviousRetired(path, secret_class, previous, current, last))
        return None

    def since_rotation(self, path: str) -> float | None:
        """Seconds since the last rotation of ``path`` was seen (None: never)."""
        rotated = self._rotated_at.get(path)
        return None if rotated is None else max(0.0, self._wall() - rotated)

    def overlap(self, path: str) -> tuple[int, float] | None:
        """(current version, wall time the previous one retires) while an overlap is open."""
        state = self._overlaps.get(path)
        if state is None or self._wall() >= state[1]:
            return None
        return state

    def overlaps_open(self) -> int:
        """How many paths still serve their previous version now (by the wall clock)."""
        wall = self._wall()
        return sum(1 for _, until in self._overlaps.values() if until > wall)

    def changed(self, path: str) -> asyncio.Event:
        """Set when the latest version of ``path`` moves."""
        return self._changed.setdefault(path, asyncio.Event())

    @contextlib.contextmanager
    def waiting(self, key: CacheKey) -> Iterator[None]:
        """A blocking query waits on ``key`` (which keeps it refreshed meanwhile)."""
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            yield
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]

    def awaited(self, key: CacheKey) -> bool:
        """Is a blocking query waiting on ``key``? Then it is kept refreshed, read or not."""
        return bool(self._waiters.get(key))
