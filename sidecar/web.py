"""HTTP: the secrets API (guards, handlers, the one error-to-status function) and the ops API.

The hot path (a fresh hit) does no I/O and encodes no JSON: each cache entry carries its
pre-rendered body, and only the age, staleness and an open overlap are formatted per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, istr
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.admin import Admin, AdminError
from sidecar.backend import InvalidRequest, SecretForbidden, SecretNotFound, StoreUnavailable
from sidecar.cache import Entry, Lookup, PathNotAllowed, SecretCache, SecretRevoked
from sidecar.callers import CallerCheck
from sidecar.durations import parse_duration
from sidecar.events import CLOSED, EventHub
from sidecar.metrics import Metrics
from sidecar.verify import Verifier

log = logging.getLogger("sidecar.web")

MAX_PATH_BYTES = 512
DEFAULT_RETRY_AFTER = 2  # seconds, when the store gave no hint
SECRETS_PREFIX = "/secrets/"
ADMIN_PREFIX = "/admin/"
VAULT_PREFIX = "/v1/"
QUERY_PARAMS = frozenset({"field", "version", "wait", "newer_than"})
MAX_BODY = 64 * 1024
KEEPALIVE = 15.0  # seconds between comments on an idle event stream

CACHE_KEY = web.AppKey("cache", SecretCache)
CALLERS_KEY = web.AppKey("callers", CallerCheck)
ADMINS_KEY = web.AppKey("admins", CallerCheck)
METRICS_KEY = web.AppKey("metrics", Metrics)
VERIFIER_KEY = web.AppKey("verifier", Verifier)
HUB_KEY = web.AppKey("hub", EventHub)
ADMIN_KEY = web.AppKey("admin", Admin)
MAX_WAIT_KEY = web.AppKey("max_wait", float)
PASSTHROUGH_KEY = web.AppKey("vault_passthrough", bool)
CALLER_KEY = web.RequestKey("caller", bool)  # False: not the caller token (passthrough only)
ReadyReport = Callable[[], Mapping[str, Any]]
READY_KEY: web.AppKey[ReadyReport] = web.AppKey("ready")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Case-insensitive header names, made once (a plain str is converted on every lookup).
_FORWARDED_FOR = istr("X-Forwarded-For")
_SIDECAR_TOKEN = istr("X-Sidecar-Token")
_VAULT_TOKEN = istr("X-Vault-Token")


class BadRequest(Exception):
    """The caller's request is malformed; ``reason`` says how."""


class FieldNotFound(Exception):
    pass


class VersionRetired(Exception):
    """``?version=previous`` after the overlap: the previous version is no longer served."""


# -- errors -> statuses, in one place ----------------------------------------------------


