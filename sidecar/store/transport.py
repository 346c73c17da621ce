"""The HTTP under hvac: what a store request may cost, whatever the other end does.

hvac speaks through a ``requests`` session; the session made here

- follows no redirects (the caller decides, and never sends the token to an address that is
  not configured);
- takes nothing from the environment (no proxy variables, no ``.netrc``: the store token goes
  to the configured addresses and nowhere else);
- lets the event loop cut a request at its deadline: each request's connection is registered
  with its ``Exchange``, and ``Exchange.abort()`` shuts the socket down, so a store that
  answers one byte a second frees the worker thread at the deadline instead of never;
- reads replies through ``read_body``, which stops at a size limit (decompressed bytes), so a
  huge reply costs at most the limit in memory.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()
CHUNK = 64 * 1024


class ReplyTooLarge(Exception):
    """A reply passed ``backend.max_response_size``: refused as bad_response, so a huge or
    endless reply costs at most the limit in memory."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the reply is larger than {limit} bytes (backend.max_response_size)")
        self.limit = limit


class Aborted(Exception):
    """The deadline passed before the request was sent."""


class Exchange:
    """One store request, as seen from the event loop: it can be cut at any point. It holds
    the request's socket itself, not its connection: once a reply that closes the connection
    arrives, http.client hands the socket to the reply and forgets it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def attach(self, connection: Any) -> None:
        """Take ``connection``'s socket as this request's, so ``abort`` can cut it; if the
        deadline has already passed, cut it at once."""
        sock = getattr(connection, "sock", None)
        if sock is None:
            return  # not connected yet: connect() attaches again
        with self._lock:
            self._sock = sock
            aborted = self.aborted
        if aborted:
            _shutdown(sock)

    def abort(self) -> None:
        """Cut the request at its deadline: shut its socket down so the worker thread blocked on
        it is free at once (a socket attached later is shut on arrival)."""
        with self._lock:
            self.aborted = True
            sock = self._sock
        if sock is not None:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def exchange_scope(exchange: Exchange) -> Iterator[None]:
    """Within this block, connections used by this thread belong to ``exchange``."""
    if exchange.aborted:
        raise Aborted
    _current.exchange = exchange
    try:
        yield
    finally:
        _current.exchange = None


def _register(connection: Any) -> None:
    exchange: Exchange | None = getattr(_current, "exchange", None)
    if exchange is not None:
        exchange.attach(connection)


class _Tracked:
    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _register(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _register(self)  # the socket, before a closing reply takes it over
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Tracked, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def new_session() -> requests.Session:
    """A requests session for hvac that follows no redirects, retries nothing, ignores the
    environment (proxies, .netrc) and tracks its sockets: the token goes only to configured
    addresses, and a deadline can cut any request."""
    session = requests.Session()
    session.trust_env = False
    adapter = _Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def read_body(response: requests.Response, limit: int) -> bytes:
    """The whole reply body, or ReplyTooLarge as soon as it passes ``limit`` bytes."""
    try:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ReplyTooLarge(limit)
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(CHUNK):
            total += len(chunk)
            if total > limit:
                raise ReplyTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)
    except BaseException:
        response.close()  # drop the connection: it holds the rest of a reply nobody reads
        raise
