"""The only module that imports hvac: one store request over HTTP, off the event loop.

hvac is synchronous, so every call runs on a bounded thread pool (``max_concurrency``), all of
it (waiting for a worker, connecting, sending, every byte of the answer) within the backend
timeout; at the deadline the call's socket is shut down, so its thread is free again at once
(``transport.py``). Replies are read up to ``max_response_size`` and parsed as JSON objects;
what they mean is decided in ``replies.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import hvac
import orjson
import requests
from hvac.adapters import RawAdapter

from sidecar.backend_settings import BackendSettings
from sidecar.core.paths import SAFE_CHARACTERS
from sidecar.store.interface import ErrorKind, Forwarded, PassThrough, StoreUnavailable
from sidecar.store.replies import Reply
from sidecar.store.transport import (
    Aborted,
    Exchange,
    ReplyTooLarge,
    exchange_scope,
    new_session,
    read_body,
)

T = TypeVar("T")

# Characters left as they are in a store URL's path; anything else is percent-encoded, so no
# path can add a query, a fragment or another host to a store request.
_PATH_SAFE = "".join(sorted(SAFE_CHARACTERS - set(string.ascii_letters + string.digits)))
_FORWARD_HEADERS = ("Content-Type", "Retry-After", "X-Vault-Index", "Location")


class HvacClient:
    """The one place hvac runs: every store request goes off the event loop onto a bounded thread
    pool and is cut at the backend timeout, so a slow or hung store can neither block the loop
    nor pile up threads."""

    def __init__(self, settings: BackendSettings) -> None:
        self._settings = settings
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix="store"
        )
        self._local = threading.local()

    def close(self) -> None:
        """Release the worker pool at shutdown without waiting: queued calls are cancelled, and a
        call stuck on a dead store must not hold up the exit."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def send(
        self,
        url: str,
        method: str,
        api_path: str,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> Reply:
        """One request to the node at ``url``, with ``token`` (or none)."""
        return await self._off_loop(self._blocking_send, url, method, api_path, params, json, token)

    async def forward(self, url: str, request: PassThrough) -> Forwarded:
        """One request passed through as it came (the caller's own token in ``headers``)."""
        return await self._off_loop(self._blocking_forward, url, request)

    def _blocking_forward(self, url: str, request: PassThrough) -> Forwarded:
        with self._transport_errors():
            response = self._adapter(url).request(
                request.method,
                _url_path(request.api_path),
                headers=dict(request.headers),
                raise_exception=False,
                params=request.query,
                data=request.body or None,
                stream=True,
            )
            content = read_body(response, self._settings.max_response_size)
        kept = {k: response.headers[k] for k in _FORWARD_HEADERS if k in response.headers}
        return Forwarded(response.status_code, content, kept)

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
