"""Run the sidecar: bind both listeners, wait for a signal, shut down within a deadline."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress
from typing import Any, cast

from aiohttp import web

from sidecar import __version__
from sidecar.app import Sidecar, create_app
from sidecar.settings import Settings, split_hostport
from sidecar.web import Handler, hit_front

log = logging.getLogger("sidecar.server")


class ListenError(Exception):
    pass


class SidecarRunner(web.AppRunner):
    """aiohttp's AppRunner, with fresh cache hits answered in front of the router
    (web.hit_front); everything else takes the application's routes as usual."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's request factory makes web.Request objects, whatever the type says.
        routed = cast(Handler, server.request_handler)
        server.request_handler = cast(Any, hit_front(self.app, routed))
        return server


async def serve(settings: Settings) -> None:
    sidecar = create_app(settings)
    server = Server(sidecar)
    await server.run()


class Server:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        timeout = sidecar.settings.shutdown_timeout
        access = logging.getLogger("sidecar.access") if sidecar.settings.access_log else None
        # handler_cancellation: a caller that hangs up stops costing us; a fetch it started
        # is shielded (coalesce.py) and still serves the others.
        self._api = SidecarRunner(
            sidecar.api,
            handle_signals=False,
            shutdown_timeout=timeout,
            access_log=access,
            handler_cancellation=True,
        )
        self._ops = web.AppRunner(
            sidecar.ops, handle_signals=False, shutdown_timeout=timeout, access_log=None
        )
        self._stop = asyncio.Event()
        self._signals = 0

    async def run(self) -> None:
        await self.startup()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
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
                "store": settings.backend.address,
                "caller_token_file": str(settings.caller_token_file),
            },
        )

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
