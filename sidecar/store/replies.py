"""The store's replies, checked once, where they arrive: every field the sidecar uses has the type
it must have, or the reply is refused as ``bad_response`` (503: the store is unavailable to us,
not the secret invalid). Nothing past this module looks at a raw reply body. Pure: no I/O.

A broken or impersonated store must not be able to put a string where a secret's fields
belong, a list where a revocation list belongs, or a float where a version belongs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.store.interface import (
    ErrorKind,
    InvalidRequest,
    Secret,
    SecretForbidden,
    SecretNotFound,
    StoreUnavailable,
    Unaskable,
    VersionInfo,
)

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_RETRY_AFTER = 300.0  # the longest wait a store's Retry-After can impose on us


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of the store: its status, its JSON body (empty when none), its headers."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str]

    @property
    def errors(self) -> str:
        """The store's own error text: for the log only, never for callers."""
        errors = self.body.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e).strip() for e in errors)[:500]
        return f"HTTP {self.status}"


def refusal(reply: Reply) -> Exception:
    """What a non-2xx answer means, as one of the error kinds: the one place statuses are
    mapped. (Returned, not raised, so the caller's traceback is where it is raised.)"""
    if reply.status == 404:
        return SecretNotFound(not_found_reason(reply.body), metadata=deleted_version(reply.body))
    if reply.status == 403:
        return SecretForbidden(
            "the store refused the sidecar: its policy does not grant this path",
            store_message=reply.errors,
        )
    if reply.status in (400, 405):
        return InvalidRequest(
            "the store rejected the request as invalid", store_message=reply.errors
        )
    return unavailable_for(reply)


def unavailable_for(reply: Reply) -> StoreUnavailable:
    """An answer that means the store cannot serve us now (429, 5xx, redirects elsewhere...)."""
    answered = f"the store answered HTTP {reply.status}"
    if reply.status == 429:
        return StoreUnavailable(
            "rate_limited",
            kind=ErrorKind.RATE_LIMITED,
            detail=answered,
            retry_after=retry_after(reply.headers.get("Retry-After")),
            store_message=reply.errors,
        )
    if reply.status == 503:
        kind, reason = ErrorKind.SEALED, "sealed"
    elif reply.status >= 500 or reply.status == 412:
        kind, reason = ErrorKind.SERVER_ERROR, "server_error"
    elif reply.status in REDIRECTS:
        kind, reason = ErrorKind.BAD_RESPONSE, "bad_response"
        answered = f"the store redirected (HTTP {reply.status}) to an address not configured"
    else:
        kind, reason = ErrorKind.BAD_RESPONSE, "bad_response"
    return StoreUnavailable(reason, kind=kind, detail=answered, store_message=reply.errors)


