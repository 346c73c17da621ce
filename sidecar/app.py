"""The composition root: the one place that knows every concrete class."""

from __future__ import annotations

import asyncio
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
from sidecar.warmstart import Snapshotter, snapshot_key
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
    snapshotter: Snapshotter | None = None
    preloads: list[str] = field(default_factory=list)
    started: bool = field(default=False)

    def readiness(self) -> Mapping[str, Any]:
        """Ready when started and every preloaded secret can be served (from the store, or
        from memory within its class's limits: a warm snapshot makes a store outage ready)."""
        preload = self.cache.pinned()
        servable = sum(1 for path in preload if self.cache.servable(path))
        return {
            "ready": self.started and servable == len(preload),
            "preloaded_servable": servable,
            "preloaded_total": len(preload),
            "store_authenticated": bool(getattr(self.backend, "authenticated", True)),
            "secrets_cached": len(self.cache),
        }


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
        backend = VaultBackend(settings.backend, observer=metrics)
    backoff = settings.backend.backoff
    cache = SecretCache(backend, policy, observer=metrics, backoff=(backoff.base, backoff.cap))
    metrics.watch_ages(cache)
    token = caller_token if caller_token is not None else load_or_create(settings.caller_token_file)
    key = snapshot_key(settings.snapshot)
    snapshotter = Snapshotter(settings.snapshot, key, cache, metrics) if key else None

    api = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    api[CACHE_KEY] = cache
    api[CALLERS_KEY] = CallerCheck(token)
    api[METRICS_KEY] = metrics
    secrets_routes(api)

    ops = web.Application()
    ops_routes(ops, metrics)

    sidecar = Sidecar(
        settings, metrics, backend, cache, token, api, ops, snapshotter, policy.preload_paths()
    )
    ops[READY_KEY] = sidecar.readiness
    api.cleanup_ctx.append(_lifecycle(sidecar))
    return sidecar


def _lifecycle(sidecar: Sidecar) -> Any:
    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        settings = sidecar.settings
        tasks: list[asyncio.Task[None]] = []
        # startup, before any listener opens:
        # 1. warm the cache from the snapshot, so a store outage at start is already survivable;
        if sidecar.snapshotter is not None:
            sidecar.snapshotter.load()
            tasks.append(asyncio.create_task(sidecar.snapshotter.run(), name="snapshot"))
        else:
            log.warning(
                "no snapshot: snapshot.key_file is not set, so nothing survives a restart",
            )
        # 2. authenticate in the background (an outage at start is served as an outage);
        await sidecar.backend.start()
        # 3. preload with jitter, and keep read secrets fresh ahead of time.
        sidecar.cache.preload(sidecar.preloads, settings.startup_jitter)
        tasks.append(asyncio.create_task(sidecar.cache.run_refresher(), name="refresh-ahead"))
        sidecar.started = True
        yield
        # shutdown: stop background work, write the last snapshot, release the store client.
        sidecar.started = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if sidecar.snapshotter is not None:
            await sidecar.snapshotter.save(force=True)
        await sidecar.cache.close()
        await sidecar.backend.close()

    return lifecycle
