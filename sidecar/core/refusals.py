"""What the cache remembers besides values: the store's recent refusals (the negative cache)
and the purges, so that a fetch that spanned a purge keeps nothing it brings back."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from sidecar.core.entries import CacheKey
from sidecar.core.policy import SecretClass
from sidecar.store.interface import SecretForbidden, SecretNotFound

MAX_REFUSALS = 10_000  # keys remembered as "not found"/"forbidden" (negative cache), bounded
RECENT_PURGES = 256  # purges remembered by what they covered; older ones count as covering all

Refusal = SecretNotFound | SecretForbidden


def covers(path: str | None, prefix: str | None, candidate: str) -> bool:
    """Does a purge of ``path``, of ``prefix``, or of everything (neither) cover
    ``candidate``?"""
    if path is None and prefix is None:
        return True
    return candidate == path or (prefix is not None and candidate.startswith(prefix))


class Refusals:
    """The negative cache (the store's recent "not found"/"forbidden", said again for a moment
    instead of asking again) and the record of purges that ``purged_since`` consults."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._refusals: dict[CacheKey, tuple[float, Refusal]] = {}  # key -> (ends, refusal)
        self._purges = 0
        self._recent: deque[tuple[int, str | None, str | None]] = deque(maxlen=RECENT_PURGES)

    # -- the negative cache ---------------------------------------------------------------

    def remember(self, key: CacheKey, secret_class: SecretClass, refusal: Refusal) -> None:
        """Say the store's refusal of ``key`` again for its class's ``negative_seconds`` (not at all
        when 0); bounded, the oldest forgotten first."""
        ttl = secret_class.negative_seconds
        if ttl <= 0:
            return
        self._refusals.pop(key, None)
        self._refusals[key] = (self._clock() + ttl, refusal)
        if len(self._refusals) > MAX_REFUSALS:
            del self._refusals[next(iter(self._refusals))]  # the oldest; bounded memory

    def recall(self, key: CacheKey, now: float) -> Refusal | None:
        """The store's refusal of ``key``, said again while it is remembered: a fresh
        exception each time (a re-raised one keeps growing its traceback)."""
        if not self._refusals:
            return None
        refusal = self._refusals.get(key)
        if refusal is None:
            return None
        until, refused = refusal
        if now < until:
            return refused.again()
        del self._refusals[key]
        return None

    def forget(self, key: CacheKey) -> None:
        """Forget any refusal of ``key`` (a value for it is now held)."""
        self._refusals.pop(key, None)

    # -- purges ------------------------------------------------------------------------------

    def purged(self, path: str | None, prefix: str | None) -> None:
        """A purge happened: forget the refusals it covers, and remember it."""
        self._purges += 1
        self._recent.append((self._purges, path, prefix))
        for key in [key for key in self._refusals if covers(path, prefix, key[0])]:
            del self._refusals[key]

    def mark(self) -> int:
        """Where the purges stand now, to ask ``purged_since`` later."""
        return self._purges

    def purged_since(self, mark: int, path: str) -> bool:
        """Has a purge covering ``path`` happened since ``mark``?"""
        if mark == self._purges:
            return False
        if not self._recent or self._recent[0][0] > mark + 1:
            return True  # more purges than remembered: assume one covered it
        return any(
            seq > mark and covers(target, prefix, path) for seq, target, prefix in self._recent
        )
