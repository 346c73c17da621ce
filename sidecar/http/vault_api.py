"""The Vault-compatible API under /v1/: Vault SDKs and the bao/vault CLI read through the sidecar
by changing only their address.

KV reads (``<mount>/data/<path>``, ``<mount>/metadata/<path>``, KV v1 ``<mount>/<path>``) and the
CLI's mount preflight (``sys/internal/ui/mounts/<path>``) are answered from the same cache,
rules, coalescing and outage behaviour as the native API, in Vault's response shape, with
``X-Cache`` and ``Age`` as Vault Agent sends them. Anything else is refused with 405, or, with
``vault_api.passthrough``, forwarded unchanged with the caller's own store token.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import istr

from sidecar.core.cache import Lookup, PathNotAllowed, SecretCache
from sidecar.core.paths import InvalidPath, check_kv_path, check_path, kv_candidates
from sidecar.http.bodies import read_body
from sidecar.http.errors import BadRequest, Refused, error_response, vault_error
from sidecar.http.guard import CALLER_KEY, GUARD_KEY, Access, FastPath, guarded
from sidecar.http.keys import CACHE_KEY, PASSTHROUGH_KEY, VAULT_PREFIX, hit_headers
from sidecar.http.native import CACHE_HEADER, whole_number
from sidecar.store.interface import (
    METADATA,
    Mount,
    PassThrough,
    Secret,
    SecretNotFound,
    Store,
)

log = logging.getLogger("sidecar.vault_api")

MOUNTS_PREFIX = "sys/internal/ui/mounts/"
LOOKUP_SELF = "auth/token/lookup-self"
# What ``auth/token/lookup-self`` answers for the caller token (hvac's is_authenticated(), the
# CLI's token lookup): the caller token is the sidecar's, not a store token, so it has no
# lease, TTL or policies in the store; its own value (Vault's "id") is never echoed.
CALLER_TOKEN_INFO = {
    "accessor": "",
    "display_name": "secrets-sidecar-caller",
    "entity_id": "",
    "expire_time": None,
    "explicit_max_ttl": 0,
    "meta": {"issuer": "secrets-sidecar"},
    "num_uses": 0,
    "orphan": True,
    "path": "",
    "policies": ["secrets-sidecar-caller"],
    "renewable": False,
    "ttl": 0,
    "type": "service",
}
KV2_PATHS = ("data", "metadata", "delete", "undelete", "destroy", "subkeys")
HOP_BY_HOP = frozenset(
    {"host", "connection", "content-length", "transfer-encoding", "keep-alive", "x-sidecar-token"}
)
READ_METHODS = frozenset({"GET", "HEAD", "LIST"})


STORE_KEY = web.AppKey("store", Store)


@dataclass(frozen=True, slots=True)
class _KVRead:
    path: str  # the cache's path: "secret/app/db"
    version: int | None  # a version, METADATA, or None for the latest


def vault_hit(store: Store, cache: SecretCache) -> FastPath:
    """The hot path, as on the native API: a known mount and a fresh value already served
    through this API (its Vault-shaped body is rendered)."""

    def fast(api_path: str) -> web.StreamResponse | None:
        path = _latest_path(store.known_mount(api_path), api_path)
        hit = cache.hit(path) if path else None
        if hit is None or hit[0].vault_body is None:
            return None
        headers = _HIT_HEADERS.copy()
        headers[_AGE] = str(int(hit[1]))
        return web.Response(body=_with_request_id(hit[0].vault_body), headers=headers)

    return fast


async def handle(request: web.Request) -> web.StreamResponse:
    """Every request under /v1/: KV reads and the CLI's mount preflight answered from the cache,
    anything else refused or passed through, every failure in Vault's error shape."""
    api_path = request.match_info["tail"]
    try:
        # Vault's list paths end in "/": allowed here, and never a KV read.
        check_path(api_path.removesuffix("/"), what="the API path")
        if not request.get(CALLER_KEY, True):
            return await _passthrough(request, api_path, request.headers["X-Vault-Token"])
        if request.method == "GET" and api_path.startswith(MOUNTS_PREFIX):
            return await _mount_info(request, api_path[len(MOUNTS_PREFIX) :])
        if request.method == "GET" and api_path == LOOKUP_SELF and not _own_store_token(request):
            return _vault_response({"data": CALLER_TOKEN_INFO})
        read = await _as_kv_read(request, api_path) if request.method == "GET" else None
        if read is None:
            return await _not_a_kv_read(request, api_path)
        try:
            lookup = await request.app[CACHE_KEY].get(read.path, read.version)
        except SecretNotFound as gone:
            if gone.metadata is None or read.version == METADATA:
                raise
            # As Vault: a deleted or destroyed version is a 404 that still shows its metadata
            # (the CLI prints it and exits 0).
            return _vault_response({"data": {"data": None, "metadata": gone.metadata}}, status=404)
        return render(lookup, read.version)
    except Exception as exc:  # every failure becomes a Vault-shaped status in error_response
        return error_response(exc, api_path, vault=True)


