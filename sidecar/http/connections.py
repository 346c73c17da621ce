"""What one local process can hold on a listener: a cap on connections, a deadline for request
headers, and room kept for the connections that do work.

Every accepted connection is known to a ``ConnectionGuard`` (one per listener):

- at ``max_connections``, the oldest connection that is owed nothing (no request in progress,
  or a reader that stopped reading its answers) is closed to make room; only when every open
  connection is busy is the new one refused. A flood of idle, trickling or unread sockets
  therefore cannot lock out the application's reads or the kubelet's probes, and never
  exhausts the file descriptors;
- a new connection must deliver complete request headers within ``header_timeout``;
- an idle kept-alive connection is closed after ``keepalive_timeout`` (aiohttp's own timer,
  which also cuts a next request whose headers never complete).

Each closure is counted (``sidecar_http_connections_closed_total{listener,reason}``) and logged
(at most one line per reason every 10 seconds, with the number left out). The bookkeeping hangs
off aiohttp's own connection hooks (``Server.connection_made``/``connection_lost``) and one
dictionary lookup per request: a cache hit pays next to nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler

from sidecar.core.facts import ConnectionClosed, ConnectionsOpen, Listener, Quiet
from sidecar.core.loglimit import LogLimiter
from sidecar.http.keys import SERVER

log = logging.getLogger("sidecar.connections")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Answers a request at once without awaiting anything (a fresh cache hit), or None.
Fast = Callable[[web.Request], web.StreamResponse | None]
FD_RESERVE = 256  # descriptors kept for the store's connections, files and the other listener

_REASONS = {
    "limit": "connection refused: every open connection is busy",
    "evicted": "idle connection closed to make room for a new one",
    "header_timeout": "connection closed: no complete request headers in time",
}


class _Connection:
    __slots__ = ("handler", "handling", "requests", "timer", "transport")

    def __init__(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.handler = handler
        self.transport = transport
        self.handling = 0  # requests in progress (a routed one may await for minutes)
        self.requests = 0  # requests seen so far
        self.timer: asyncio.TimerHandle | None = None

    @property
    def evictable(self) -> bool:
        """Owed nothing: no request in progress, or a reader that stopped reading (its
        writes are paused: a client that pipelines requests and never reads the answers
        must not hold a slot)."""
        return not self.handling or self.handler.writing_paused


class ConnectionGuard:
    """One listener's connection bookkeeping: the cap (an idle connection is evicted before a new
    one is refused), the header deadline, and the counts and logs, so a flood of idle or slow
    sockets cannot lock out real requests."""

    def __init__(
        self,
        listener: str,
        limit: int,
        header_timeout: float,
        facts: Listener | None = None,
    ) -> None:
        self.listener = listener
        self.limit = limit
        self.header_timeout = header_timeout
        self._open: dict[RequestHandler, _Connection] = {}  # insertion order: oldest first
        self._facts: Listener = facts or Quiet()
        self._log_limit = LogLimiter(burst=1, period=10.0)

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Admit a new connection: at the cap, evict the oldest one that is owed nothing, or
        refuse this one when every open one is busy; then start its header deadline."""
        if len(self._open) >= self.limit:
            victim = next((c for c in self._open.values() if c.evictable), None)
            if victim is None:
                self._closing("limit")
                # Not now: aiohttp is still setting this connection up; aborting under it
                # would fail its request task (a traceback per refusal). Its
                # connection_lost follows the abort and cleans up.
                asyncio.get_running_loop().call_soon(transport.abort)
                return
            self._closing("evicted")
            self._forget(victim)
            victim.transport.abort()
        connection = _Connection(handler, transport)
        connection.timer = asyncio.get_running_loop().call_later(
            self.header_timeout, self._headers_late, connection
        )
        self._open[handler] = connection
        self._gauge()

    def closed(self, handler: RequestHandler) -> None:
        """Forget a connection that ended, so it no longer counts toward the cap."""
        connection = self._open.get(handler)
        if connection is not None:
            self._forget(connection)

    def _forget(self, connection: _Connection) -> None:
        if connection.timer is not None:
            connection.timer.cancel()
        if self._open.pop(connection.handler, None) is not None:
            self._gauge()

    def _headers_late(self, connection: _Connection) -> None:
        connection.timer = None
        if not connection.requests:
            self._closing("header_timeout")
            self._forget(connection)
            connection.transport.abort()

    def _closing(self, reason: str) -> None:
        self._facts.notify(ConnectionClosed(self.listener, reason))
        dropped = self._log_limit.allow(reason)
        if dropped is not None:
            log.warning(
                _REASONS[reason],
                extra={
                    "listener": self.listener,
                    "reason": reason,
                    "open": len(self._open),
                    "max_connections": self.limit,
                    **({"similar_not_logged": dropped} if dropped else {}),
                },
            )

    def front(self, handler: Handler, fast: Fast | None = None) -> Handler:
        """The request handler of a guarded server: ``fast`` first (synchronous: nothing to
        track), then ``handler`` with its connection marked busy while it runs."""
        connections = self._open

        async def guarded(request: web.Request) -> web.StreamResponse:
            connection = connections.get(request.protocol)
            if connection is not None:
                connection.requests += 1
            if fast is not None:
                response = fast(request)
                if response is not None:
                    return response
            if connection is None:
                return await handler(request)
            connection.handling += 1
            try:
                return await handler(request)
            finally:
                connection.handling -= 1

        return guarded

    def _gauge(self) -> None:
        self._facts.notify(ConnectionsOpen(self.listener, len(self._open)))


