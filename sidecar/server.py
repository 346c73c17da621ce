"""Run the sidecar: bind both listeners, wait for a signal, shut down within a deadline."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from sidecar import __version__
from sidecar.app import Sidecar, create_app
from sidecar.http.connections import ConnectionGuard, GuardedRunner, fit_to_descriptors
from sidecar.http.guard import hit_front
from sidecar.http.keys import FACTS_KEY, HTTP_KEY
from sidecar.settings import Settings, split_hostport

log = logging.getLogger("sidecar.server")


class ListenError(Exception):
    """A listener could not bind (port in use, no permission): a runtime failure (exit code 1),
    with the key to change."""


class SidecarRunner(GuardedRunner):
    """The secrets API's runner: connections guarded (connections.py), fresh cache hits
    answered in front of the router (guard.hit_front); everything else takes the application's
    routes as usual. Tests run the API through it too."""

    def __init__(
        self, app: web.Application, *, max_connections: int | None = None, **kwargs: Any
    ) -> None:
        quiet_malformed_requests()
        http = app[HTTP_KEY]
        guard = ConnectionGuard(
            "api", max_connections or http.max_connections, http.header_timeout, app[FACTS_KEY]
        )
        kwargs.setdefault("keepalive_timeout", http.keepalive_timeout)
        super().__init__(app, guard, fast=hit_front, **kwargs)


class MalformedRequests(logging.Filter):
    """aiohttp logs each malformed request it refuses (400: a bad request line, smuggling
    attempts, oversized headers) at error level with a full traceback, quoting the bytes it
    refused. One warning line with the kind of error says all there is to say, and a flood of
    them must not bury the log or copy a token into it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Turn aiohttp's report of a refused malformed request (4xx) into one warning line
        naming the kind of error; every other record passes unchanged."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 500) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed HTTP request refused", ()
            # The kind only: aiohttp's message quotes the offending bytes (a token, a query).
            record.error = type(exc).__name__
            record.exc_info, record.exc_text = None, None
        return True


def quiet_malformed_requests() -> None:
    """Install the MalformedRequests filter on aiohttp's server logger, once however often it is
    called."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in logger.filters):
        logger.addFilter(MalformedRequests())


class AccessLog(AbstractAccessLogger):
    """One JSON line per request: method, path, the *names* of query parameters (their values
    may be anything a caller typed), status, duration. Never a token or a header value."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write one access line for a finished request (aiohttp calls it when ``access_log`` is
        on)."""
        self.logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.raw_path.partition("?")[0][:600],
                "query": sorted(request.query.keys())[:20],
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
            },
        )


async def serve(settings: Settings) -> None:
    """Build the sidecar from ``settings`` and run it until a signal stops it: the body of
    ``sidecar run``."""
    sidecar = create_app(settings)
    server = Server(sidecar)
    await server.run()


class Server:
    """Runs both listeners, the secrets API and ops, around the application's lifetime: started
    in order, stopped on a signal within the shutdown deadline."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        settings = sidecar.settings
        timeout = settings.shutdown_timeout
        http = settings.http
        caps = fit_to_descriptors({"api": http.max_connections, "ops": http.ops_max_connections})
        access = logging.getLogger("sidecar.access") if settings.access_log else None
        # handler_cancellation: a caller that hangs up stops costing us; a fetch it started
        # is shielded (coalesce.py) and still serves the others.
        self._api = SidecarRunner(
            sidecar.api,
            max_connections=caps["api"],
            handle_signals=False,
            shutdown_timeout=timeout,
            access_log=access,
            access_log_class=AccessLog,
            handler_cancellation=True,
        )
        # The ops listener has its own cap: a flood of the secrets API leaves the probes room.
        self._ops = GuardedRunner(
            sidecar.ops,
            ConnectionGuard("ops", caps["ops"], http.header_timeout, sidecar.facts),
            handle_signals=False,
            shutdown_timeout=timeout,
            access_log=None,
            keepalive_timeout=http.keepalive_timeout,
        )
        self._stop = asyncio.Event()
        self._signals = 0

    async def run(self) -> None:
        """Start, wait for a stop (a signal or ``stop``), then shut down, however the wait ended."""
        await self.startup()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    def stop(self) -> None:
        """Ask for a graceful stop, as the first SIGTERM does: ``run`` then shuts down."""
        self._stop.set()

    async def startup(self) -> None:
        """Start the application before any listener opens, then bind both listeners and install
        the signal handlers; a bind failure shuts everything down and raises ListenError."""
        settings = self.sidecar.settings
        # 1. Start the application (authenticate, start the refresher): before any listener.
        await self._api.setup()
        await self._ops.setup()
        # 2. Open the listeners: the secrets API on loopback, ops where the kubelet reaches.
        for runner, address, key in (
            (self._api, settings.listen, "listen"),
            (self._ops, settings.metrics_listen, "metrics_listen"),
        ):
            host, port = split_hostport(address)
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                await self.shutdown()
                raise ListenError(
                    f"cannot listen on {address} ({key}): {exc.strerror}; free the port or "
                    f"change {key}"
                ) from None
        # 3. Signals: the first asks for a graceful stop, a second one forces it.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        log.info(
            "sidecar ready",
            extra={
                "version": __version__,
                "listen": settings.listen,
                "metrics_listen": settings.metrics_listen,
                # every node, when `addresses` is configured (`address` is then only a default)
                "store": [str(a) for a in settings.backend.addresses]
                if settings.backend.addresses
                else settings.backend.address,
                "caller_token_file": str(settings.caller_token_file),
                "max_connections": self._api.guard.limit,
            },
        )

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where each listener is bound (tests bind port 0)."""
        found: dict[str, tuple[str, int]] = {}
        for name, runner in (("api", self._api), ("ops", self._ops)):
            for address in runner.addresses:
                found.setdefault(name, (str(address[0]), int(address[1])))
        return found

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "stopping",
                extra={
                    "signal": signal.Signals(signum).name,
                    "deadline_seconds": self.sidecar.settings.shutdown_timeout,
                },
            )
            self._stop.set()
        else:
            log.warning("second signal: stopping now")
            raise SystemExit(1)

    async def shutdown(self) -> None:
        """Stop both listeners, letting requests in flight finish, and run the application's
        cleanup; give up after shutdown_timeout plus a margin, so a stuck request cannot hold the
        exit."""
        # 1. Stop accepting and let requests in flight finish, up to shutdown_timeout
        #    (aiohttp's runner does both, then runs the app's cleanup: refresher, store client).
        deadline = self.sidecar.settings.shutdown_timeout + 5.0
        try:
            async with asyncio.timeout(deadline):
                await self._api.cleanup()
                await self._ops.cleanup()
        except TimeoutError:
            log.error("shutdown deadline passed; exiting anyway", extra={"deadline": deadline})
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with suppress(Exception):
                loop.remove_signal_handler(signum)
        log.info("stopped")
