"""HTTP: the secrets API (guards, handler, the one error-to-status function) and the ops API.

The hot path (a fresh hit) does no I/O and encodes no JSON: each cache entry carries its
pre-rendered body, and only the age and staleness are formatted per request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.backend import InvalidRequest, SecretForbidden, SecretNotFound, StoreUnavailable
from sidecar.cache import Entry, Lookup, PathNotAllowed, SecretCache
from sidecar.callers import CallerCheck
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.web")

MAX_PATH_BYTES = 512
DEFAULT_RETRY_AFTER = 2  # seconds, when the store gave no hint
SECRETS_PREFIX = "/secrets/"
QUERY_PARAMS = frozenset({"field", "version"})

CACHE_KEY = web.AppKey("cache", SecretCache)
CALLERS_KEY = web.AppKey("callers", CallerCheck)
METRICS_KEY = web.AppKey("metrics", Metrics)
ReadyReport = Callable[[], Mapping[str, Any]]
READY_KEY: web.AppKey[ReadyReport] = web.AppKey("ready")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """The caller's request is malformed; ``reason`` says how."""


class FieldNotFound(Exception):
    pass


# -- errors -> statuses, in one place ----------------------------------------------------


def error_response(exc: BaseException, path: str | None = None) -> web.Response:
    """Every failure a caller can see becomes a status and a JSON body here and nowhere else.

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
    elif isinstance(exc, StoreUnavailable):
        status, code, reason, detail = 503, "secret_unavailable", exc.reason, exc.detail
        retry = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    else:
        log.exception("unexpected error serving a request", extra={"path": path})
        status, code, reason = 500, "internal_error", "unexpected error; see the sidecar's log"
    body: dict[str, Any] = {"error": code, "reason": reason, "path": path}
    if detail:
        body["detail"] = detail
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _plain_error(status: int, code: str, reason: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": code, "reason": reason}),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


# -- guards, before routing ---------------------------------------------------------------


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse forwarded requests, then check the caller token, then run the handler."""
    response: web.StreamResponse
    if "X-Forwarded-For" in request.headers:
        # A loopback API has no business with proxies; a forwarded request smells of SSRF.
        response = _plain_error(
            400, "bad_request", "X-Forwarded-For is refused: call the sidecar directly"
        )
    else:
        presented = request.headers.get("X-Sidecar-Token") or request.headers.get("X-Vault-Token")
        if presented is None:
            response = _plain_error(
                401,
                "unauthorized",
                "send the caller token in X-Sidecar-Token (or X-Vault-Token); "
                "it is in the sidecar's caller_token_file",
            )
        elif not request.app[CALLERS_KEY](presented):
            response = _plain_error(403, "forbidden", "the caller token is wrong")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # aiohttp's own refusals, in our shape
                code = _HTTP_CODES.get(exc.status, "http_error")
                response = _plain_error(exc.status, code, exc.reason)
    request.app[METRICS_KEY].requests.labels(status=str(response.status)).inc()
    return response


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


def _parse_query(request: web.Request) -> tuple[str | None, int | None]:
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
    if text is not None:
        if not text.isdigit() or not 0 < int(text) < 2**63:
            raise BadRequest(f"version must be a positive whole number, got {text!r}")
        version = int(text)
    return field, version


# -- the secrets handler ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _View:
    """What never changes for one cached value: the envelope minus its age, and each field."""

    head: bytes  # the JSON envelope without its closing members
    fields: Mapping[str, bytes]
    version: str
    class_name: str


def _view(entry: Entry) -> _View:
    view = entry.view
    if isinstance(view, _View):
        return view
    secret = entry.secret
    fetched = datetime.fromtimestamp(entry.fetched_at, UTC).isoformat(timespec="milliseconds")
    document = {
        "path": secret.path,
        "data": secret.data,
        "version": secret.version,
        "kid": secret.kid,
        "fetched_at": fetched.replace("+00:00", "Z"),
        "class": entry.secret_class.name,
    }
    fields = {
        name: value.encode() if isinstance(value, str) else orjson.dumps(value)
        for name, value in secret.data.items()
    }
    view = _View(
        head=orjson.dumps(document)[:-1],
        fields=fields,
        version="" if secret.version is None else str(secret.version),
        class_name=entry.secret_class.name,
    )
    entry.view = view
    return view


_CACHE_HEADER = {"hit": "HIT", "miss": "MISS", "coalesced": "MISS", "stale": "STALE"}


async def get_secret(request: web.Request) -> web.Response:
    path = request.match_info["path"]
    if request.method != "GET":
        return _plain_error(405, "method_not_allowed", "the secrets API is read-only: use GET")
    try:
        validate_path(path)
        field, version = _parse_query(request)
        lookup = await request.app[CACHE_KEY].get(path, version)
        return render(lookup, field)
    except Exception as exc:  # every failure becomes a status in error_response
        return error_response(exc, path)


def render(lookup: Lookup, field: str | None) -> web.Response:
    view = _view(lookup.entry)
    age = max(0.0, lookup.age)
    headers = {
        "X-Sidecar-Cache": _CACHE_HEADER[lookup.outcome.value],
        "Age": str(int(age)),
        "Cache-Control": "no-store",
        "X-Sidecar-Class": view.class_name,
    }
    if view.version:
        headers["X-Sidecar-Version"] = view.version
    if lookup.stale:
        headers["Warning"] = '110 - "Response is Stale"'
    if field is not None:
        value = view.fields.get(field)
        if value is None:
            raise FieldNotFound(repr(field))
        return web.Response(body=value, content_type="text/plain", headers=headers)
    body = view.head + b',"age_seconds":%.3f,"stale":%s}' % (
        age,
        b"true" if lookup.stale else b"false",
    )
    return web.Response(body=body, content_type="application/json", headers=headers)


async def not_found(request: web.Request) -> web.Response:
    return _plain_error(404, "not_found", "no such endpoint; secrets are at /secrets/<path>")


def secrets_routes(app: web.Application) -> None:
    # [\s\S]: a path with an encoded newline must reach the handler (and get its 400).
    app.router.add_route("*", SECRETS_PREFIX + r"{path:[\s\S]*}", get_secret)
    app.router.add_route("*", r"/{tail:[\s\S]*}", not_found)


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
