"""``GET /events``: rotation, retired and revoked notices as Server-Sent Events."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from sidecar.core.events import CLOSED
from sidecar.http.errors import BadRequest, Refused, error_response
from sidecar.http.keys import HUB_KEY

KEEPALIVE = 15.0  # seconds between comments on an idle event stream


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: rotation, retired and revoked notices, as they happen."""
    if request.method != "GET":
        return error_response(Refused(405, "method_not_allowed", "subscribe with GET"))
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
