"""HTTP for the admin token: purge, incident cache windows, status. Loopback only, like the
secrets API; callers' tokens are refused here (see guard.py)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sidecar.core.durations import parse_duration
from sidecar.http.bodies import json_body
from sidecar.http.errors import BadRequest, error_response
from sidecar.http.guard import Access, guarded
from sidecar.http.keys import ADMIN_KEY, STATUS_KEY
from sidecar.http.native import validate_path
from sidecar.http.status_page import render_status_page


def _json(document: dict[str, Any]) -> web.Response:
    return web.Response(
        body=orjson.dumps(document),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def purge(request: web.Request) -> web.Response:
    """``{"path": P}``, ``{"prefix": P}`` or ``{"all": true}``: drop from memory and snapshot."""
    try:
        body = await json_body(request, required=set(), optional={"path", "prefix", "all"})
        if len(body) != 1:
            raise BadRequest('give exactly one of "path", "prefix" or "all": true')
        admin = request.app[ADMIN_KEY]
        if "path" in body:
            count = await admin.purge(path=validate_path(_text(body, "path")))
        elif "prefix" in body:
            count = await admin.purge(prefix=_text(body, "prefix"))
        elif body["all"] is True:
            count = await admin.purge()
        else:
            raise BadRequest('"all" must be true')
    except Exception as exc:
        return error_response(exc)
    return _json({"purged": count})


async def extend(request: web.Request) -> web.Response:
    """``{"class": C, "max_cache_age": "2h", "for": "1h"}``: a temporary, audited window."""
    try:
        body = await json_body(request, required={"class", "max_cache_age", "for"}, optional=set())
        name = _text(body, "class")
        try:
            max_age = parse_duration(body["max_cache_age"])
            duration = parse_duration(body["for"])
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        requested = f"max_cache_age={body['max_cache_age']} for={body['for']}"
        result = request.app[ADMIN_KEY].extend(name, max_age, duration, requested)
    except Exception as exc:
        return error_response(exc)
    return _json(result)


async def status(request: web.Request) -> web.Response:
    """``GET /admin/status``: what on-call checks at a glance: each value held (class, owner,
    version, age against its limits, state, last error; never the value), the store nodes and
    circuits, the sidecar's token, the snapshot, incident windows and revocations."""
    return _json(dict(request.app[STATUS_KEY]()))


async def status_page(request: web.Request) -> web.Response:
    """``GET /admin/status.html``: the same report as a page for a browser (through `kubectl
    port-forward`; the browser asks for the admin token as the password of a Basic login)."""
    return web.Response(
        text=render_status_page(request.app[STATUS_KEY]()),
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            # no script, no frame, nothing fetched from elsewhere: only the page's own styles
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise BadRequest(f'"{key}" must be a non-empty string')
    return value


def admin_routes(app: web.Application) -> None:
    """Add the admin endpoints, each behind the guard for the admin token only."""
    for path, handler, method in (
        ("/admin/purge", purge, "POST"),
        ("/admin/extend", extend, "POST"),
        ("/admin/status", status, "GET"),
    ):
        app.router.add_route(method, path, guarded(handler, Access.ADMIN, path))
    page = "/admin/status.html"
    app.router.add_get(page, guarded(status_page, Access.ADMIN, page, challenge=True))