LIST_REFUSED = (
    "the sidecar does not take the LIST method (its HTTP server cannot parse it): the "
    "Vault-compatible API serves KV reads from the cache. List with GET and ?list=true, which "
    "is forwarded to the store with your own token when vault_api.passthrough is on, or ask "
    "the store directly"
)


class _Handler(RequestHandler):
    """aiohttp's connection handler, with one refusal in Vault's shape: ``LIST`` (what hvac's
    ``list_secrets`` and ``bao kv list`` send) fails in the HTTP parser, before any route, and
    would otherwise come back as a bare text 400 quoting the request line."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A Vault-shaped 405 for LIST; aiohttp's own answer for anything else."""
        if isinstance(exc, BadHttpMethod) and "b'LIST " in str(exc.message):
            response = web.Response(
                status=405,
                body=orjson.dumps({"errors": [LIST_REFUSED]}),
                content_type="application/json",
                headers={"Server": SERVER, "Cache-Control": "no-store"},
            )
            response.force_close()
            return response
        return super().handle_error(request, status, exc, message)


class GuardedServer(web.Server):
    """aiohttp's low-level server, telling the guard of each connection made and lost."""

    guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        """A connection handler of our own kind (see ``_Handler``)."""
        return _Handler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Tell the guard of each new connection, so the cap and the header deadline apply from
        its first byte."""
        super().connection_made(handler, transport)
        self.guard.opened(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        """Tell the guard that a connection ended, freeing its slot."""
        super().connection_lost(handler, exc)
        self.guard.closed(handler)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server guards connections; ``fast`` answers what it can before the
    application's router (fresh cache hits, on the secrets API)."""

    def __init__(
        self,
        app: web.Application,
        guard: ConnectionGuard,
        *,
        fast: Callable[[web.Application], Fast] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self._fast = fast

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's request factory makes web.Request objects, whatever the type says.
        routed = cast(Handler, server.request_handler)
        fast = self._fast(self.app) if self._fast is not None else None
        server.request_handler = cast(Any, self.guard.front(routed, fast))
        # aiohttp's Server has no slots and is built inside the runner: adopt it as ours.
        server.__class__ = GuardedServer
        cast(GuardedServer, server).guard = self.guard
        return server


def fit_to_descriptors(limits: dict[str, int]) -> dict[str, int]:
    """Raise the soft limit on open files to the hard limit, then make the listeners' caps
    fit in it with room to spare: running out of descriptors fails every socket at once,
    the store's included, and says nothing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    wanted = sum(limits.values()) + FD_RESERVE
    if soft == resource.RLIM_INFINITY or wanted <= soft:
        return dict(limits)
    share = max(0.0, (soft - FD_RESERVE) / sum(limits.values()))
    fitted = {name: max(4, int(limit * share)) for name, limit in limits.items()}
    log.warning(
        "open-file limit is too low for the configured connection caps; caps lowered",
        extra={"nofile": soft, "configured": limits, "now": fitted},
    )
    return fitted
