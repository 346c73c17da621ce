"""The store as the rest of the sidecar sees it: the value type, the error kinds, and the
protocols (``Backend`` for the cache, ``Store`` for everything). Pure: no hvac here.

Every failure the store can produce is one of four kinds, and the kind decides the incident:
``SecretNotFound``/``SecretForbidden`` mean the secret is invalid (the store answered, and
the answer is no), ``StoreUnavailable`` means nobody could ask, ``InvalidRequest`` is the
caller's fault.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Secret:
    """One secret as read from the store: the value the cache holds and serves, with the version
    and metadata that rotation tracking and the Vault-compatible API need."""

    path: str  # the store path as the application names it, e.g. "secret/app/db"
    data: Mapping[str, Any]
    version: int | None  # KV v2 version; None on KV v1, which has no versions
    created_time: str | None = None
    kv_version: int = 2
    custom_metadata: Mapping[str, Any] | None = None  # KV v2: the secret's custom metadata
    lease_duration: int = 0  # what the store said (KV v1 mounts have a default TTL)
    # A leased secret (database credentials, ...): every read of its path makes a new one, so
    # one lease is shared until it ends; never served past its end. None: not leased.
    lease_id: str | None = None
    renewable: bool = False

    @property
    def kid(self) -> str:
        """Stable key identifier: ``<path>#<version>``; plain ``<path>`` on unversioned KV v1;
        ``<path>#lease-<12 hex>`` for a leased credential (a digest of its lease ID, which
        tells two credentials apart without naming the lease)."""
        if self.lease_id is not None:
            digest = hashlib.sha256(self.lease_id.encode()).hexdigest()[:12]
            return f"{self.path}#lease-{digest}"
        return self.path if self.version is None else f"{self.path}#{self.version}"


# The cache key's version part for a KV v2 secret's metadata document (versions start at 1).
METADATA = 0


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What the KV v2 metadata says about the current version."""

    current: int
    created_time: str | None
    gone: bool  # the current version is deleted or destroyed


class ErrorKind(enum.StrEnum):
    """Bounded set, used as a metric label."""

    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SEALED = "sealed"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    AUTH_FAILED = "auth_failed"
    BAD_RESPONSE = "bad_response"
    INVALID_REQUEST = "invalid_request"
    STALE_READ = "stale_read"  # a standby answered an older version than we already serve
    THROTTLED = "throttled"  # our own request budget (backend.rate_limit) is spent


class StoreError(Exception):
    """``reason`` (and ``detail``) are what callers see: our own words, a short code for outages,
    a sentence otherwise. ``store_message`` is the store's own error text: it goes to the log
    only (a store message may quote anything, a value included)."""

    kind: ErrorKind

    def __init__(
        self,
        reason: str,
        *,
        kind: ErrorKind | None = None,
        detail: str | None = None,
        store_message: str | None = None,
    ) -> None:
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.store_message = store_message
        if kind is not None:
            self.kind = kind


