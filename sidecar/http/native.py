"""The native secrets API: ``/secrets/{path}`` and ``/verify/{path}``. Who may call them is
decided by the guard (``guard.py``), what a failure looks like by ``errors.py``.

The hot path (a fresh hit) does no I/O and encodes no JSON: each cache entry carries its
pre-rendered body, and only the age, staleness and an open overlap are formatted per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import istr

from sidecar.core.cache import Entry, Lookup, SecretCache
from sidecar.core.durations import parse_duration
from sidecar.core.facts import PreviousServed
from sidecar.core.paths import check_kv_path
from sidecar.http.bodies import json_body
from sidecar.http.errors import (
    BadRequest,
    FieldNotFound,
    Refused,
    VersionRetired,
    error_response,
)
from sidecar.http.events import events
from sidecar.http.guard import Access, FastPath, guarded
from sidecar.http.keys import (
    CACHE_KEY,
    FACTS_KEY,
    MAX_WAIT_KEY,
    SECRETS_PREFIX,
    VERIFIER_KEY,
    hit_headers,
)
from sidecar.store.interface import SecretNotFound

log = logging.getLogger("sidecar.http")

QUERY_PARAMS = frozenset({"field", "version", "wait", "newer_than"})


def native_hit(cache: SecretCache) -> FastPath:
    """The native API's fast path for ``hit_front``: a fresh hit on ``/secrets/<path>`` answered
    before routing; None sends the request on its full route."""

    look, wall = cache.hit, cache.wall  # bound once: this runs for every fresh hit

    def fast(path: str) -> web.StreamResponse | None:
        hit = look(path)
        return None if hit is None else _render_hit(hit[0], hit[1], wall)

    return fast


def validate_path(path: str) -> str:
    """The secret path of a native request, checked once at the HTTP boundary."""
    return check_kv_path(path)


def whole_number(text: str) -> bool:
    """ASCII digits only: ``int()`` also takes other scripts' digits, and ``isdigit()``
    accepts superscripts that ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class Query:
    """The checked query parameters of a ``/secrets/`` read (``_parse_query`` makes it)."""

    field: str | None = None
    version: int | None = None  # a version number, or None for the latest
    previous: bool = False  # ``?version=previous``: the version before the latest
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
    previous = text == "previous"
    if text is not None and not previous:
        if not whole_number(text) or not 0 < int(text) < 2**63:
            raise BadRequest(f"version must be a positive whole number or 'previous', got {text!r}")
        version = int(text)
    wait: float | None = None
    if "wait" in query:
        try:
            wait = parse_duration(query["wait"])
        except ValueError as exc:
            raise BadRequest(f"wait: {exc}") from None
        if text is not None:
            raise BadRequest("wait watches the latest version; it does not combine with version")
    newer_than: int | None = None
    if "newer_than" in query:
        if wait is None:
            raise BadRequest(
                "newer_than needs wait (a blocking query), e.g. ?wait=30s&newer_than=3"
            )
        text = query["newer_than"]
        if not whole_number(text) or int(text) >= 2**63:
            raise BadRequest(f"newer_than must be a whole number, got {text!r}")
        newer_than = int(text)
    return Query(field, version, previous, wait, newer_than)


# -- the secrets handler ------------------------------------------------------------------


def _envelope_head(entry: Entry) -> bytes:
    """The envelope without its per-request members (age, staleness, an open overlap),
    rendered once per cached value and kept on the entry: a hit encodes no JSON."""
    head = entry.native_body
    if head is not None:
        return head
    secret = entry.secret
    fetched = datetime.fromtimestamp(entry.fetched_at, UTC).isoformat(timespec="milliseconds")
    envelope: dict[str, object] = {
        "path": secret.path,
        "data": secret.data,
        "version": secret.version,
        "kid": secret.kid,
        "fetched_at": fetched.replace("+00:00", "Z"),
        "class": entry.secret_class.name,
    }
    if secret.lease_id is not None:  # a leased credential: when its lease ends in the store
        ends = datetime.fromtimestamp(entry.fetched_at + secret.lease_duration, UTC)
        envelope["lease_duration"] = secret.lease_duration
        envelope["lease_expires_at"] = ends.isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        )
        envelope["renewable"] = secret.renewable
    head = orjson.dumps(envelope)[:-1]
    entry.native_body = head
    return head


def _overlap_member(entry: Entry, wall: Callable[[], float]) -> bytes:
    """``,"previous_kid": ...`` while the previous version is still served (rare: computed)."""
    version = entry.secret.version
    if not entry.overlap_until or version is None or entry.overlap_until <= wall():
        return b""
    return b',"previous_kid":' + orjson.dumps(f"{entry.secret.path}#{version - 1}")