def retry_after(value: str | None) -> float | None:
    """The store's Retry-After in seconds, within reason: a non-number, infinity or NaN is
    ignored, and no store may hold a node's circuit open longer than MAX_RETRY_AFTER."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def bad_response(detail: str) -> StoreUnavailable:
    """A reply of the wrong shape, as an outage (503: the store is unavailable to us), never as
    the secret being invalid."""
    return StoreUnavailable("bad_response", kind=ErrorKind.BAD_RESPONSE, detail=detail)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_response(f"{where} is {_kind(value)}, not an object")
    return value


def _optional_object(value: Any, where: str) -> dict[str, Any] | None:
    return None if value is None else _object(value, where)


def _whole(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_response(f"{where} is {_kind(value)}, not a whole number >= {minimum}")
    return value


def _optional_whole(value: Any, where: str, minimum: int = 0) -> int | None:
    return None if value is None else _whole(value, where, minimum)


def _optional_text(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_response(f"{where} is {_kind(value)}, not text")
    return value


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_response(f"{where} is {_kind(value)}, not true or false")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        str: "text",
        int: "a whole number",
        float: "a fractional number",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


# -- KV ---------------------------------------------------------------------------------


def kv1_secret(path: str, body: Mapping[str, Any]) -> Secret:
    """A KV v1 read's reply as a Secret, every field checked (no version; the lease is kept for
    the Vault-compatible API)."""
    data = _object(body.get("data"), "KV v1 reply: data")
    lease = _optional_whole(body.get("lease_duration"), "KV v1 reply: lease_duration")
    return Secret(path=path, data=data, version=None, kv_version=1, lease_duration=lease or 0)


MAX_LEASE_ID = 1024  # a lease ID is a path and a random suffix; anything longer is not one
MAX_LEASE_SECONDS = 10 * 365 * 86400  # a longer lease is no lease: a broken or hostile reply


def leased_secret(path: str, body: Mapping[str, Any]) -> Secret:
    """A leased secret's reply (``database/creds/<role>``, ...) as a Secret, every field
    checked: a non-empty lease_id, a positive lease_duration, data as an object. A reply
    without a lease is not a leased secret: the sidecar does not serve other engines."""
    lease_id = _optional_text(body.get("lease_id"), "leased reply: lease_id")
    if not lease_id:
        raise Unaskable(
            f"{path!r} is not KV and its reply carries no lease: the sidecar serves KV and "
            "leased secrets (such as database credentials) only"
        )
    if len(lease_id) > MAX_LEASE_ID or any(c.isspace() or not c.isprintable() for c in lease_id):
        raise bad_response("leased reply: lease_id is not a lease ID")
    duration = _optional_whole(body.get("lease_duration"), "leased reply: lease_duration", 1)
    if duration is None or duration > MAX_LEASE_SECONDS:
        raise bad_response("leased reply: no lease_duration, or one over 10 years")
    if not lease_id.startswith(path + "/"):
        raise bad_response("leased reply: the lease is not for the path that was read")
    return Secret(
        path=path,
        data=_object(body.get("data"), "leased reply: data"),
        version=None,
        kv_version=0,
        lease_duration=duration,
        lease_id=lease_id,
        renewable=_flag(body.get("renewable"), "leased reply: renewable"),
    )


def renewed(lease_id: str, body: Mapping[str, Any]) -> int:
    """A lease renewal's reply: the seconds granted, for the lease that was asked about."""
    if body.get("lease_id") != lease_id:
        raise bad_response("lease renewal reply: not the lease that was renewed")
    granted = _optional_whole(body.get("lease_duration"), "lease renewal reply: lease_duration")
    if granted is None or granted > MAX_LEASE_SECONDS:
        raise bad_response("lease renewal reply: no lease_duration, or one over 10 years")
    return granted


def kv2_secret(path: str, version: int | None, body: Mapping[str, Any]) -> Secret:
    """A KV v2 read's reply as a Secret, every field checked; a deleted or destroyed version
    raises SecretNotFound with its metadata, so it is never served."""
    document = _object(body.get("data"), "KV v2 reply: data")
    meta = _optional_object(document.get("metadata"), "KV v2 reply: data.metadata") or {}
    number = _optional_whole(meta.get("version"), "KV v2 reply: data.metadata.version", 1)
    destroyed = _flag(meta.get("destroyed"), "KV v2 reply: data.metadata.destroyed")
    data = document.get("data")
    if data is None:
        # The version exists but was deleted or destroyed: it is gone for readers.
        state = "destroyed" if destroyed else "deleted"
        raise SecretNotFound(
            f"version {number or version} was {state}", metadata=deleted_version(body)
        )
    custom = _optional_object(meta.get("custom_metadata"), "KV v2 reply: custom_metadata")
    if custom is not None and not all(isinstance(v, str) for v in custom.values()):
        raise bad_response("KV v2 reply: custom_metadata values are not all text")
    return Secret(
        path=path,
        data=_object(data, "KV v2 reply: data.data"),
        version=number if number is not None else version,
        created_time=_optional_text(meta.get("created_time"), "KV v2 reply: created_time"),
        kv_version=2,
        custom_metadata=custom,
    )


def kv2_metadata(path: str, body: Mapping[str, Any]) -> Secret:
    """The metadata document, served as a secret's ``data`` (it holds no secret value)."""
    data = _object(body.get("data"), "KV v2 metadata reply: data")
    current = _optional_whole(data.get("current_version"), "metadata: current_version")
    _optional_object(data.get("versions"), "metadata: versions")
    return Secret(path=path, data=data, version=current, kv_version=2)


def version_info(body: Mapping[str, Any]) -> VersionInfo:
    """The current version from a KV v2 metadata reply, for the rotation check that moves no
    value; a secret without versions is SecretNotFound."""
    data = _object(body.get("data"), "KV v2 metadata reply: data")
    current = _whole(data.get("current_version", 0), "metadata: current_version")
    if current < 1:
        raise SecretNotFound("the secret has no versions")
    versions = _optional_object(data.get("versions"), "metadata: versions") or {}
    state = _optional_object(versions.get(str(current)), "metadata: versions entry") or {}
    return VersionInfo(
        current=current,
        created_time=_optional_text(state.get("created_time"), "metadata: created_time"),
        gone=bool(_optional_text(state.get("deletion_time"), "metadata: deletion_time"))
        or _flag(state.get("destroyed"), "metadata: destroyed"),
    )


