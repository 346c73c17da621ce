"""The only module that talks to the store (Vault or OpenBao, through hvac).

hvac is synchronous, so every call runs on a bounded thread pool (``max_concurrency``), each
with the backend timeout, and the event loop never waits on a socket. Responses are mapped to
the error kinds in ``sidecar.backend`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import string
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import hvac
import orjson
import requests
from hvac.adapters import RawAdapter

from sidecar.core.backoff import CircuitBreaker, CircuitState, TokenBucket
from sidecar.core.coalesce import Coalescer
from sidecar.core.paths import SAFE_CHARACTERS
from sidecar.core.supervise import supervised
from sidecar.settings import BackendSettings
from sidecar.store import replies
from sidecar.store.identity import Authenticator
from sidecar.store.interface import (
    METADATA,
    ErrorKind,
    InvalidRequest,
    Secret,
    SecretForbidden,
    SecretNotFound,
    StoreUnavailable,
    VersionInfo,
)
from sidecar.store.transport import (
    Aborted,
    Exchange,
    ReplyTooLarge,
    exchange_scope,
    new_session,
    read_body,
)

log = logging.getLogger("sidecar.store")

T = TypeVar("T")

MOUNT_TTL = 300.0  # how long a discovered mount (path, KV version) is trusted
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Characters left as they are in a store URL's path; anything else is percent-encoded, so no
# path can add a query, a fragment or another host to a store request.
_PATH_SAFE = "".join(sorted(SAFE_CHARACTERS - set(string.ascii_letters + string.digits)))


@dataclass(frozen=True, slots=True)
class Mount:
    path: str  # with trailing slash, e.g. "secret/"
    kv_version: int  # 0 when the engine is not KV
    discovered_at: float
    engine: str = "kv"
    info: Mapping[str, Any] = field(default_factory=dict)  # the store's own description

    @property
    def kv(self) -> bool:
        return self.engine in ("kv", "generic")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str]

    @property
    def errors(self) -> str:
        """The store's own error text: for the log only, never for callers."""
        errors = self.body.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e).strip() for e in errors)[:500]
        return f"HTTP {self.status}"


class BackendObserver(Protocol):
    def auth_event(self, event: str, ok: bool, expires_at: float | None) -> None: ...

    def node_state(self, address: str, up: bool, circuit: CircuitState) -> None: ...


class _NoObserver:
    def auth_event(self, event: str, ok: bool, expires_at: float | None) -> None:
        pass

    def node_state(self, address: str, up: bool, circuit: CircuitState) -> None:
        pass


@dataclass(eq=False)
class _Node:
    url: str
    breaker: CircuitBreaker
    last_error: StoreUnavailable | None = None


def _unavailable_for(reply: Reply) -> StoreUnavailable:
    answered = f"the store answered HTTP {reply.status}"
    if reply.status == 429:
        retry_after = _retry_after(reply.headers.get("Retry-After"))
        return StoreUnavailable(
            "rate_limited",
            kind=ErrorKind.RATE_LIMITED,
            detail=answered,
            retry_after=retry_after,
            store_message=reply.errors,
        )
    if reply.status == 503:
        kind, reason = ErrorKind.SEALED, "sealed"
    elif reply.status >= 500 or reply.status == 412:
        kind, reason = ErrorKind.SERVER_ERROR, "server_error"
    elif reply.status in REDIRECTS:
        kind, reason = ErrorKind.BAD_RESPONSE, "bad_response"
        answered = f"the store redirected (HTTP {reply.status}) to an address not configured"
    else:
        kind, reason = ErrorKind.BAD_RESPONSE, "bad_response"
    return StoreUnavailable(reason, kind=kind, detail=answered, store_message=reply.errors)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A store answer passed back unchanged (Vault API passthrough)."""

    status: int
    body: bytes
    headers: Mapping[str, str]


_FORWARD_HEADERS = ("Content-Type", "Retry-After", "X-Vault-Index", "Location")


MAX_RETRY_AFTER = 300.0  # the longest wait a store's Retry-After can impose on us


def _retry_after(value: str | None) -> float | None:
    """The store's Retry-After in seconds, within reason: a non-number, infinity or NaN is
    ignored, and no store may hold a node's circuit open longer than MAX_RETRY_AFTER."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


