"""The composition root: the one place that knows every concrete class."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.core.cache import SecretCache
from sidecar.core.clock import SYSTEM, Clock
from sidecar.core.events import EventHub
from sidecar.core.facts import Bus
from sidecar.core.load import estimate
from sidecar.core.policy import Policy
from sidecar.core.supervise import listener_of_failures, supervised
from sidecar.core.verify import Verifier
from sidecar.http.admin import admin_routes
from sidecar.http.guard import FAST_PATHS_KEY, GUARD_KEY, FastPath, Guard
from sidecar.http.keys import (
    ADMIN_KEY,
    CACHE_KEY,
    FACTS_KEY,
    HTTP_KEY,
    HUB_KEY,
    MAX_BODY,
    MAX_WAIT_KEY,
    PASSTHROUGH_KEY,
    READY_KEY,
    SECRETS_PREFIX,
    STATUS_KEY,
    VAULT_PREFIX,
    VERIFIER_KEY,
)
from sidecar.http.native import fallback_route, native_hit, secrets_routes
from sidecar.http.ops import ops_routes, server_header
from sidecar.http.tokens import CallerCheck, TokenFile, load_or_create
from sidecar.http.vault_api import STORE_KEY, vault_hit, vault_routes
from sidecar.ops.audit import AuditLog, fingerprint_key
from sidecar.ops.emergency import Admin
from sidecar.ops.metrics import Metrics
from sidecar.ops.snapshot import SnapshotKeyError
from sidecar.ops.status import StatusBoard, secret_rows, status_report
from sidecar.ops.storeload import StoreLoadCollector
from sidecar.ops.trail import AuditTrail
from sidecar.ops.warmstart import Snapshotter, snapshot_key
from sidecar.settings import ConfigError, Settings
from sidecar.store.interface import Store
from sidecar.store.kv import KVStore

log = logging.getLogger("sidecar.app")


@dataclass(kw_only=True)
class Sidecar:
    """The running parts. ``api`` serves secrets (loopback); ``ops`` serves metrics and probes."""

    settings: Settings
    metrics: Metrics
    facts: Bus
    store: Store
    cache: SecretCache
    caller_token: str
    admin_token: str
    api: web.Application
    ops: web.Application
    snapshotter: Snapshotter | None
    preloads: list[str]
    audit: AuditLog
    admin: Admin
    hub: EventHub
    token_files: list[TokenFile] = field(default_factory=list)
    started: bool = field(default=False)

    def readiness(self) -> Mapping[str, Any]:
        """Ready when started and every preloaded secret can be served (from the store, or
        from memory within its class's limits: a warm snapshot makes a store outage ready)."""
        preload = self.cache.preloaded()
        servable = sum(1 for path in preload if self.cache.servable(path))
        return {
            "ready": self.started and servable == len(preload),
            "preloaded_servable": servable,
            "preloaded_total": len(preload),
            "store_authenticated": self.store.authenticated,
            **(
                {"store_auth_failure": failure}
                if (failure := self.store.auth_failure) is not None
                else {}
            ),
            "secrets_cached": len(self.cache),
        }


def _declare(metrics: Metrics, settings: Settings, policy: Policy) -> None:
    """What the metrics say from the start: each class's owner and limits, and the schedules."""
    metrics.declare_classes(settings.secret_classes(), policy.class_named)
    metrics.declare_schedule(
        snapshot_interval=settings.snapshot.interval if settings.snapshot.key_file else None,
        revocation_poll_interval=(
            settings.revocation_poll_interval if settings.revocation_list else None
        ),
    )


def _snapshotter(
    settings: Settings,
    key: bytes | None,
    cache: SecretCache,
    facts: Bus,
    audit: AuditLog,
    store: Store,
    clock: Clock,
    metrics: Metrics,
) -> Snapshotter | None:
    """The snapshot writer, when there is a key (no key, no snapshot)."""
    if not key:
        return None
    snapshotter = Snapshotter(
        settings.snapshot,
        key,
        cache,
        facts,
        audit,
        mounts=store,
        confirm_within=settings.startup_jitter,
        wall=clock.wall,
    )
    metrics.watch_snapshot(snapshotter.unsaved)
    return snapshotter


def _status(
    settings: Settings,
    cache: SecretCache,
    board: StatusBoard,
    admin: Admin,
    snapshotter: Snapshotter | None,
    clock: Clock,
) -> Callable[[], dict[str, Any]]:
    """The on-call status report, built when asked (GET /admin/status and its page)."""

    def status() -> dict[str, Any]:
        now = clock.wall()
        return status_report(
            rows=secret_rows(cache.held(), board, now),
            board=board,
            auth_method=settings.backend.auth.method,
            snapshot_enabled=snapshotter is not None,
            snapshot_interval=settings.snapshot.interval if snapshotter is not None else None,
            overlaps_open=cache.overlaps_open(),
            extensions=admin.extensions(),
            revocations=cache.controls.revocations(),
            revocations_polled_at=admin.revocations_polled_at,
            now=now,
        )

    return status


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    caller_token: str | None = None,
    admin_token: str | None = None,
    clock: Clock = SYSTEM,
) -> Sidecar:
    """Build the sidecar from settings. Tests pass a registry, tokens, a clock they can move
    forward and, where they need one, a store; everything else comes from the settings."""
    metrics = Metrics(registry)
    policy = settings.policy()
    _declare(metrics, settings, policy)
    key = snapshot_key(settings.snapshot)
    audit = _audit_log(settings, key)
    trail = AuditTrail(audit, settings.backend.auth.method)
    hub = EventHub()
    board = StatusBoard(clock.wall)
    # One way for facts to travel: everything that reports tells the bus; metrics, the audit
    # trail and the event stream each take what they need from it.
    facts = Bus(metrics, trail, hub, board)
    if store is None:
        store = KVStore(settings.backend, listener=facts, clock=clock.monotonic)
    backoff = settings.backend.backoff
    cache = SecretCache(
        store,
        policy,
        listener=facts,
        clock=clock.monotonic,
        wall=clock.wall,
        backoff=(backoff.base, backoff.cap),
    )
    _watch(cache, store, clock, metrics, settings)
    tokens = _tokens(settings, audit, caller_token, admin_token, clock)
    snapshotter = _snapshotter(settings, key, cache, facts, audit, store, clock, metrics)
    verifier = Verifier(
        cache,
        store,
        audit.fingerprint_value,
        lookback=settings.verify_lookback,
        listener=facts,
    )
    admin = Admin(
        cache,
        audit,
        facts,
        snapshotter,
        ceiling=settings.max_cache_age_ceiling,
        clock=clock,
        revoke_lease=store.revoke_lease,
    )

    api = web.Application(client_max_size=MAX_BODY)
    api[CACHE_KEY] = cache
    api[GUARD_KEY] = Guard(
        tokens.callers,
        tokens.admins,
        metrics,
        passthrough=settings.vault_api.enabled and settings.vault_api.passthrough,
    )
    api[FACTS_KEY] = facts
    api[VERIFIER_KEY] = verifier
    api[HUB_KEY] = hub
    api[ADMIN_KEY] = admin
    api[MAX_WAIT_KEY] = settings.max_wait

    api[STATUS_KEY] = _status(settings, cache, board, admin, snapshotter, clock)
    api[HTTP_KEY] = settings.http
    secrets_routes(api)  # the hot routes first
    fast_paths: dict[str, FastPath] = {SECRETS_PREFIX: native_hit(cache)}
    if settings.vault_api.enabled:
        api[STORE_KEY] = store
        api[PASSTHROUGH_KEY] = settings.vault_api.passthrough
        vault_routes(api)
        fast_paths[VAULT_PREFIX] = vault_hit(store, cache)
    api[FAST_PATHS_KEY] = fast_paths
    admin_routes(api)
    fallback_route(api)

    ops = web.Application()
    ops_routes(ops, metrics)
    for app in (api, ops):
        server_header(app)

    sidecar = Sidecar(
        settings=settings,
        metrics=metrics,
        facts=facts,
        store=store,
        cache=cache,
        caller_token=tokens.caller,
        admin_token=tokens.admin,
        api=api,
        ops=ops,
        snapshotter=snapshotter,
        preloads=policy.preload_paths(),
        audit=audit,
        admin=admin,
        hub=hub,
        token_files=tokens.files,
    )
    ops[READY_KEY] = sidecar.readiness
    api.cleanup_ctx.append(_lifecycle(sidecar))

    async def end_streams(_app: web.Application) -> None:
        hub.close()  # before aiohttp waits for handlers: event streams end at once

    api.on_shutdown.append(end_streams)
    return sidecar


