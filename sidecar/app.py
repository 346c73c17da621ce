"""The composition root: the one place that knows every concrete class."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.backend import Backend
from sidecar.cache import SecretCache
from sidecar.callers import CallerCheck, load_or_create
from sidecar.metrics import Metrics
from sidecar.settings import Settings
from sidecar.vault import VaultBackend
from sidecar.web import (
    CACHE_KEY,
    CALLERS_KEY,
    METRICS_KEY,
    READY_KEY,
    guard,
    ops_routes,
    secrets_routes,
)

log = logging.getLogger("sidecar.app")


@dataclass
class Sidecar:
    """The running parts. ``api`` serves secrets (loopback); ``ops`` serves metrics and probes."""

    settings: Settings
    metrics: Metrics
    backend: Backend
    cache: SecretCache
    caller_token: str
    api: web.Application
    ops: web.Application
    started: bool = field(default=False)

    def readiness(self) -> Mapping[str, Any]:
        return {
            "ready": self.started,
            "store_authenticated": bool(getattr(self.backend, "authenticated", True)),
            "secrets_cached": len(self.cache),
        }


class _AuthMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def auth_event(self, event: str, ok: bool, expires_at: float | None) -> None:
        self._metrics.auth_events.labels(event=event, result="success" if ok else "failure").inc()
        if ok:
            self._metrics.token_expiry.set(expires_at or 0)


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    registry: CollectorRegistry | None = None,
    caller_token: str | None = None,
) -> Sidecar:
    """Build the sidecar from settings. Tests pass a registry and, for pure logic, a backend."""
    metrics = Metrics(registry)
    policy = settings.policy()
    metrics.declare_classes(sorted(settings.classes))
    if backend is None:
        backend = VaultBackend(settings.backend, auth_observer=_AuthMetrics(metrics))
    cache = SecretCache(backend, policy, observer=metrics)
    token = caller_token if caller_token is not None else load_or_create(settings.caller_token_file)

    api = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    api[CACHE_KEY] = cache
    api[CALLERS_KEY] = CallerCheck(token)
    api[METRICS_KEY] = metrics
    secrets_routes(api)

    ops = web.Application()
    ops_routes(ops, metrics)

    sidecar = Sidecar(settings, metrics, backend, cache, token, api, ops)
    ops[READY_KEY] = sidecar.readiness
    api.cleanup_ctx.append(_lifecycle(sidecar))
    return sidecar


def _lifecycle(sidecar: Sidecar) -> Any:
    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        # startup: authenticate (never fatal: an outage at start is served as an outage),
        # then start the refresher that keeps read secrets fresh ahead of time.
        await sidecar.backend.start()
        refresher = asyncio.create_task(sidecar.cache.run_refresher(), name="refresh-ahead")
        sidecar.started = True
        yield
        # shutdown: stop refreshing, abandon fetches under way, release the store client.
        sidecar.started = False
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await sidecar.cache.close()
        await sidecar.backend.close()

    return lifecycle