def _own_store_token(request: web.Request) -> bool:
    """The caller token came in X-Sidecar-Token and X-Vault-Token is the caller's own store
    token, to be passed through: questions about "self" are then about that token."""
    return (
        request.app[PASSTHROUGH_KEY]
        and "X-Sidecar-Token" in request.headers
        and "X-Vault-Token" in request.headers
    )


_HIT_HEADERS = hit_headers("X-Cache")
_AGE = istr("Age")


def _latest_path(mount: Mount | None, api_path: str) -> str | None:
    """The cache path a plain latest-version read of ``api_path`` means, if that is what it is."""
    if mount is None or not mount.kv:
        return None
    if mount.kv_version == 1:
        return api_path
    action, _, key = api_path[len(mount.path) :].partition("/")
    return mount.path + key if action == "data" and key else None


async def _as_kv_read(request: web.Request, api_path: str) -> _KVRead | None:
    """What cache entry a GET means, or None when it is not a KV read we serve."""
    if api_path.endswith("/") or "list" in request.query:
        return None
    try:
        check_kv_path(api_path)
    except InvalidPath:
        return None  # sys/, auth/...: not a KV read (refused, or passed through)
    cache = request.app[CACHE_KEY]
    if not any(cache.allows(path) for path in kv_candidates(api_path)):
        # Whatever its mount turns out to be, no rule allows it: the store is not asked,
        # not even which mount holds it.
        if request.app[PASSTHROUGH_KEY]:
            return None
        raise PathNotAllowed(api_path)
    mount = await request.app[STORE_KEY].mount(api_path)
    if not mount.kv:
        if not request.app[CACHE_KEY].allows(api_path):
            return None
        # Another engine at a path the rules allow: a leased secret (database credentials),
        # read once and shared (a reply without a lease is refused by the store layer: 400).
        if request.query:
            raise BadRequest(f"unknown query parameter {next(iter(request.query))!r}")
        return _KVRead(api_path, None)
    rest = api_path[len(mount.path) :]
    query = request.query
    if mount.kv_version == 1:
        if query:
            raise BadRequest(f"unknown query parameter {next(iter(query))!r} on a KV v1 read")
        return _KVRead(api_path, None)
    action, _, key = rest.partition("/")
    if action not in ("data", "metadata") or not key:
        return None
    allowed = {"version"} if action == "data" else set()
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}")
    version: int | None = None
    if "version" in query:
        text = query["version"]
        if not whole_number(text):
            raise BadRequest(f"version must be a whole number, got {text!r}")
        version = int(text) or None  # Vault reads version=0 as "the latest"
    return _KVRead(mount.path + key, METADATA if action == "metadata" else version)


async def _mount_info(request: web.Request, path: str) -> web.Response:
    """The CLI's preflight: which mount holds ``path``, and its KV version. Asked of the store
    only for a path the rules allow (the CLI names the secret as the native API does)."""
    check_kv_path(path)
    if not request.app[CACHE_KEY].allows(path):
        raise PathNotAllowed(path)
    mount = await request.app[STORE_KEY].mount(path)
    if not mount.kv:
        raise Refused(
            403, "path_not_allowed", f"{mount.path!r} is not a KV mount: the sidecar serves KV only"
        )
    return _vault_response({"data": dict(mount.info)})


async def _not_a_kv_read(request: web.Request, api_path: str) -> web.Response:
    if not request.app[PASSTHROUGH_KEY]:
        return vault_error(
            405,
            "method_not_allowed",
            f"the sidecar answers KV reads only, and {request.method} {VAULT_PREFIX}{api_path} "
            "is not one; set vault_api.passthrough: true to forward such requests to the store "
            "with the caller's own token",
        )
    # The caller's own store token, never the sidecar's identity: with the caller token in
    # X-Sidecar-Token, X-Vault-Token is the caller's token for the store.
    store_token = (
        request.headers.get("X-Vault-Token") if "X-Sidecar-Token" in request.headers else None
    )
    guard = request.app[GUARD_KEY]
    if not store_token or guard.callers(store_token) or guard.admins(store_token):
        return vault_error(
            403,
            "forbidden",
            "passthrough forwards your own store token, and the one sent is one of the "
            "sidecar's own tokens; send your store token in X-Vault-Token (alone, or with the "
            "caller token in X-Sidecar-Token); the sidecar never lends or forwards its own",
        )
    return await _passthrough(request, api_path, store_token)