@dataclass(frozen=True)
class _Tokens:
    caller: str
    admin: str
    callers: CallerCheck
    admins: CallerCheck
    files: list[TokenFile]


def _tokens(
    settings: Settings,
    audit: AuditLog,
    caller_token: str | None,
    admin_token: str | None,
    clock: Clock,
) -> _Tokens:
    """The caller and admin tokens: given (tests), or from their files, which are then
    watched for rotations. The two must differ, now and after any rotation."""
    caller = (
        caller_token if caller_token is not None else load_or_create(settings.caller_token_file)
    )
    admin = (
        admin_token
        if admin_token is not None
        else load_or_create(
            settings.admin_token_file, mode=0o600, key="admin_token_file", dir_mode=0o700
        )
    )
    if hmac.compare_digest(caller.encode(), admin.encode()):
        raise ConfigError(
            ["admin_token_file: holds the same token as caller_token_file; they must differ"]
        )
    callers = CallerCheck(caller, clock=clock.monotonic)
    admins = CallerCheck(admin, clock=clock.monotonic)
    files = []
    for path, check, token, setting, given, other in (
        (settings.caller_token_file, callers, caller, "caller_token_file", caller_token, admins),
        (settings.admin_token_file, admins, admin, "admin_token_file", admin_token, callers),
    ):
        if given is None:
            files.append(
                TokenFile(
                    path,
                    check,
                    token,
                    key=setting,
                    grace=settings.token_rotation_grace,
                    on_rotate=_audit_rotation(audit, setting),
                    taken=other,
                )
            )
    return _Tokens(caller, admin, callers, admins, files)


