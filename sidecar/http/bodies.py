"""Request bodies, read with limits: their size, and the time they may take to arrive."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from sidecar.http.errors import BadRequest, PayloadTooLarge
from sidecar.http.keys import HTTP_KEY, MAX_BODY


async def read_body(request: web.Request) -> bytes:
    """The whole request body: at most MAX_BODY bytes, declared or chunked, and all of it
    within ``http.header_timeout`` (a body that drips in must not hold a handler)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes")
    deadline = request.app[HTTP_KEY].header_timeout
    try:
        async with asyncio.timeout(deadline):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked: no Content-Length to check in advance
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes") from None
    except TimeoutError:
        raise BadRequest(
            f"the body did not arrive within {deadline:g}s (http.header_timeout)"
        ) from None


async def json_body(
    request: web.Request, *, required: set[str], optional: set[str]
) -> dict[str, Any]:
    """The body as a JSON object with exactly the expected keys: an unknown or missing key is a
    400 naming it, so a typo is never silently ignored."""
    raw = await read_body(request)
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
