"""What the cache reports as it works: one hook per fact, for metrics, the audit trail and the
event stream. The cache calls one observer; ``Fanout`` passes each fact to several."""

from __future__ import annotations

from sidecar.core.entries import Entry, Outcome
from sidecar.core.policy import SecretClass
from sidecar.store.interface import Secret, StoreError


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
    """Several observers, each told everything, in order."""

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