def _audit_rotation(audit: AuditLog, key: str) -> Callable[[], None]:
    return lambda: audit.record("token_rotated", setting=key)


def _audit_log(settings: Settings, snapshot_key: bytes | None) -> AuditLog:
    try:
        key, source = fingerprint_key(settings.audit_fingerprint_key_file, snapshot_key)
    except SnapshotKeyError as exc:
        raise ConfigError([f"audit_fingerprint_key_file: {exc}"]) from None
    if source == "random" and (settings.audit_log or settings.audit_stdout):
        log.warning(
            "audit fingerprints use a random key: they cannot be compared across restarts; "
            "set audit_fingerprint_key_file (or a snapshot key)"
        )
    return AuditLog(settings.audit_log, stdout=settings.audit_stdout, fingerprint_key=key)


def _lifecycle(sidecar: Sidecar) -> Any:
    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        settings = sidecar.settings
        tasks: list[asyncio.Task[None]] = []

        def background(name: str, loop: Callable[[], Awaitable[None]]) -> None:
            # Supervised: a loop that fails is logged, counted and started again, never lost.
            task = supervised(name, loop, listener_of_failures(sidecar.facts))
            tasks.append(asyncio.create_task(task, name=name))

        sidecar.audit.record("started", version=__version__)
        _say_store_load(settings)
        # startup, before any listener opens:
        # 1. warm the cache from the snapshot, so a store outage at start is already survivable;
        snapshotter = sidecar.snapshotter
        if snapshotter is not None:
            snapshotter.load()
            background("snapshot", snapshotter.run)
        else:
            log.warning(
                "no snapshot: snapshot.key_file is not set, so nothing survives a restart",
            )
        # 2. authenticate in the background (an outage at start is served as an outage);
        await sidecar.store.start()
        # 3. follow the fleet-wide revocation list, if there is one;
        revocation_list = settings.revocation_list
        if revocation_list:
            background(
                "revocations",
                lambda: sidecar.admin.poll_revocations(
                    sidecar.store, revocation_list, settings.revocation_poll_interval
                ),
            )
        # 4. watch the token files (a rotated token works at once, the old one for a grace);
        for token_file in sidecar.token_files:
            background("token_watch", token_file.watch)
        # 5. preload with jitter, and keep read secrets fresh ahead of time.
        sidecar.cache.preload(sidecar.preloads, settings.startup_jitter)
        background("refresh", sidecar.cache.run_refresher)
        sidecar.started = True
        yield
        # shutdown: stop background work, write the last snapshot, release the store client.
        # Each step runs whatever the one before did: the "stopped" record is always written.
        sidecar.started = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        revoke = sidecar.admin.revoke_leases if settings.revoke_leases_on_shutdown else None
        for name, step in (
            ("leases", revoke),
            ("admin", _sync(sidecar.admin.close)),
            ("snapshot", snapshotter.save if snapshotter is not None else None),
            ("cache", sidecar.cache.close),
            ("store", sidecar.store.close),
        ):
            if step is None:
                continue
            try:
                await step()
            except Exception:
                log.exception("shutdown step failed; continuing", extra={"step": name})
        sidecar.audit.record("stopped")
        sidecar.audit.close()

    return lifecycle


def _watch(
    cache: SecretCache, store: Store, clock: Clock, metrics: Metrics, settings: Settings
) -> None:
    """What the cache must hear of (time jumps, a new store token: leases end with the token
    that made them), and what is read from it at scrape time."""
    clock.on_jump(cache.time_moved)
    store.on_new_token(cache.token_changed)
    metrics.watch_ages(cache)
    metrics.registry.register(StoreLoadCollector.of(settings, cache))


def _say_store_load(settings: Settings) -> None:
    """One log line with what this configuration costs the store in steady state, and a
    warning when the named secrets alone need more than backend.rate_limit allows."""
    poll = settings.revocation_poll_interval if settings.revocation_list else None
    load = estimate(settings.policy(), poll, settings.backend.rate_limit.requests_per_second)
    facts = {
        "requests_per_second": round(load.known, 3),
        "budget": load.budget,
        "literal_secrets": load.literal_count,
    }
    log.info("expected store load", extra=facts)
    if load.over_budget:
        log.warning(
            "the configured secrets need more store requests than backend.rate_limit allows: "
            "refresh-ahead will fall behind (reads come first: serve_stale classes answer with "
            "values past refresh_interval, fail_closed reads wait for the budget); raise "
            "backend.rate_limit.requests_per_second or the classes' refresh_interval",
            extra=facts,
        )


def _sync(function: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def step() -> None:
        function()

    return step