class VaultBackend:
    """Reads KV v1 and v2 secrets; discovers each mount's KV version as the CLI does."""

    def __init__(
        self,
        settings: BackendSettings,
        *,
        observer: BackendObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_error: Callable[[str], None] = lambda task: None,
    ) -> None:
        """``on_error(task)``: a background task (the prober, token upkeep) failed unexpectedly
        and was restarted."""
        self._on_error = on_error
        self._settings = settings
        self._clock = clock
        self._observer: BackendObserver = observer or _NoObserver()
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix="store"
        )
        self._local = threading.local()
        self._mounts: dict[str, Mount] = {}
        self._no_metadata: set[str] = set()  # mounts whose metadata we may not read
        self._mount_lookups: Coalescer[str, Mount] = Coalescer()
        backoff = settings.backoff
        self._nodes = [
            _Node(
                url,
                CircuitBreaker(
                    failure_threshold=settings.circuit_breaker.failure_threshold,
                    base=backoff.base,
                    cap=backoff.cap,
                    clock=clock,
                    rng=rng,
                ),
            )
            for url in settings.urls
        ]
        self._preferred = self._nodes[0]
        self._bucket = TokenBucket(
            settings.rate_limit.requests_per_second, settings.rate_limit.burst, clock
        )
        self._auth = Authenticator(self, settings, self._observer, rng, on_error)
        self._trouble = asyncio.Event()  # set when a breaker opens: wakes the prober
        self._prober: asyncio.Task[None] | None = None
        for node in self._nodes:
            self._observer.node_state(node.url, True, node.breaker.state)

    @property
    def authenticated(self) -> bool:
        return self._auth.token is not None

    @property
    def addresses(self) -> list[str]:
        return [node.url for node in self._nodes]

    async def start(self) -> None:
        self._prober = asyncio.create_task(
            supervised("store_prober", self._probe_forever, self._on_error), name="store-prober"
        )
        await self._auth.start()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        await self._auth.stop()
        await self._mount_lookups.drain()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- reads -------------------------------------------------------------------------

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        mount = await self._mount_for(path, urgent=urgent)
        if not mount.kv:
            raise InvalidRequest(
                f"{mount.path!r} is a {mount.engine!r} secrets engine; the sidecar serves KV only"
            )
        rest = self._rest(mount, path)
        if version == METADATA:
            return await self._metadata(mount, path, rest)
        if mount.kv_version == 2:
            params = {"version": str(version)} if version is not None else None
            reply = await self.call("GET", f"{mount.path}data/{rest}", params=params, urgent=urgent)
            return replies.kv2_secret(path, version, reply.body)
        if version is not None:
            raise InvalidRequest(
                f"versions exist only on KV v2 mounts; {mount.path!r} is KV version 1"
            )
        reply = await self.call("GET", path, urgent=urgent)
        return replies.kv1_secret(path, reply.body)

    async def _metadata(self, mount: Mount, path: str, rest: str) -> Secret:
        if mount.kv_version != 2:
            raise InvalidRequest(f"metadata exists only on KV v2 mounts; {mount.path!r} is KV 1")
        reply = await self.call("GET", f"{mount.path}metadata/{rest}")
        return replies.kv2_metadata(path, reply.body)

    async def version_info(self, path: str) -> VersionInfo | None:
        """The current KV v2 version from the metadata endpoint: a cheap rotation check that
        moves no secret value. None when it cannot tell (KV v1, or no metadata permission)."""
        mount = await self._mount_for(path)
        if mount.kv_version != 2 or mount.path in self._no_metadata:
            return None
        try:
            reply = await self.call("GET", f"{mount.path}metadata/{self._rest(mount, path)}")
        except SecretForbidden:
            self._no_metadata.add(mount.path)
            log.info(
                "no read permission on KV metadata; refreshes read the data instead",
                extra={"mount": mount.path},
            )
            return None
        return replies.version_info(reply.body)

    @staticmethod
    def _rest(mount: Mount, path: str) -> str:
        rest = path[len(mount.path) :]
        if not rest:
            raise InvalidRequest(f"{path!r} names the mount {mount.path!r}, not a secret in it")
        return rest

    async def _mount_for(self, path: str, *, urgent: bool = False) -> Mount:
        known = self.known_mount(path)
        if known is not None:
            return known
        mount, _ = await self._mount_lookups.run(path, lambda: self._discover(path, urgent))
        return mount

    async def _discover(self, path: str, urgent: bool) -> Mount:
        try:
            reply = await self.call("GET", f"sys/internal/ui/mounts/{path}", urgent=urgent)
        except SecretForbidden as exc:
            raise SecretForbidden(
                f"the store refused to say which mount holds {path!r}: no mount exists "
                "there, or the sidecar's policy grants nothing under it"
            ) from exc
        found = replies.mount(reply.body)
        if found is None or not path.startswith(found.path):
            raise SecretNotFound(f"no secrets engine is mounted at {path!r}")
        mount = Mount(
            path=found.path,
            kv_version=found.kv_version,
            discovered_at=self._clock(),
            engine=found.engine,
            info=found.info,
        )
        self._mounts[found.path] = mount
        log.info(
            "mount discovered",
            extra={"mount": found.path, "engine": found.engine, "kv_version": mount.kv_version},
        )
        return mount

    def export_mounts(self) -> list[dict[str, Any]]:
        """The KV mounts discovered so far, for the snapshot (no secret in them)."""
        return [
            {"path": m.path, "engine": m.engine, "kv_version": m.kv_version, "info": dict(m.info)}
            for m in self._mounts.values()
        ]

    def import_mounts(self, mounts: list[dict[str, Any]]) -> int:
        """Mounts remembered from the snapshot: trusted for MOUNT_TTL like fresh discoveries."""
        now = self._clock()
        learned = 0
        for item in mounts:
            path, engine, kv_version = item.get("path"), item.get("engine"), item.get("kv_version")
            if not (isinstance(path, str) and path.endswith("/") and isinstance(engine, str)):
                continue
            if not isinstance(kv_version, int) or path in self._mounts:
                continue
            info = item.get("info")
            self._mounts[path] = Mount(
                path, kv_version, now, engine, info if isinstance(info, dict) else {}
            )
            learned += 1
        return learned

    def known_mount(self, api_path: str) -> Mount | None:
        """The mount holding ``api_path`` if already known and trusted: no store request."""
        best: Mount | None = None
        for mount in self._mounts.values():
            if api_path.startswith(mount.path) and (
                best is None or len(mount.path) > len(best.path)
            ):
                best = mount
        if best is None or self._clock() - best.discovered_at >= MOUNT_TTL:
            return None
        return best

    async def mount(self, api_path: str) -> Mount:
        """The mount that holds ``api_path`` (a path as in the store's API, after /v1/)."""
        return await self._mount_for(api_path)

    # -- the store call ----------------------------------------------------------------

    async def call(
        self,
        method: str,
        api_path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        authenticated: bool = True,
        token: str | None = None,
        urgent: bool = False,
    ) -> Reply:
        """One store request with the sidecar's token; a 403 from a dead token logs in again
        once and retries. Any non-2xx answer raises a StoreError kind. ``urgent`` requests
        (the revocation list) try every node regardless of breakers and the request budget."""
        if authenticated and token is None:
            token = await self._auth.ensure()
        reply = await self._send(method, api_path, params, json, token, urgent)
        if reply.status == 403 and authenticated and token is not None:
            retry_token = await self._auth.recover(token)
            if retry_token is not None:
                reply = await self._send(method, api_path, params, json, retry_token, urgent)
        if 200 <= reply.status < 300:
            return reply
        if reply.status == 404:
            raise SecretNotFound(
                replies.not_found_reason(reply.body), metadata=replies.deleted_version(reply.body)
            )
        if reply.status == 403:
            raise SecretForbidden(
                "the store refused the sidecar: its policy does not grant this path",
                store_message=reply.errors,
            )
        if reply.status in (400, 405):
            raise InvalidRequest(
                "the store rejected the request as invalid", store_message=reply.errors
            )
        raise _unavailable_for(reply)

    async def _send(
        self,
        method: str,
        api_path: str,
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        token: str | None,
        urgent: bool = False,
    ) -> Reply:
        """Send to the preferred healthy node; on an outage answer, try the next one.

        Each node has a circuit breaker: while it is open the node is skipped, and when every
        node is open the request fails at once (no timeout paid per request during an outage).
        Open breakers are probed in the background (``_probe_forever``), never by a request.
        """
        if urgent:
            return await self._send_urgent(method, api_path, params, json, token)
        ready = [node for node in self._ordered_nodes() if node.breaker.closed]
        if not ready:
            raise self._circuit_open()
        wait = self._bucket.reserve(max_wait=self._settings.timeout)
        if wait is None:
            raise StoreUnavailable(
                "throttled",
                kind=ErrorKind.THROTTLED,
                detail="the sidecar's own store request budget (backend.rate_limit) is spent",
                retry_after=1.0,
            )
        if wait:
            await asyncio.sleep(wait)
        outcome: Reply | StoreUnavailable | None = None
        for node in ready:
            if not node.breaker.closed:
                continue  # opened by a concurrent request meanwhile
            try:
                reply = await self._send_to(node, method, api_path, params, json, token)
            except StoreUnavailable as exc:
                if exc.kind is not ErrorKind.BAD_RESPONSE:
                    # (A reply of the wrong shape or size came from a node that answers: it
                    # is no sign that the node is down, and must not open its circuit.)
                    self._node_failed(node, exc)
                outcome = exc
                continue
            if reply.status == 429:
                # The store asked us to slow down: no request to this node before it says.
                node.last_error = _unavailable_for(reply)
                retry_after = node.last_error.retry_after
                node.breaker.hold(retry_after if retry_after is not None else 1.0)
                self._node_seen(node, up=True)
                self._trouble.set()
                return reply
            if reply.status in REDIRECTS:
                reply = await self._redirected(node, reply, method, api_path, params, json, token)
                if reply.status in REDIRECTS:
                    # Sent elsewhere and not followed: the node answers, so its circuit stays
                    # closed; another node may do better.
                    outcome = reply
                    continue
            if reply.status >= 500:
                # Sealed, a standby without a leader, overloaded: another node may do better.
                self._node_failed(node, _unavailable_for(reply))
                outcome = reply
                continue
            node.breaker.success()
            self._node_seen(node, up=True)
            self._preferred = node
            return reply
        if isinstance(outcome, Reply):
            return outcome
        raise outcome if outcome is not None else self._circuit_open()

    async def _redirected(
        self,
        node: _Node,
        reply: Reply,
        method: str,
        api_path: str,
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        token: str | None,
    ) -> Reply:
        """A node redirected us (a standby pointing at the active node). Followed once, and only
        to another configured address: the same request is sent there (our path, not the
        Location's), so the token never goes anywhere we were not told to send it."""
        target = self._node_at(reply.headers.get("Location"), relative_to=node.url)
        if target is None or target is node:
            log.warning(
                "store redirect not followed: the target is not a configured address",
                extra={"address": node.url, "status": reply.status},
            )
            return reply
        try:
            return await self._send_to(target, method, api_path, params, json, token)
        except StoreUnavailable as exc:
            self._node_failed(target, exc)
            return reply

    def _node_at(self, location: str | None, *, relative_to: str) -> _Node | None:
        if not location:
            return None
        url = urllib.parse.urlsplit(urllib.parse.urljoin(relative_to + "/", location))
        for candidate in self._nodes:
            configured = urllib.parse.urlsplit(candidate.url)
            if (url.scheme, url.hostname, url.port) == (
                configured.scheme,
                configured.hostname,
                configured.port,
            ):
                return candidate
        return None

    async def forward(
        self,
        method: str,
        api_path: str,
        query: list[tuple[str, str]],
        body: bytes,
        headers: Mapping[str, str],
    ) -> Forwarded:
        """Pass one request through to the store as it came, with the caller's own token
        (in ``headers``), never the sidecar's: the sidecar must not become everyone's way in."""
        ready = [node for node in self._ordered_nodes() if node.breaker.closed]
        if not ready:
            raise self._circuit_open()
        return await self._off_loop(
            self._blocking_forward, ready[0].url, method, api_path, query, body, dict(headers)
        )

    def _blocking_forward(
        self,
        url: str,
        method: str,
        api_path: str,
        query: list[tuple[str, str]],
        body: bytes,
        headers: dict[str, str],
    ) -> Forwarded:
        with self._transport_errors():
            response = self._adapter(url).request(
                method,
                _url_path(api_path),
                headers=headers,
                raise_exception=False,
                params=query,
                data=body or None,
                stream=True,
            )
            content = read_body(response, self._settings.max_response_size)
        kept = {k: response.headers[k] for k in _FORWARD_HEADERS if k in response.headers}
        return Forwarded(response.status_code, content, kept)

    async def _send_urgent(
        self,
        method: str,
        api_path: str,
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        token: str | None,
    ) -> Reply:
        """Small, important requests: every node in turn, breakers and budget aside. They do
        not move breakers either: one lucky answer must not close a circuit."""
        outcome: Reply | StoreUnavailable | None = None
        for node in self._ordered_nodes():
            try:
                reply = await self._send_to(node, method, api_path, params, json, token)
            except StoreUnavailable as exc:
                outcome = exc
                continue
            if reply.status >= 500 or reply.status == 429 or reply.status in REDIRECTS:
                outcome = reply
                continue
            return reply
        if isinstance(outcome, Reply):
            return outcome
        raise outcome if outcome is not None else self._circuit_open()

    def _ordered_nodes(self) -> list[_Node]:
        i = self._nodes.index(self._preferred)
        return self._nodes[i:] + self._nodes[:i]

    def _node_failed(self, node: _Node, exc: StoreUnavailable) -> None:
        node.last_error = exc
        node.breaker.failure()
        self._node_seen(node, up=False)
        if not node.breaker.closed:
            self._trouble.set()
        log.warning(
            "store node failed",
            extra={
                "address": node.url,
                "reason": exc.reason,
                "detail": exc.detail,
                "circuit": node.breaker.state.name.lower(),
            },
        )

    def _node_seen(self, node: _Node, *, up: bool) -> None:
        self._observer.node_state(node.url, up, node.breaker.state)

    async def _probe_forever(self) -> None:
        """Probe nodes whose breaker is open, each at its backed-off probe time."""
        while True:
            due = [node for node in self._nodes if node.breaker.probe_due()]
            if due:
                await asyncio.gather(*(self._probe(node) for node in due))
            waits = [n.breaker.retry_after() for n in self._nodes if not n.breaker.closed]
            if not waits:
                self._trouble.clear()
                await self._trouble.wait()
                continue
            await asyncio.sleep(min(max(min(waits), 0.02), 1.0))

    async def _probe(self, node: _Node) -> None:
        try:
            reply = await self._send_to(
                node,
                "GET",
                "sys/health",
                {"standbyok": "true", "perfstandbyok": "true"},
                None,
                None,
            )
        except StoreUnavailable as exc:
            self._node_failed(node, exc)
            return
        if reply.status == 200:
            node.breaker.success()
            self._node_seen(node, up=True)
            log.info("store node answers again", extra={"address": node.url})
        else:  # sealed (503), not initialised (501), no leader...
            self._node_failed(node, _unavailable_for(reply))

    def _circuit_open(self) -> StoreUnavailable:
        """Every node's breaker is open: answer now, with the most recent cause."""
        wait = min(node.breaker.retry_after() for node in self._nodes)
        cause = next((n.last_error for n in self._ordered_nodes() if n.last_error), None)
        return StoreUnavailable(
            cause.reason if cause else "circuit_open",
            kind=cause.kind if cause else ErrorKind.CONNECTION,
            detail=f"circuit open: the store failed repeatedly; next attempt in {wait:.1f}s",
            retry_after=max(wait, 1.0),
        )

    async def _send_to(
        self,
        node: _Node,
        method: str,
        api_path: str,
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        token: str | None,
    ) -> Reply:
        return await self._off_loop(
            self._blocking_send, node.url, method, api_path, params, json, token
        )

    async def _off_loop(self, blocking: Callable[..., T], *args: Any) -> T:
        """Run a blocking hvac call on the bounded pool, all of it (queueing, connecting,
        sending, every byte of the answer) within the backend timeout. At the deadline the
        call's connection is shut down, so its worker thread is free again at once."""
        timeout = self._settings.timeout
        exchange = Exchange()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, _within, exchange, blocking, *args
        )
        try:
            # A small margin lets requests' own timeout (the better message) fire first.
            async with asyncio.timeout(timeout + 0.25):
                return await future
        except TimeoutError:
            exchange.abort()
            raise self._timeout() from None

    def _timeout(self) -> StoreUnavailable:
        return StoreUnavailable(
            "timeout",
            kind=ErrorKind.TIMEOUT,
            detail=f"no answer within {self._settings.timeout:g}s (backend.timeout)",
        )

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """requests' exceptions, as our outage kinds."""
        try:
            yield
        except (requests.Timeout, Aborted):
            raise self._timeout() from None
        except ReplyTooLarge as exc:
            raise StoreUnavailable(
                "bad_response", kind=ErrorKind.BAD_RESPONSE, detail=str(exc)
            ) from None
        except requests.ConnectionError as exc:
            raise StoreUnavailable(
                "connection_failed", kind=ErrorKind.CONNECTION, detail=_root_cause(exc)
            ) from None
        except requests.RequestException as exc:
            raise StoreUnavailable(
                "connection_failed", kind=ErrorKind.CONNECTION, detail=type(exc).__name__
            ) from None

    def _blocking_send(
        self,
        url: str,
        method: str,
        api_path: str,
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        token: str | None,
    ) -> Reply:
        adapter = self._adapter(url)
        headers = {"X-Vault-Token": token} if token else {}
        with self._transport_errors():
            response = adapter.request(
                method,
                _url_path(api_path),
                headers=headers,
                raise_exception=False,
                params=params,
                json=json,
                stream=True,
            )
            content = read_body(response, self._settings.max_response_size)
        body: Mapping[str, Any] = {}
        if content:
            try:
                parsed = orjson.loads(content)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
            elif 200 <= response.status_code < 300:
                raise StoreUnavailable(
                    "bad_response",
                    kind=ErrorKind.BAD_RESPONSE,
                    detail="the reply is not a JSON object",
                )
        return Reply(response.status_code, body, response.headers)

    def _adapter(self, url: str) -> RawAdapter:
        """One hvac client per worker thread and node: requests sessions are not for sharing."""
        adapters: dict[str, RawAdapter] | None = getattr(self._local, "adapters", None)
        if adapters is None:
            adapters = self._local.adapters = {}
        adapter = adapters.get(url)
        if adapter is None:
            tls = self._settings.tls
            verify: bool | str = not tls.skip_verify
            if tls.ca_cert is not None and not tls.skip_verify:
                verify = str(tls.ca_cert)
            cert = None
            if tls.client_cert is not None and tls.client_key is not None:
                cert = (str(tls.client_cert), str(tls.client_key))
            client = hvac.Client(
                url=url,
                # Never the ambient VAULT_TOKEN or ~/.vault-token: hvac would send it on every
                # request, overriding the token we choose per call.
                token="",
                namespace=self._settings.namespace,
                timeout=self._settings.timeout,
                verify=verify,
                cert=cert,
                adapter=RawAdapter,
                allow_redirects=False,
                session=new_session(),
            )
            adapter = adapters[url] = client.adapter
        return adapter


def _within(exchange: Exchange, blocking: Callable[..., T], *args: Any) -> T:
    with exchange_scope(exchange):
        return blocking(*args)


def _url_path(api_path: str) -> str:
    """``/v1/<api_path>`` with anything outside the safe characters percent-encoded."""
    return "/v1/" + urllib.parse.quote(api_path, safe=_PATH_SAFE)


def _root_cause(exc: BaseException) -> str:
    """'connection refused' rather than a page of urllib3 nesting."""
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Name or service not known"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