class SecretNotFound(StoreError):
    """No such secret, or no such version. ``metadata``: for a KV v2 version that was deleted
    or destroyed, its metadata as the store gave it (times, version; never a value), so the
    Vault-compatible API can answer as Vault does."""

    kind = ErrorKind.NOT_FOUND

    def __init__(
        self,
        reason: str,
        *,
        detail: str | None = None,
        store_message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(reason, detail=detail, store_message=store_message)
        self.metadata = metadata

    def again(self) -> SecretNotFound:
        """The same refusal as a fresh exception, for the negative cache to raise each time (a
        re-raised one keeps growing its traceback); the store's own message is left out."""
        return SecretNotFound(self.reason, detail=self.detail, metadata=self.metadata)


class SecretForbidden(StoreError):
    """The store answered and refused the sidecar this path (403): the secret is no longer ours,
    so a held value is dropped at once rather than served stale."""

    kind = ErrorKind.FORBIDDEN

    def again(self) -> SecretForbidden:
        """The same refusal as a fresh exception, for the negative cache to raise each time (a
        re-raised one keeps growing its traceback); the store's own message is left out."""
        return SecretForbidden(self.reason, detail=self.detail)


class InvalidRequest(StoreError):
    """The request cannot succeed as asked (not a KV mount, a version on KV v1, a 400 from the
    store): the caller's fault, answered 400, neither an outage nor an invalid secret."""

    kind = ErrorKind.INVALID_REQUEST


class Unaskable(InvalidRequest):
    """A request the sidecar refuses without asking the store (a version of a KV v1 secret,
    a path on a mount that is not KV): the caller's 400, and not a store error, so it is
    neither counted in ``sidecar_backend_errors_total`` nor audited as a failed fetch."""


class StoreUnavailable(StoreError):
    """Nobody could ask the store (down, sealed, slow, rate limited, circuit open): an outage,
    answered 503 with ``retry_after`` as the hint, and ridden out with the held value where the
    class allows it."""

    kind = ErrorKind.CONNECTION

    def __init__(
        self,
        reason: str,
        *,
        kind: ErrorKind | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
        store_message: str | None = None,
    ) -> None:
        super().__init__(reason, kind=kind, detail=detail, store_message=store_message)
        self.retry_after = retry_after


class Deferred(StoreUnavailable):
    """Not asked at all: the sidecar's own request budget has no token to spare now for a
    request that need not wait for one (background refresh, or a read the value held can
    answer). Not a store failure: the cache serves within its class's limits and tries later."""

    kind = ErrorKind.THROTTLED


class Backend(Protocol):
    """What the cache needs of the store: values, and cheap version checks."""

    async def start(self) -> None:
        """Authenticate and start background upkeep (token renewal). Must not raise on outage."""

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        """The secret at ``path`` (latest when ``version`` is None; its KV v2 metadata document
        as ``data`` when ``version`` is METADATA). Raises StoreError kinds.
        ``urgent``: small and important (the revocation list): not held back by breakers."""

    async def version_info(self, path: str) -> VersionInfo | None:
        """The current version, cheaply (no value moved), or None if that cannot be known."""

    async def renew(self, lease_id: str, increment: int) -> int:
        """Renew a lease by ``increment`` seconds; the seconds the store granted (less near the
        lease's max_ttl). Raises StoreError kinds (a lease gone or not renewable: refused)."""

    async def revoke_lease(self, lease_id: str) -> None:
        """Revoke a lease in the store now (a database engine drops the credential's user)."""

    @property
    def token_digest(self) -> str | None:
        """A digest of the store token in use (None: none yet): leases end with their token."""

    async def close(self) -> None:
        """Release what ``start`` set up (background tasks, the request pool) at shutdown."""


@dataclass(frozen=True, slots=True)
class Mount:
    """A secrets engine mounted in the store, as discovered (no secret in it)."""

    path: str  # with trailing slash, e.g. "secret/"
    kv_version: int  # 0 when the engine is not KV
    discovered_at: float
    engine: str = "kv"
    info: Mapping[str, Any] = field(default_factory=dict)  # the store's own description

    @property
    def kv(self) -> bool:
        """Whether the sidecar may serve from this engine: it reads KV only (``generic`` is KV's
        old name)."""
        return self.engine in ("kv", "generic")


@dataclass(frozen=True, slots=True)
class PassThrough:
    """A caller's request to pass to the store as it came (Vault API passthrough), with the
    caller's own store token in ``headers``, never the sidecar's."""

    method: str
    api_path: str
    query: list[tuple[str, str]]
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A store answer passed back unchanged (Vault API passthrough)."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class Store(Backend, Protocol):
    """The store as the whole sidecar sees it: the cache's reads, plus the mount table (for
    the Vault-compatible API and the snapshot), passthrough, and the state of its identity."""

    @property
    def authenticated(self) -> bool:
        """Whether the sidecar holds a store token yet, for the readiness report."""

    @property
    def auth_failure(self) -> str | None:
        """Why the last attempt to authenticate failed, while it keeps failing (readiness)."""

    @property
    def addresses(self) -> list[str]:
        """The configured store node URLs, first preferred: where store requests may go."""

    def known_mount(self, api_path: str) -> Mount | None:
        """The mount holding ``api_path`` if already known and trusted: no store request."""

    async def mount(self, api_path: str) -> Mount:
        """The mount holding ``api_path`` (a path as in the store's API, after /v1/)."""

    def export_mounts(self) -> list[dict[str, Any]]:
        """The mounts discovered so far, as plain data for the snapshot (no secret in them)."""

    def import_mounts(self, mounts: list[dict[str, Any]]) -> int:
        """Trust mounts remembered by the snapshot, so a warm start need not ask the store which
        mount holds each path; returns how many were taken."""

    def on_new_token(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the sidecar holds a different store token."""

    async def forward(self, request: PassThrough) -> Forwarded:
        """One request passed through as it came, with the caller's own token."""