def not_found_reason(body: Mapping[str, Any]) -> str:
    """KV v2 answers 404 with metadata for a deleted or destroyed version: say which."""
    data = body.get("data")
    meta = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(meta, dict):
        version = meta.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            state = "destroyed" if meta.get("destroyed") is True else "deleted"
            return f"version {version} was {state}"
    return "the store has no secret at this path"


def deleted_version(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metadata KV v2 sends with a deleted or destroyed version (``data.data`` null), each
    field checked; None for any other reply."""
    data = body.get("data")
    if not isinstance(data, dict) or data.get("data") is not None:
        return None
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        return None
    try:
        custom = _optional_object(meta.get("custom_metadata"), "custom_metadata")
        if custom is not None and not all(isinstance(v, str) for v in custom.values()):
            return None
        return {
            "created_time": _optional_text(meta.get("created_time"), "created_time") or "",
            "custom_metadata": custom,
            "deletion_time": _optional_text(meta.get("deletion_time"), "deletion_time") or "",
            "destroyed": _flag(meta.get("destroyed"), "destroyed"),
            "version": _whole(meta.get("version"), "version", 1),
        }
    except StoreUnavailable:
        return None


@dataclass(frozen=True, slots=True)
class MountReply:
    """A checked ``sys/internal/ui/mounts`` answer: which engine holds a path, and its KV
    version."""

    path: str  # with trailing slash
    engine: str
    kv_version: int  # 0 when not KV
    info: dict[str, Any]  # the store's own description, passed on to the CLI's preflight


def mount(body: Mapping[str, Any]) -> MountReply | None:
    """``sys/internal/ui/mounts/<path>``; None when no engine is mounted there."""
    data = _optional_object(body.get("data"), "mount reply: data") or {}
    path = _optional_text(data.get("path"), "mount reply: path")
    if path is None:
        return None
    if not path.endswith("/"):
        raise bad_response("mount reply: path does not end in '/'")
    engine = _optional_text(data.get("type"), "mount reply: type") or ""
    options = _optional_object(data.get("options"), "mount reply: options") or {}
    kv_version = 2 if str(options.get("version", "1")) == "2" else 1
    return MountReply(path, engine, kv_version if engine in ("kv", "generic") else 0, data)


# -- the sidecar's own token ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """What a login, renewal or token lookup granted: the token (logins only), its TTL and
    whether it is renewable, to schedule the next renewal."""

    token: str | None  # None on lookups and renewals that do not repeat it
    ttl: float
    renewable: bool


def login(body: Mapping[str, Any]) -> Grant:
    """A login reply as a Grant; a reply without a token is an auth failure, not a login."""
    auth = _object(body.get("auth"), "login reply: auth")
    token = _optional_text(auth.get("client_token"), "login reply: client_token")
    if token is None:
        raise StoreUnavailable(
            "auth_failed", kind=ErrorKind.AUTH_FAILED, detail="login reply without a token"
        )
    return Grant(token, _ttl(auth.get("lease_duration"), "login reply"), _renewable(auth))


def renewal(body: Mapping[str, Any]) -> Grant:
    """A renew-self reply as a Grant (renewable unless the store says otherwise), to schedule the
    next renewal."""
    auth = _object(body.get("auth"), "renewal reply: auth")
    renewable = auth.get("renewable", True)
    return Grant(
        None,
        _ttl(auth.get("lease_duration"), "renewal reply"),
        _flag(renewable, "renewal reply: renewable"),
    )


def lookup(body: Mapping[str, Any]) -> Grant:
    """A lookup-self reply as a Grant: how token auth learns the configured token's TTL, so it
    can renew it in time."""
    data = _object(body.get("data"), "token lookup reply: data")
    return Grant(None, _ttl(data.get("ttl"), "token lookup reply"), _renewable(data))


def _ttl(value: Any, where: str) -> float:
    return float(_optional_whole(value, f"{where}: TTL") or 0)


def _renewable(document: Mapping[str, Any]) -> bool:
    return _flag(document.get("renewable"), "renewable")