async def _passthrough(request: web.Request, api_path: str, store_token: str) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["X-Vault-Token"] = store_token
    body = await read_body(request)
    store = request.app[STORE_KEY]
    forwarded = await store.forward(
        PassThrough(request.method, api_path, list(request.query.items()), body, headers)
    )
    if request.method not in READ_METHODS and 200 <= forwarded.status < 300:
        await _invalidate(request, api_path)
    return web.Response(status=forwarded.status, body=forwarded.body, headers=forwarded.headers)


async def _invalidate(request: web.Request, api_path: str) -> None:
    """A write went through to the store: what the sidecar held for that secret is stale.
    Every secret path the API path can name is dropped (a local purge, no store request: the
    sidecar's identity is never used to ask about a path someone else wrote)."""
    cache = request.app[CACHE_KEY]
    for path in kv_candidates(api_path.removesuffix("/"), actions=KV2_PATHS):
        if cache.controls.purge(path=path):
            log.info("write passed through; cached values dropped", extra={"path": path})


# -- rendering ------------------------------------------------------------------------------


def _vault_response(
    fields: Mapping[str, Any], lease_duration: int = 0, *, status: int = 200
) -> web.Response:
    return web.Response(
        status=status,
        body=_with_request_id(_envelope(fields, lease_duration)),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _envelope(
    fields: Mapping[str, Any],
    lease_duration: int = 0,
    lease_id: str = "",
    renewable: bool = False,
) -> bytes:
    """Vault's response envelope without its first member, ``request_id``, which every
    response gets anew (``_with_request_id``): what is rendered once per cached value."""
    return orjson.dumps(
        {
            "lease_id": lease_id,
            "renewable": renewable,
            "lease_duration": lease_duration,
            **fields,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        }
    )[1:]


# Request IDs as Vault gives them, one per response: UUID-shaped, a random head per process
# and a counter (uuid4() per response would cost as much as the rest of a cache hit).
_ID_HEAD = str(uuid.uuid4())[:24].encode()
_ids = itertools.count()


def _with_request_id(rest: bytes) -> bytes:
    return b'{"request_id":"%s%012x",%s' % (_ID_HEAD, next(_ids) & 0xFFFFFFFFFFFF, rest)


def _leased_body(lookup: Lookup) -> bytes:
    """A shared leased credential in Vault's shape, made per answer: ``lease_duration`` is what
    is left of it for the app (until the sidecar stops serving it), and ``renewable`` is false,
    so that client libraries that count from receipt neither overrun it nor renew or revoke
    a lease every other caller shares: the sidecar renews and replaces it."""
    secret = lookup.entry.secret
    left = int(max(0.0, lookup.entry.secret_class.max_cache_age - lookup.age))
    return _envelope({"data": secret.data}, left, secret.lease_id or "", renewable=False)


def _body(secret: Secret, version: int | None) -> bytes:
    if version == METADATA:
        return _envelope({"data": secret.data})
    if secret.kv_version == 1:
        return _envelope({"data": secret.data}, secret.lease_duration)
    metadata = {
        "created_time": secret.created_time,
        "custom_metadata": secret.custom_metadata,
        "deletion_time": "",  # a deleted or destroyed version is never served
        "destroyed": False,
        "version": secret.version,
    }
    return _envelope({"data": {"data": secret.data, "metadata": metadata}})


def render(lookup: Lookup, version: int | None) -> web.Response:
    """A lookup as Vault answers a read, with ``X-Cache`` and ``Age`` as Vault Agent sends them.
    The body is rendered once per cached value, like the native API; only headers vary."""
    entry = lookup.entry
    body = entry.vault_body
    if entry.secret.lease_id is not None:
        body = _leased_body(lookup)  # what is left of the lease changes with every answer
    elif body is None:
        body = entry.vault_body = _body(entry.secret, version)
    headers = {
        "X-Cache": CACHE_HEADER[lookup.outcome.value],
        "Age": str(int(max(0.0, lookup.age))),
        "Cache-Control": "no-store",
    }
    if lookup.stale:
        headers["Warning"] = '110 - "Response is Stale"'
    return web.Response(
        body=_with_request_id(body), content_type="application/json", headers=headers
    )


def vault_routes(app: web.Application) -> None:
    """Add the Vault-compatible API under /v1/, behind the guard (the caller token, or with
    passthrough the caller's own store token)."""
    app.router.add_route(
        "*", VAULT_PREFIX + r"{tail:[\s\S]*}", guarded(handle, Access.VAULT, VAULT_PREFIX)
    )
