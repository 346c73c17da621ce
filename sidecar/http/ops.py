"""The ops API, on its own listener without a token: metrics, liveness, readiness. And the
Server header every response carries."""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.http.keys import READY_KEY, SERVER
from sidecar.ops.metrics import Metrics


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. The store is not asked, so a store outage never gets
    the sidecar restarted."""
    return web.json_response({"status": "ok"}, dumps=lambda o: orjson.dumps(o).decode())


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when started and every preloaded secret can be served, else 503; the body
    is the readiness report either way."""
    report = dict(request.app[READY_KEY]())
    status = 200 if report.get("ready") else 503
    return web.json_response(report, status=status, dumps=lambda o: orjson.dumps(o).decode())


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


def server_header(app: web.Application) -> None:
    """Every routed response says ``Server: secrets-sidecar`` (fresh hits carry it already)."""
    app.on_response_prepare.append(_server_header)


def ops_routes(app: web.Application, metrics: Metrics) -> None:
    """Add metrics, liveness and readiness to the ops application (its listener takes no token:
    Prometheus and the kubelet call it)."""
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
