"""What one local process can hold on a listener: a cap on connections, a deadline for request
headers, and room kept for the connections that do work.

Every accepted connection passes through a ``ConnectionGuard`` (one per listener):

- at ``max_connections``, the oldest *idle* connection (no request in progress, nothing
  waiting to be written) is closed to make room; only when every open connection is busy is
  the new one refused. A flood of idle or trickling sockets therefore cannot lock out the
  application's reads or the kubelet's probes, and never exhausts the file descriptors;
- request headers must be complete within ``header_timeout`` of the connection opening, or of
  the first byte of the next request on a kept-alive connection;
- idle keep-alive connections are closed after ``keepalive_timeout`` (aiohttp's own timer).

Each closure is counted (``sidecar_http_connections_closed_total{listener,reason}``) and logged
(at most one line per reason every 10 seconds, with the number left out).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from sidecar.logs import LogLimiter
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.connections")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FD_RESERVE = 256  # descriptors kept for the store's connections, files and the other listener


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard's bookkeeping around it."""

    def __init__(self, inner: RequestHandler, guard: ConnectionGuard) -> None:
        self.inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handling = 0
        self._paused = False
        self._admitted = False

    @property
    def busy(self) -> bool:
        return self._handling > 0 or self._paused

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._guard.admit(self):
            self._transport.abort()
            return
        self._admitted = True
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._timer is None and not self._handling:
            self._arm()  # the first byte of the next request: its headers are now due
        self.inner.data_received(data)

    def eof_received(self) -> None:
        if self._admitted:
            self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._guard.forget(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True
        if self._admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self._admitted:
            self.inner.resume_writing()

    # -- the guard's view ------------------------------------------------------------------

    def request_started(self) -> None:
        self._handling += 1
        self._disarm()

    def request_finished(self) -> None:
        self._handling -= 1

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if not self._handling:
            self._guard.closing(self, "header_timeout")
            if self._transport is not None:
                self._transport.abort()


class ConnectionGuard:
    def __init__(
        self, listener: str, limit: int, header_timeout: float, metrics: Metrics | None
    ) -> None:
        self.listener = listener
        self.limit = limit
        self.header_timeout = header_timeout
        self._open: dict[GuardedConnection, None] = {}  # insertion order: oldest first
        self._by_handler: dict[RequestHandler, GuardedConnection] = {}
        self._metrics = metrics
        self._log_limit = LogLimiter(burst=1, period=10.0)

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, connection: GuardedConnection) -> bool:
        if len(self._open) >= self.limit:
            idle = next((c for c in self._open if not c.busy), None)
            if idle is None:
                self.closing(None, "limit")
                return False
            self.closing(idle, "evicted")
            self.forget(idle)
            idle.close()
        self._open[connection] = None
        self._by_handler[connection.inner] = connection
        self._gauge()
        return True

    def forget(self, connection: GuardedConnection) -> None:
        if connection in self._open:
            del self._open[connection]
            self._by_handler.pop(connection.inner, None)
            self._gauge()

    def closing(self, connection: GuardedConnection | None, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.connections_closed.labels(self.listener, reason).inc()
        dropped = self._log_limit.allow(reason)
        if dropped is not None:
            what = {
                "limit": "connection refused: every open connection is busy",
                "evicted": "idle connection closed to make room for a new one",
                "header_timeout": "connection closed: request headers incomplete in time",
            }[reason]
            log.warning(
                what,
                extra={
                    "listener": self.listener,
                    "reason": reason,
                    "open": len(self._open),
                    "max_connections": self.limit,
                    **({"similar_not_logged": dropped} if dropped else {}),
                },
            )

    def tracked(self, handler: Handler) -> Handler:
        """``handler``, marking its connection busy while it runs."""
        by_handler = self._by_handler

        async def track(request: web.Request) -> web.StreamResponse:
            connection = by_handler.get(request.protocol)
            if connection is None:
                return await handler(request)
            connection.request_started()
            try:
                return await handler(request)
            finally:
                connection.request_finished()

        return track

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.connections.labels(self.listener).set(len(self._open))


class GuardedServer(web.Server):
    """aiohttp's low-level server, each of whose connections goes through the guard."""

    guard: ConnectionGuard

    def __call__(self) -> Any:
        return GuardedConnection(super().__call__(), self.guard)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server guards connections; ``front`` wraps the request handler
    (fresh hits before the router, on the secrets API)."""

    def __init__(
        self,
        app: web.Application,
        guard: ConnectionGuard,
        *,
        front: Callable[[web.Application, Handler], Handler] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self._front = front

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's request factory makes web.Request objects, whatever the type says.
        handler = cast(Handler, server.request_handler)
        if self._front is not None:
            handler = self._front(self.app, handler)
        server.request_handler = cast(Any, self.guard.tracked(handler))
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