# Shared by every hit (copied per response, never changed): class and version are in the
# envelope, headers only on ?field= answers.
_HIT_HEADERS = hit_headers("X-Sidecar-Cache")
_AGE = istr("Age")


CACHE_HEADER = {"hit": "HIT", "miss": "MISS", "coalesced": "MISS", "stale": "STALE"}


async def get_secret(request: web.Request) -> web.Response:
    """``GET /secrets/{path}``: a secret's envelope, or one field's bare value (``?field=``), of
    the latest version, a given one, or the previous one during an overlap; with ``?wait=``, a
    blocking query for a newer version (304 when none came in time)."""
    path = request.match_info["path"]
    cache = request.app[CACHE_KEY]
    if request.method == "GET" and "?" not in request.raw_path:
        # A fresh hit the pre-router front could not take (an escaped spelling of the path,
        # or no front: a plain aiohttp runner): the guard has passed, so answer it the same
        # way. Its path was validated when first fetched: a dict lookup and prepared bytes.
        hit = cache.hit(path)
        if hit is not None:
            return _render_hit(*hit, cache.wall)
    if request.method != "GET":
        return error_response(
            Refused(405, "method_not_allowed", "the secrets API is read-only: use GET")
        )
    try:
        validate_path(path)
        query = _parse_query(request)
        if query.previous:
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
        return render(lookup, query.field, cache.wall)
    except Exception as exc:  # every failure becomes a status in error_response
        return error_response(exc, path)


async def _previous(request: web.Request, path: str) -> Lookup:
    cache = request.app[CACHE_KEY]
    latest = await cache.get(path, serve=False)  # the app reads the previous one, not this
    if latest.entry.secret.lease_id is not None:  # a leased credential: the one it replaced
        previous = cache.previous_lease(path)
        if previous is None:
            raise VersionRetired(
                "no previous credential is served: none was replaced yet, or its overlap "
                f"({latest.entry.secret_class.overlap:g}s) ended"
            )
        request.app[FACTS_KEY].notify(PreviousServed(previous.entry.secret_class))
        return previous
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
    request.app[FACTS_KEY].notify(PreviousServed(previous.entry.secret_class))
    return previous


def _render_hit(entry: Entry, age: float, wall: Callable[[], float]) -> web.Response:
    head = entry.native_body or _envelope_head(entry)
    headers = _HIT_HEADERS.copy()
    headers[_AGE] = str(int(age))
    overlap = _overlap_member(entry, wall) if entry.overlap_until else b""
    body = head + b'%s,"age_seconds":%.3f,"stale":false}' % (overlap, age)
    return web.Response(body=body, headers=headers)


def render(lookup: Lookup, field: str | None, wall: Callable[[], float]) -> web.Response:
    """A lookup as the native API answers it: the envelope, or one field's bare value."""
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
    body = _envelope_head(entry) + b'%s,"age_seconds":%.3f,"stale":%s}' % (
        _overlap_member(entry, wall),
        age,
        b"true" if lookup.stale else b"false",
    )
    return web.Response(body=body, content_type="application/json", headers=headers)


async def verify_secret(request: web.Request) -> web.Response:
    """``POST /verify/{path}`` with ``{"field", "value"}``: which version of the secret a
    credential is (current, previous, retired or unknown)."""
    path = request.match_info["path"]
    if request.method != "POST":
        return error_response(
            Refused(405, "method_not_allowed", "verify with POST and a JSON body")
        )
    try:
        validate_path(path)
        if request.query:
            raise BadRequest("verify takes no query parameters")
        body = await json_body(request, required={"field", "value"}, optional=set())
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


async def not_found(request: web.Request) -> web.Response:
    """The guarded 404 for whatever no other route serves."""
    return error_response(
        Refused(404, "not_found", "no such endpoint; secrets are at /secrets/<path>")
    )


def secrets_routes(app: web.Application) -> None:
    """Add the native API's routes to ``app``: /secrets/, /verify/ and /events, for callers."""
    # [\s\S]: a path with an encoded newline must reach the handler (and get its 400).
    app.router.add_route(
        "*", SECRETS_PREFIX + r"{path:[\s\S]*}", guarded(get_secret, Access.CALLER, SECRETS_PREFIX)
    )
    app.router.add_route(
        "*", r"/verify/{path:[\s\S]*}", guarded(verify_secret, Access.CALLER, "/verify/")
    )
    app.router.add_route("*", "/events", guarded(events, Access.CALLER, "/events"))


def fallback_route(app: web.Application) -> None:
    """Last: whatever no other route took is a guarded 404."""
    app.router.add_route("*", r"/{tail:[\s\S]*}", guarded(not_found, Access.EITHER))