def error_response(
    exc: BaseException, path: str | None = None, *, vault: bool = False
) -> web.Response:
    """Every failure a caller can see becomes a status and a body here and nowhere else:
    our JSON (``error``, ``reason``, ``path``), or Vault's ``{"errors": [...]}`` for the
    Vault-compatible API.

    404/403 mean the secret is invalid (the store answered no); 503 means it is unavailable
    (nobody could ask). The two never share a status.
    """
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    detail: str | None = None
    if isinstance(exc, BadRequest):
        status, code, reason = 400, "bad_request", str(exc)
    elif isinstance(exc, InvalidRequest):
        status, code, reason = 400, "bad_request", exc.reason
    elif isinstance(exc, PathNotAllowed):
        status, code = 403, "path_not_allowed"
        reason = "no rule under 'secrets' in the sidecar's configuration matches this path"
    elif isinstance(exc, SecretNotFound):
        status, code, reason = 404, "secret_not_found", exc.reason
    elif isinstance(exc, FieldNotFound):
        status, code, reason = 404, "field_not_found", f"the secret has no field {exc}"
    elif isinstance(exc, SecretForbidden):
        status, code, reason = 403, "secret_forbidden", exc.reason
    elif isinstance(exc, VersionRetired):
        status, code, reason = 410, "version_retired", str(exc)
    elif isinstance(exc, SecretRevoked):
        status, code, reason = 410, "secret_revoked", exc.reason
    elif isinstance(exc, AdminError):
        status, code, reason = exc.status, _HTTP_CODES.get(exc.status, "bad_request"), exc.reason
    elif isinstance(exc, StoreUnavailable):
        status, code, reason, detail = 503, "secret_unavailable", exc.reason, exc.detail
        retry = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    else:
        log.exception("unexpected error serving a request", extra={"path": path})
        status, code, reason = 500, "internal_error", "unexpected error; see the sidecar's log"
    if vault:
        return vault_error(status, code, reason, detail, headers)
    body: dict[str, Any] = {"error": code, "reason": reason, "path": path}
    if detail:
        body["detail"] = detail
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def vault_error(
    status: int,
    code: str,
    reason: str,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Vault's error shape. A plain 404 has no message, as Vault's own (the CLI then says
    "No value found at ..."); others carry our code and reason."""
    if code in ("secret_not_found", "not_found"):
        errors: list[str] = []
    elif code == "secret_forbidden":
        errors = ["permission denied"]
    else:
        errors = [f"{code}: {reason}" + (f" ({detail})" if detail else "")]
    return web.Response(
        status=status,
        body=orjson.dumps({"errors": errors}),
        content_type="application/json",
        headers=headers or {"Cache-Control": "no-store"},
    )


def _plain_error(status: int, code: str, reason: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": code, "reason": reason}),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


# -- guards, before routing ---------------------------------------------------------------


def guarded(handler: Handler) -> Handler:
    """Every route's handler runs behind this guard: refuse forwarded requests, then check the
    token (the admin token for /admin/, the caller token for everything else: neither opens
    the other's door), then run the handler. Refusals on the Vault-compatible API (/v1/) come
    in Vault's error shape. (A wrapper, not an aiohttp middleware: the middleware machinery
    costs as much per request as a whole cache hit.)"""

    async def guard(request: web.Request) -> web.StreamResponse:
        headers = request.headers
        raw_path = request.raw_path  # undecoded: the prefixes are ASCII, and it costs nothing
        refuse = vault_error if raw_path.startswith(VAULT_PREFIX) else _plain_error
        response: web.StreamResponse
        if _FORWARDED_FOR in headers:
            # A loopback API has no business with proxies; a forwarded request smells of SSRF.
            response = refuse(
                400, "bad_request", "X-Forwarded-For is refused: call the sidecar directly"
            )
        else:
            presented = headers.get(_SIDECAR_TOKEN) or headers.get(_VAULT_TOKEN)
            admin_path = raw_path.startswith(ADMIN_PREFIX)
            app = request.app
            if presented is None:
                response = refuse(
                    401,
                    "unauthorized",
                    "send the admin token in X-Sidecar-Token; it is in the sidecar's "
                    "admin_token_file"
                    if admin_path
                    else "send the caller token in X-Sidecar-Token (or X-Vault-Token); "
                    "it is in the sidecar's caller_token_file",
                )
            else:
                # Each comparison is constant-time; the admin one is needed only off the
                # common path.
                is_caller = app[CALLERS_KEY](presented)
                is_admin = (admin_path or not is_caller) and app[ADMINS_KEY](presented)
                if admin_path and not is_admin:
                    response = refuse(
                        403,
                        "forbidden",
                        "admin endpoints need the admin token"
                        + (" (not the caller token)" if is_caller else ""),
                    )
                elif (
                    not is_caller
                    and not is_admin
                    and refuse is vault_error
                    and _SIDECAR_TOKEN not in headers
                    and app.get(PASSTHROUGH_KEY, False)
                ):
                    # Vault API passthrough: a token that is not ours is the caller's own
                    # store token. It may only be forwarded, never answered from the cache.
                    request[CALLER_KEY] = False
                    response = await handler(request)
                elif not admin_path and not is_caller:
                    response = refuse(
                        403,
                        "forbidden",
                        "the admin token is for /admin/ only"
                        if is_admin
                        else "the caller token is wrong",
                    )
                else:
                    try:
                        response = await handler(request)
                    except web.HTTPException as exc:  # aiohttp's own refusals, in our shape
                        code = _HTTP_CODES.get(exc.status, "http_error")
                        response = refuse(exc.status, code, exc.reason)
        statuses = request.app[METRICS_KEY].http_statuses
        statuses[response.status] = statuses.get(response.status, 0) + 1
        return response

    return guard


# -- the hit front: before routing -------------------------------------------------------

# A fast path answers a fresh cache hit from the path after its prefix, or returns None (then
# the request takes the full route). Synchronous: a hit awaits nothing.
FastPath = Callable[[str], web.StreamResponse | None]
FAST_PATHS_KEY = web.AppKey("fast_paths", dict)


def hit_front(app: web.Application, routed: Handler) -> Handler:
    """Serve fresh hits before aiohttp's router and per-route dispatch, which cost as much
    as all of a hit's own work; everything else (misses, errors, refusals) goes ``routed``.
    The same checks as ``guard`` come first: no X-Forwarded-For, the caller token."""
    fast_paths: dict[str, FastPath] = app.get(FAST_PATHS_KEY, {})
    callers = app[CALLERS_KEY]
    statuses = app[METRICS_KEY].http_statuses

    async def front(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            raw = request.raw_path
            for prefix, fast in fast_paths.items():
                if not raw.startswith(prefix):
                    continue
                headers = request.headers
                token = headers.get(_SIDECAR_TOKEN) or headers.get(_VAULT_TOKEN)
                # Encoded or queried paths, and anything doubtful, take the full route.
                if (
                    token is not None
                    and "?" not in raw
                    and "%" not in raw
                    and _FORWARDED_FOR not in headers
                    and callers(token)
                ):
                    response = fast(raw[len(prefix) :])
                    if response is not None:
                        statuses[200] = statuses.get(200, 0) + 1
                        return response
                break
        return await routed(request)

    return front


def native_hit(cache: SecretCache) -> FastPath:
    def fast(path: str) -> web.StreamResponse | None:
        hit = cache.hit(path)
        return None if hit is None else _render_hit(*hit)

    return fast


def validate_path(path: str) -> str:
    if not path:
        raise BadRequest("the secret path is empty; use /secrets/<mount>/<path>")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadRequest(f"the secret path is longer than {MAX_PATH_BYTES} bytes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise BadRequest("the secret path contains NUL or control characters")
    if "\\" in path:
        raise BadRequest("the secret path contains a backslash")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise BadRequest(
                "the secret path contains an empty, '.' or '..' segment "
                "(no traversal, no '//', no leading or trailing '/')"
            )
    return path


PREVIOUS = -1  # ``?version=previous``


@dataclass(frozen=True, slots=True)
class Query:
    field: str | None = None
    version: int | None = None  # a version number, PREVIOUS, or None for the latest
    wait: float | None = None
    newer_than: int | None = None


def _parse_query(request: web.Request) -> Query:
    query = request.query
    unknown = sorted(set(query) - QUERY_PARAMS)
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0]!r} (allowed: {', '.join(sorted(QUERY_PARAMS))})"
        )
    for name in query:
        if len(query.getall(name)) > 1:
            raise BadRequest(f"query parameter {name!r} given more than once")
    field = query.get("field")
    if field is not None and not field:
        raise BadRequest("field must not be empty")
    version: int | None = None
    text = query.get("version")
    if text == "previous":
        version = PREVIOUS
    elif text is not None:
        if not text.isdigit() or not 0 < int(text) < 2**63:
            raise BadRequest(f"version must be a positive whole number or 'previous', got {text!r}")
        version = int(text)
    wait: float | None = None
    if "wait" in query:
        try:
            wait = parse_duration(query["wait"])
        except ValueError as exc:
            raise BadRequest(f"wait: {exc}") from None
        if version is not None:
            raise BadRequest("wait watches the latest version; it does not combine with version")
    newer_than: int | None = None
    if "newer_than" in query:
        if wait is None:
            raise BadRequest(
                "newer_than needs wait (a blocking query), e.g. ?wait=30s&newer_than=3"
            )
        text = query["newer_than"]
        if not text.isdigit() or int(text) >= 2**63:
            raise BadRequest(f"newer_than must be a whole number, got {text!r}")
        newer_than = int(text)
    return Query(field, version, wait, newer_than)


# -- the secrets handler ------------------------------------------------------------------


def _head(entry: Entry) -> bytes:
    """The envelope without its per-request members, rendered once per cached value (and
    kept on the entry): a hit encodes no JSON."""
    head = entry.view
    if isinstance(head, bytes):
        return head
    secret = entry.secret
    fetched = datetime.fromtimestamp(entry.fetched_at, UTC).isoformat(timespec="milliseconds")
    head = orjson.dumps(
        {
            "path": secret.path,
            "data": secret.data,
            "version": secret.version,
            "kid": secret.kid,
            "fetched_at": fetched.replace("+00:00", "Z"),
            "class": entry.secret_class.name,
        }
    )[:-1]
    entry.view = head
    return head


def _overlap_member(entry: Entry) -> bytes:
    """``,"previous_kid": ...`` while the previous version is still served (rare: computed)."""
    version = entry.secret.version
    if not entry.overlap_until or version is None or entry.overlap_until <= time.time():
        return b""
    return b',"previous_kid":' + orjson.dumps(f"{entry.secret.path}#{version - 1}")


# Shared by every hit (copied per response, never changed): class and version are in the
# envelope, headers only on ?field= answers.
_HIT_HEADERS = CIMultiDict(
    {"Content-Type": "application/json", "X-Sidecar-Cache": "HIT", "Cache-Control": "no-store"}
)
_AGE = istr("Age")


CACHE_HEADER = {"hit": "HIT", "miss": "MISS", "coalesced": "MISS", "stale": "STALE"}


async def get_secret(request: web.Request) -> web.Response:
    path = request.match_info["path"]
    if request.method == "GET" and "?" not in request.raw_path:
        # The hot path: a fresh value already served once. Its path was validated when it
        # was first fetched, so nothing here but a dict lookup and pre-rendered bytes.
        hit = request.app[CACHE_KEY].hit(path)
        if hit is not None:
            return _render_hit(*hit)
    if request.method != "GET":
        return _plain_error(405, "method_not_allowed", "the secrets API is read-only: use GET")
    try:
        validate_path(path)
        query = _parse_query(request)
        cache = request.app[CACHE_KEY]
        if query.version == PREVIOUS:
            lookup = await _previous(request, path)
        elif query.wait is not None:
            lookup = await cache.get(path)
            current = lookup.entry.secret.version
            if current is None:
                raise BadRequest("wait needs a versioned (KV v2) secret")
            newer_than = current if query.newer_than is None else query.newer_than
            if current <= newer_than:
                wait = min(query.wait, request.app[MAX_WAIT_KEY])
                waited = await cache.wait_newer(path, newer_than, wait)
                if waited is None:
                    return web.Response(
                        status=304,
                        headers={"X-Sidecar-Version": str(current), "Cache-Control": "no-store"},
                    )
                lookup = waited
        else:
            lookup = await cache.get(path, query.version)
        return render(lookup, query.field)
    except Exception as exc:  # every failure becomes a status in error_response
        return error_response(exc, path)


async def _previous(request: web.Request, path: str) -> Lookup:
    cache = request.app[CACHE_KEY]
    latest = await cache.get(path)
    current = latest.entry.secret.version
    if current is None:
        raise BadRequest("KV v1 secrets have no versions, so no previous one")
    if current < 2:
        raise SecretNotFound(f"version {current} is the first: there is no previous version")
    if cache.overlap(path) is None:
        if latest.entry.secret_class.overlap <= 0:
            raise VersionRetired(
                f"class {latest.entry.secret_class.name!r} has no overlap: only the current "
                f"version ({current}) is served"
            )
        raise VersionRetired(f"version {current - 1} was retired when its overlap ended")
    previous = await cache.get(path, current - 1)
    request.app[METRICS_KEY].previous_served.labels(previous.entry.secret_class.name).inc()
    return previous


def _render_hit(entry: Entry, age: float) -> web.Response:
    head = entry.view if isinstance(entry.view, bytes) else _head(entry)
    headers = _HIT_HEADERS.copy()
    headers[_AGE] = str(int(age))
    overlap = _overlap_member(entry) if entry.overlap_until else b""
    body = head + b'%s,"age_seconds":%.3f,"stale":false}' % (overlap, age)
    return web.Response(body=body, headers=headers)


def render(lookup: Lookup, field: str | None) -> web.Response:
    entry = lookup.entry
    age = max(0.0, lookup.age)
    headers = {
        "X-Sidecar-Cache": CACHE_HEADER[lookup.outcome.value],
        "Age": str(int(age)),
        "Cache-Control": "no-store",
    }
    if lookup.stale:
        headers["Warning"] = '110 - "Response is Stale"'
    if field is not None:
        data = entry.secret.data
        if field not in data:
            raise FieldNotFound(repr(field))
        value = data[field]
        # A bare value has no envelope: its class and version travel as headers.
        headers["X-Sidecar-Class"] = entry.secret_class.name
        if entry.secret.version is not None:
            headers["X-Sidecar-Version"] = str(entry.secret.version)
        return web.Response(
            body=value.encode() if isinstance(value, str) else orjson.dumps(value),
            content_type="text/plain",
            headers=headers,
        )
    body = _head(entry) + b'%s,"age_seconds":%.3f,"stale":%s}' % (
        _overlap_member(entry),
        age,
        b"true" if lookup.stale else b"false",
    )
    return web.Response(body=body, content_type="application/json", headers=headers)


async def verify_secret(request: web.Request) -> web.Response:
    path = request.match_info["path"]
    if request.method != "POST":
        return _plain_error(405, "method_not_allowed", "verify with POST and a JSON body")
    try:
        validate_path(path)
        if request.query:
            raise BadRequest("verify takes no query parameters")
        body = await _json_body(request, required={"field", "value"}, optional=set())
        field = body["field"]
        if not isinstance(field, str) or not field:
            raise BadRequest("field must be a non-empty string")
        verdict = await request.app[VERIFIER_KEY].verify(path, field, body["value"])
    except Exception as exc:
        return error_response(exc, path)
    document: dict[str, Any] = {
        "match": verdict.match.value,
        "kid": verdict.kid,
        "version": verdict.version,
        "current_version": verdict.current_version,
    }
    if verdict.unchecked:
        document["unchecked_versions"] = verdict.unchecked
    return web.Response(
        body=orjson.dumps(document),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _json_body(
    request: web.Request, *, required: set[str], optional: set[str]
) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} in the body")
    missing = sorted(required - set(body))
    if missing:
        raise BadRequest(f"the body needs {missing[0]!r}")
    return body


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: rotation, retired and revoked notices, as they happen."""
    if request.method != "GET":
        return _plain_error(405, "method_not_allowed", "subscribe with GET")
    if request.query:
        return error_response(BadRequest("events takes no query parameters"))
    hub = request.app[HUB_KEY]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    queue = hub.subscribe()
    try:
        await response.write(b": subscribed\n\n")
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    event = await queue.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is CLOSED:
                break
            name = str(event["event"]).encode()
            await response.write(b"event: %s\ndata: %s\n\n" % (name, orjson.dumps(event)))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(queue)
    return response


async def not_found(request: web.Request) -> web.Response:
    return _plain_error(404, "not_found", "no such endpoint; secrets are at /secrets/<path>")


def secrets_routes(app: web.Application) -> None:
    # [\s\S]: a path with an encoded newline must reach the handler (and get its 400).
    app.router.add_route("*", SECRETS_PREFIX + r"{path:[\s\S]*}", guarded(get_secret))
    app.router.add_route("*", r"/verify/{path:[\s\S]*}", guarded(verify_secret))
    app.router.add_route("*", "/events", guarded(events))


def fallback_route(app: web.Application) -> None:
    """Last: whatever no other route took is a guarded 404."""
    app.router.add_route("*", r"/{tail:[\s\S]*}", guarded(not_found))


# -- the ops API: metrics, liveness, readiness ---------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, dumps=lambda o: orjson.dumps(o).decode())


async def readyz(request: web.Request) -> web.Response:
    report = dict(request.app[READY_KEY]())
    status = 200 if report.get("ready") else 503
    return web.json_response(report, status=status, dumps=lambda o: orjson.dumps(o).decode())


def ops_routes(app: web.Application, metrics: Metrics) -> None:
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
