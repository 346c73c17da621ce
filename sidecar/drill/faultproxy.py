"""``sidecar faultproxy``: an HTTP proxy between sidecars and the store that injects faults on
command, for game days in staging (and for ``sidecar drill``).

One listener per configured store address (``listen``'s port, then the next ones), each
forwarding only to its own store: the request target's path, never a URL from the request, and
no redirects followed. A small control API on its own loopback listener sets, shows and clears
the fault in force (``PUT``/``GET``/``DELETE /fault``); every change is logged. KV v2 reads that
pass are remembered (the last two versions per path) so that the ``stale`` fault can answer
with an older version than the store holds, as a lagging node would."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.drill.faults import Fault, FaultError, Mode, applies, delay_for, parse_fault

log = logging.getLogger("sidecar.faultproxy")

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
MAX_BODY = 8 * 1024 * 1024
MAX_PATHS = 10_000  # store paths counted one by one; beyond, new ones are not counted


@dataclass
class Remembered:
    """The KV v2 answers seen for one path: body by version, newest last (two kept)."""

    data: dict[int, bytes] = field(default_factory=dict)

    def keep(self, version: int, body: bytes) -> None:
        """Remember ``body`` as ``version`` (the two newest are kept)."""
        self.data[version] = body
        for old in sorted(self.data)[:-2]:
            del self.data[old]

    def older_than(self, version: int) -> tuple[int, bytes] | None:
        """The newest remembered version older than ``version``, with its body, if any."""
        older = [v for v in self.data if v < version]
        return None if not older else (max(older), self.data[max(older)])


class FaultProxy:
    """The proxy: ``stores`` (their URLs, in order: node 0, 1, ...), listening on ``host`` from
    ``port`` up, controlled on ``control``."""

    def __init__(
        self,
        stores: list[str],
        host: str,
        port: int,
        control: tuple[str, int],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        remember_token: bool = False,
    ) -> None:
        self.stores = [s.rstrip("/") for s in stores]
        self.host, self.port, self.control = host, port, control
        self.fault = Fault()
        self.requests = [0] * len(stores)  # forwarded to each store
        self.paths: Counter[str] = Counter()  # forwarded, by store path (MAX_PATHS at most)
        # With ``remember_token`` (the drill's own proxy): the last store token a client sent,
        # so that the drill can revoke the sidecar's (token_revoked). Memory only: never
        # logged, shown or written anywhere.
        self._remember_token = remember_token
        self.last_token: str | None = None
        self.injected = 0
        self._rng = rng or random.Random()  # noqa: S311 - which requests fail, not secrets
        self._clock = clock
        self._remembered: dict[str, Remembered] = {}
        self._runners: list[web.AppRunner | None] = [None] * len(stores)
        self._control_runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._cleared = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for each store and for control; forward until ``stop``."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            trust_env=False,
        )
        for node in range(len(self.stores)):
            await self._listen(node)
        control = web.Application()
        control.router.add_get("/fault", self._show)
        control.router.add_put("/fault", self._set)
        control.router.add_delete("/fault", self._clear)
        self._control_runner = web.AppRunner(control, access_log=None)
        await self._control_runner.setup()
        await web.TCPSite(self._control_runner, *self.control).start()
        log.info(
            "fault proxy listening",
            extra={
                "stores": {f"{self.host}:{self.port + i}": s for i, s in enumerate(self.stores)},
                "control": f"{self.control[0]}:{self.control[1]}",
            },
        )

    async def stop(self) -> None:
        """Release what a blackhole holds, close every listener and the client session."""
        self._cleared.set()
        for node in range(len(self.stores)):
            await self._unlisten(node)
        if self._control_runner is not None:
            await self._control_runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _listen(self, node: int) -> None:
        if self._runners[node] is not None:
            return
        app = web.Application(client_max_size=MAX_BODY)

        async def forward(request: web.Request) -> web.StreamResponse:
            return await self._forward(request, node)

        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port + node, reuse_address=True).start()
        self._runners[node] = runner

    async def _unlisten(self, node: int) -> None:
        runner, self._runners[node] = self._runners[node], None
        if runner is not None:
            await runner.cleanup()

    # -- control -----------------------------------------------------------------------

    async def set_fault(self, fault: Fault) -> None:
        """Put ``fault`` in force (logged); a refusing listener is closed or reopened."""
        previous, self.fault = self.fault, fault
        if previous.mode is Mode.BLACKHOLE:
            self._cleared.set()  # release what the blackhole held
        self._cleared = asyncio.Event()
        for node in range(len(self.stores)):
            refusing = fault.mode is Mode.REFUSE and fault.node in (None, node)
            await (self._unlisten(node) if refusing else self._listen(node))
        log.warning("fault set", extra={"fault": fault.describe(), "was": previous.describe()})

    async def _show(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"fault": self.fault.describe(), "forwarded": self.requests, "injected": self.injected}
        )

    async def _set(self, request: web.Request) -> web.Response:
        try:
            document = await request.json()
            fault = parse_fault(document, len(self.stores))
        except (FaultError, ValueError) as exc:
            return web.json_response({"error": "bad_request", "reason": str(exc)}, status=400)
        await self.set_fault(fault)
        return web.json_response({"fault": fault.describe()})

    async def _clear(self, _request: web.Request) -> web.Response:
        await self.set_fault(Fault())
        return web.json_response({"fault": self.fault.describe()})

    # -- forwarding --------------------------------------------------------------------

    async def _forward(self, request: web.Request, node: int) -> web.StreamResponse:
        store_path = request.path.removeprefix("/v1/")
        fault = self.fault
        if applies(fault, store_path, node, self._clock(), self._rng):
            answered = await self._inject(fault, request)
            if answered is not None:
                return answered
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        assert self._session is not None
        url = self.stores[node] + request.rel_url.path_qs  # our store, the request's path only
        self.requests[node] += 1
        if store_path in self.paths or len(self.paths) < MAX_PATHS:  # bounded: paths are input
            self.paths[store_path] += 1
        if self._remember_token and (token := request.headers.get("X-Vault-Token")):
            self.last_token = token
        try:
            async with self._session.request(
                request.method, url, data=body or None, headers=headers, allow_redirects=False
            ) as reply:
                payload = await reply.read()
                status, reply_headers = reply.status, reply.headers
        except aiohttp.ClientError as exc:
            return web.json_response(
                {"errors": [f"fault proxy: store unreachable: {exc}"]}, status=502
            )
        if request.method == "GET" and status == 200:
            payload = self._kv_read(store_path, payload, fault, node)
        headers_out = {k: v for k, v in reply_headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=status, body=payload, headers=headers_out)

    async def _inject(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        """Answer (or break) the request as ``fault`` says; None: forward it after all."""
        if fault.mode is Mode.LATENCY:
            self.injected += 1
            await asyncio.sleep(delay_for(fault, self._rng))
            return None
        if fault.mode is Mode.STALE:
            return None  # applied to the store's answer
        self.injected += 1
        if fault.mode is Mode.BLACKHOLE:
            await self._cleared.wait()  # hold it until the fault changes (or the caller leaves)
            return web.json_response({"errors": ["fault proxy: blackhole ended"]}, status=503)
        if fault.mode is Mode.RESET:
            _reset(request)
            return web.Response(status=502)  # never sent: the connection is gone
        if fault.mode is Mode.RATE_LIMIT:
            return web.json_response(
                {"errors": ["fault proxy: request rate limit quota exceeded"]},
                status=429,
                headers={"Retry-After": str(max(1, round(fault.retry_after)))},
            )
        return web.json_response(
            {"errors": [f"fault proxy: injected {fault.status}"]}, status=fault.status
        )

    def _kv_read(self, store_path: str, payload: bytes, fault: Fault, node: int) -> bytes:
        """Remember KV v2 data reads; under ``stale``, answer an older one (and metadata that
        says so) when one was seen."""
        mount, _, rest = store_path.partition("/")
        kind, _, path = rest.partition("/")
        if kind not in ("data", "metadata") or not path:
            return payload
        try:
            document = json.loads(payload)
            data = document.get("data") or {}
        except (ValueError, AttributeError):
            return payload
        key = f"{mount}/{path}"
        stale = fault.mode is Mode.STALE and applies(
            fault, store_path, node, self._clock(), self._rng
        )
        if kind == "data":
            version = (data.get("metadata") or {}).get("version")
            if not isinstance(version, int):
                return payload
            memory = self._remembered.setdefault(key, Remembered())
            memory.keep(version, payload)
            older = memory.older_than(version) if stale else None
            if older is None:
                return payload
            self.injected += 1
            return older[1]
        current = data.get("current_version")
        seen = self._remembered.get(key)
        older = seen.older_than(current) if stale and seen and isinstance(current, int) else None
        if older is None:
            return payload
        self.injected += 1
        data["current_version"] = older[0]
        return json.dumps(document).encode()


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER 0: close sends RST, as a broken middlebox would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def serve(proxy: FaultProxy) -> None:
    """Run ``proxy`` until cancelled (SIGINT/SIGTERM in the CLI)."""
    try:
        await proxy.start()
        await asyncio.Event().wait()
    finally:
        await proxy.stop()


def control_request(control: str, method: str, body: dict[str, Any] | None = None) -> Any:
    """The CLI's side of the control API: one request, the JSON answer; raises OSError with the
    proxy's reason when it refuses."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{control}/fault", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback http
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        reason = json.loads(exc.read() or b"{}").get("reason", exc.reason)
        raise OSError(f"the fault proxy refused: {reason}") from None
