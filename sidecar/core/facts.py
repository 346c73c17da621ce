"""What the sidecar reports as it works: one small type per fact. Metrics, the audit trail and
the event stream all listen to the same facts through one method, ``notify``; a new fact is a
new type here and a case where it is wanted, never a change of every listener's signature.

Only the hot path counts in place, without a fact: cache hits (``SecretCache.hits``) and HTTP
statuses (``Metrics.http_statuses``) are plain integers read at scrape time, because building a
fact per hit would cost as much as the hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, dataclass_transform

from sidecar.core.backoff import CircuitState
from sidecar.core.entries import Entry, Outcome
from sidecar.core.policy import SecretClass
from sidecar.store.interface import Secret, StoreError

if TYPE_CHECKING:
    from sidecar.core.verify import Verdict

_T = TypeVar("_T")


@dataclass_transform()
def fact(cls: type[_T]) -> type[_T]:
    """A fact type: a message made and dropped by the thousand, read by listeners, never
    compared or changed. So: slots, and none of the equality and frozen-ness methods a
    dataclass generates per type (kilobytes of code each at import, times every fact)."""
    return dataclass(slots=True, eq=False)(cls)


# -- the cache ---------------------------------------------------------------------------------


@fact
class FetchFinished:
    """A store read ended (``error`` None: it succeeded)."""

    path: str
    secret_class: SecretClass
    seconds: float
    error: StoreError | None


@fact
class LeaseEvent:
    """Something happened to a leased credential's lease: ``issued`` (a first credential),
    ``renewed``, ``renewal_refused`` (the store would not renew it for as long again: near its
    max_ttl, or the lease is gone), ``reissued`` (a new credential replaced one still held),
    ``revoked`` (a replaced credential's lease, once its overlap ended and nobody read it),
    ``expired`` (its lease ended and the store could not replace it: a read was refused).
    ``kid`` names the credential without its value; ``lease_duration``: seconds granted."""

    path: str
    secret_class: SecretClass
    event: str
    kid: str
    lease_duration: int


@fact
class LookedUp:
    """A read was answered this way (hits on the hot path are counted in place instead)."""

    secret_class: SecretClass
    outcome: Outcome


@fact
class Unavailable:
    """A read was answered 503, for this reason."""

    secret_class: SecretClass
    reason: str


@fact
class BudgetDegraded:
    """The request budget (backend.rate_limit) could not keep up: a background refresh was
    ``deferred``, or a read was answered ``served_stale`` instead of waiting for a token."""

    secret_class: SecretClass
    action: str  # deferred | served_stale


@fact
class EntriesChanged:
    """The number of values held changed: now ``count``."""

    count: int


@fact
class StaleServed:
    """A read got a value the store had not confirmed (an outage, or restored from a snapshot),
    ``age`` seconds since it last was."""

    path: str
    secret_class: SecretClass
    entry: Entry
    age: float


@fact
class Rotated:
    """The store's current version moved past the last one seen for the path. ``old`` is that
    value while it is still held; after a purge or a revocation dropped it, only its version
    is known (the rotation is evidence all the same)."""

    path: str
    secret_class: SecretClass
    old_version: int | None
    new: Secret
    old: Secret | None = None


@fact
class FirstServed:
    """A version was served for the first time (after a rotation: the app took it up)."""

    path: str
    secret_class: SecretClass
    secret: Secret
    since_rotation: float | None


@fact
class PreviousRetired:
    """A rotation's overlap ended: the previous version is no longer served."""

    path: str
    secret_class: SecretClass
    version: int
    current_version: int
    last_served: float | None


@fact
class PreviousServed:
    """``?version=previous`` was answered (someone still reads the old value)."""

    secret_class: SecretClass


@fact
class Verified:
    """A presented credential was checked against the versions of ``path`` (``verify.py``)."""

    path: str
    secret_class: SecretClass
    verdict: Verdict
    field: str


# -- the store -------------------------------------------------------------------------------


@fact
class AuthEvent:
    """The sidecar's own store identity: a login or renewal, and its outcome."""

    event: str  # login, renew
    ok: bool
    expires_at: float | None


@fact
class NodeState:
    """A store node was seen up or down, with its circuit breaker's state."""

    address: str
    up: bool
    circuit: CircuitState


# -- operations ----------------------------------------------------------------------------


@fact
class BackgroundFailed:
    """A background task failed unexpectedly and was restarted."""

    task: str


@fact
class SnapshotLoaded:
    """The snapshot was read at start: ``restored`` values warmed the cache."""

    restored: int
    unusable: bool  # the file was damaged, tampered with, or under another key


@fact
class SnapshotSaved:
    """The snapshot was written, holding ``entries`` values."""

    entries: int
    at: float  # wall time


@fact
class SnapshotFailed:
    """A snapshot operation failed (an unusable file at load is told by ``SnapshotLoaded``
    instead)."""

    operation: str  # "save" (a load problem is told by SnapshotLoaded)


@fact
class Revoked:
    """An entry appeared on the fleet-wide revocation list."""

    path: str
    version: int | None
    reason: str


@fact
class RevocationsPolled:
    """The fleet-wide revocation list was polled (``ok``: read and applied)."""

    ok: bool
    at: float  # wall time


@fact
class ConnectionClosed:
    """A listener closed or refused a connection to protect itself."""

    listener: str
    reason: str  # limit, evicted, header_timeout


@fact
class ConnectionsOpen:
    """How many connections a listener has open now."""

    listener: str
    count: int


Fact = (
    FetchFinished
    | LeaseEvent
    | LookedUp
    | Unavailable
    | BudgetDegraded
    | EntriesChanged
    | StaleServed
    | Rotated
    | FirstServed
    | PreviousRetired
    | PreviousServed
    | Verified
    | AuthEvent
    | NodeState
    | BackgroundFailed
    | SnapshotLoaded
    | SnapshotSaved
    | SnapshotFailed
    | Revoked
    | RevocationsPolled
    | ConnectionClosed
    | ConnectionsOpen
)


class Listener(Protocol):
    """Anything that hears facts (metrics, audit trail, event stream): one method, so a new fact
    changes no listener's signature."""

    def notify(self, fact: Fact) -> None:
        """Hear one fact, ignoring kinds of no interest; called inline, so it must not block."""


class Quiet:
    """Listens to nothing (the default)."""

    def notify(self, fact: Fact) -> None:
        """Ignore ``fact``."""
        pass


class Bus:
    """Every fact to every listener, in order."""

    def __init__(self, *listeners: Listener) -> None:
        self._listeners = listeners

    def notify(self, fact: Fact) -> None:
        """Pass ``fact`` on to each listener, in the order given."""
        for listener in self._listeners:
            listener.notify(fact)
