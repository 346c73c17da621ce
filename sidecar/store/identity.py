"""The sidecar's own identity in the store: a token, obtained and kept valid.

Token auth uses the given token (file or environment) and renews it if renewable. AppRole and
Kubernetes auth log in, renew at 2/3 of the TTL, and log in again when renewal is refused, when
renewals run short, or when a 403 turns out to be a dead token. Every store request goes
through the backend's ``call`` (so breakers, budgets and failover apply to auth too).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sidecar.backend_settings import AppRoleAuth, BackendSettings, KubernetesAuth, TokenAuth
from sidecar.core.backoff import full_jitter
from sidecar.core.facts import AuthEvent, Listener
from sidecar.core.supervise import listener_of_failures, supervised
from sidecar.store import replies
from sidecar.store.interface import (
    ErrorKind,
    InvalidRequest,
    SecretForbidden,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("sidecar.store")

RENEW_AT = 2 / 3  # renew the sidecar's token at this fraction of its TTL, as Vault Agent does


class StoreCall(Protocol):
    """What the authenticator needs of the store: its requests go through the backend's own
    ``call``, so logins and renewals get the same breakers, budget and failover as reads."""

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
    ) -> Any:
        """One store request; a refusal is raised as a StoreError kind. Auth requests pass
        ``authenticated=False`` (with a ``token`` of their own), so a 403 there never starts
        another login."""


class Authenticator:
    """The sidecar's own identity in the store: a token, kept valid.

    Token auth uses the given token and renews it if renewable. AppRole and Kubernetes auth log
    in, renew at 2/3 of the TTL, and log in again when renewal is refused or the token dies.
    """

    def __init__(
        self,
        backend: StoreCall,
        settings: BackendSettings,
        listener: Listener,
        rng: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._clock = clock
        # After a failed login, nothing logs in again before ``_retry_at``: reads are refused
        # at once (503 auth_failed) instead of each sending a login, so one misconfigured fleet
        # cannot hammer the store's auth endpoint.
        self._failures = 0
        self._retry_at = 0.0
        self.failure: str | None = None  # why the last login failed (None: it did not)
        self._last_error: StoreUnavailable | None = None
        self._dead: str | None = None  # a token the store said is expired or revoked
        self._method = settings.auth
        self._backoff = settings.backoff
        self._rng = rng
        self._listener = listener
        self._token: str | None = None
        self._token_seen: str | None = None  # the last token held (None while one is fetched)
        # called when the sidecar holds a different token than before (a login, a replaced
        # token file): leases made with the old one end with it, so leased credentials go
        self.on_new_token: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()
        self._renewal: asyncio.Task[None] | None = None
        self._ttl_known = asyncio.Event()
        self._renew_in: float | None = None
        self._lease = 0.0  # TTL granted at the last login, to notice renewals running short

    async def start(self) -> None:
        """Authenticate in the background: start-up never waits on the store."""
        self._renewal = asyncio.create_task(
            supervised("store_auth", self._maintain, listener_of_failures(self._listener)),
            name="store-auth",
        )

    async def _maintain(self) -> None:
        attempt = 0
        while True:
            try:
                token = await self.ensure()
                try:
                    await self._inspect()
                except SecretForbidden:
                    await self.recover(token)  # dead at start: re-read the file or log in
                    await self._inspect()
                break
            except StoreError as exc:
                delay = max(
                    0.1,
                    self._retry_at - self._clock(),
                    full_jitter(attempt, self._backoff.base, self._backoff.cap, self._rng),
                )
                attempt += 1
                log.error(
                    "store authentication failed; retrying",
                    extra={
                        "method": self._method.method,
                        "reason": exc.reason,
                        "detail": exc.detail,
                        "retry_in_seconds": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
        await self._renew_forever()

    async def stop(self) -> None:
        """Cancel the background login and renewal loop at shutdown, and wait until it has ended."""
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)

    @property
    def failure_reason(self) -> str | None:
        """The reason code of the last failed login while logins keep failing (None: not)."""
        return None if self._last_error is None else self._last_error.reason

    @property
    def token(self) -> str | None:
        """The store token in use (None: none yet, or being replaced)."""
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        """Hold ``value``; a token different from the last one held is told to the hooks."""
        self._token = value
        if value is not None and value != self._token_seen:
            self._token_seen = value
            for hook in self.on_new_token:
                hook()

    @property
    def token_digest(self) -> str | None:
        """A digest of the token in use (never the token): which token issued a lease."""
        token = self._token_seen
        return None if token is None else hashlib.sha256(token.encode()).hexdigest()[:16]

    async def ensure(self) -> str:
        """The token to send now; without one, obtain it (once, under the lock, for every waiter)
        so concurrent first requests do not each log in."""
        if self.token is not None:
            return self.token
        async with self._lock:
            if self.token is None:
                self.token = await self._obtain()
            return self.token

    async def recover(self, failed: str) -> str | None:
        """After a 403: a new token to retry with, or None if the token is fine (a real 403)."""
        async with self._lock:
            if self.token is not None and self.token != failed:
                return self.token  # someone else already replaced it
            try:
                await self._backend.call(
                    "GET", "auth/token/lookup-self", authenticated=False, token=failed
                )
            except SecretForbidden:
                pass  # the token itself is dead
            else:
                return None
            log.warning(
                "the sidecar's store token is expired or revoked; authenticating again",
                extra={"method": self._method.method},
            )
            self.token = None
            self.token = await self._obtain(failed)
            if isinstance(self._method, TokenAuth):
                # A replaced token file: learn the new token's TTL, so it is renewed and its
                # expiry reported (not the dead one's).
                try:
                    await self._inspect()
                except StoreError as exc:
                    log.warning(
                        "cannot look up the new store token; its renewal is not scheduled",
                        extra={"reason": str(exc)},
                    )
            return self.token

    async def _obtain(self, failed: str | None = None) -> str:
        """A token to use: the configured one, or a fresh login. ``failed``: known dead. Within
        the backoff after a failed login, refused at once without asking the store."""
        method = self._method
        wait = self._retry_at - self._clock()
        last = self._last_error
        if wait > 0 and last is not None:
            raise StoreUnavailable(
                last.reason,
                kind=last.kind,
                detail=f"the sidecar cannot authenticate to the store ({self.failure}); "
                f"next login attempt in {wait:.1f}s",
                retry_after=wait,
            )
        try:
            token = (
                self._token_from(method, failed)
                if isinstance(method, TokenAuth)
                else await self._login(method)
            )
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable):
                unavailable = exc
            else:
                why = (
                    f"the store refused the {method.method} login ({exc.kind.value}); check "
                    "the credentials in backend.auth"
                    if exc.kind in (ErrorKind.FORBIDDEN, ErrorKind.INVALID_REQUEST)
                    else str(exc)
                )
                unavailable = StoreUnavailable(
                    "auth_failed", kind=ErrorKind.AUTH_FAILED, detail=why
                )
            self._failures += 1
            self._last_error = unavailable
            self.failure = str(unavailable)
            self._retry_at = self._clock() + max(
                0.1,
                full_jitter(self._failures - 1, self._backoff.base, self._backoff.cap, self._rng),
            )
            self._listener.notify(AuthEvent("login", False, None))
            log.error(
                "store authentication failed; reads are refused until a login succeeds",
                extra={
                    "method": method.method,
                    "reason": str(exc),
                    "retry_in_seconds": round(self._retry_at - self._clock(), 2),
                },
            )
            if unavailable is exc:
                raise
            raise unavailable from None
        self._failures, self._last_error, self.failure = 0, None, None
        return token

    def _token_from(self, method: TokenAuth, failed: str | None) -> str:
        if method.token_file is not None:
            token = _read_secret_file(method.token_file, "backend.auth.token_file")
        else:
            assert method.env_token is not None  # guaranteed by settings validation
            token = method.env_token.get_secret_value()
        if token in (failed, self._dead):
            # Still the token the store declared dead: a failure (and the backoff grows), not
            # a success that sends another doomed request.
            self._dead = token
            raise StoreUnavailable(
                "auth_failed",
                kind=ErrorKind.AUTH_FAILED,
                detail="the configured token is expired or revoked; put a valid one in "
                "backend.auth.token_file",
            )
        return token

    async def _login(self, method: AppRoleAuth | KubernetesAuth) -> str:
        if isinstance(method, AppRoleAuth):
            role_id = method.role_id or _read_secret_file(
                method.role_id_file, "backend.auth.role_id_file"
            )
            payload = {"role_id": role_id}
            if method.secret_id_file is not None:
                payload["secret_id"] = _read_secret_file(
                    method.secret_id_file, "backend.auth.secret_id_file"
                )
        else:
            payload = {
                "role": method.role,
                "jwt": _read_secret_file(method.jwt_file, "backend.auth.jwt_file"),
            }
        reply = await self._backend.call(
            "POST", f"auth/{method.mount}/login", json=payload, authenticated=False
        )
        grant = replies.login(reply.body)
        token, ttl = grant.token, grant.ttl
        assert token is not None  # replies.login refuses a reply without one
        self._lease = ttl
        self._schedule(ttl, renewable=grant.renewable)
        self._listener.notify(AuthEvent("login", True, time.time() + ttl if ttl else None))
        log.info("logged in to the store", extra={"method": method.method, "ttl_seconds": ttl})
        return token

    async def _inspect(self) -> None:
        """Learn the token's TTL (token auth) so renewal can be scheduled."""
        if not isinstance(self._method, TokenAuth) or self.token is None:
            return
        reply = await self._backend.call(
            "GET", "auth/token/lookup-self", authenticated=False, token=self.token
        )
        grant = replies.lookup(reply.body)
        ttl = grant.ttl
        self._schedule(ttl, renewable=grant.renewable)
        self._listener.notify(AuthEvent("login", True, time.time() + ttl if ttl else None))

    def _schedule(self, ttl: float, *, renewable: bool) -> None:
        if ttl <= 0:
            self._renew_in = None  # never expires (root or periodic without TTL)
        elif renewable:
            self._renew_in = ttl * RENEW_AT
        else:
            # Not renewable: log in again before it runs out (token auth can't; it just waits).
            self._renew_in = ttl * RENEW_AT if not isinstance(self._method, TokenAuth) else None
        self._ttl_known.set()

    async def _renew_forever(self) -> None:
        failures = 0
        while True:
            await self._ttl_known.wait()
            self._ttl_known.clear()
            if self._renew_in is None:
                continue
            await asyncio.sleep(self._renew_in)
            try:
                await self._renew()
                failures = 0
            except StoreError as exc:
                failures += 1
                delay = min(60.0, 2.0**failures)
                log.warning(
                    "token renewal failed; retrying",
                    extra={"reason": str(exc), "retry_in_seconds": delay},
                )
                self._renew_in = delay
                self._ttl_known.set()

    async def _renew(self) -> None:
        token = self.token
        if token is None:
            await self.ensure()
            return
        try:
            reply = await self._backend.call(
                "POST", "auth/token/renew-self", json={}, authenticated=False, token=token
            )
        except (SecretForbidden, InvalidRequest):
            self._listener.notify(AuthEvent("renew", False, None))
            if isinstance(self._method, TokenAuth):
                raise
            async with self._lock:
                self.token = None
                self.token = await self._obtain()
            return
        grant = replies.renewal(reply.body)
        ttl = grant.ttl
        self._listener.notify(AuthEvent("renew", True, time.time() + ttl if ttl else None))
        log.info("store token renewed", extra={"ttl_seconds": ttl})
        if not isinstance(self._method, TokenAuth) and ttl < self._lease / 3:
            # The token is near its max TTL and renewals come back short: log in afresh.
            async with self._lock:
                self.token = None
                self.token = await self._obtain()
            return
        self._schedule(ttl, renewable=grant.renewable)


def _read_secret_file(path: Path | None, key: str) -> str:
    if path is None:
        raise StoreUnavailable("auth_failed", kind=ErrorKind.AUTH_FAILED, detail=f"{key} not set")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StoreUnavailable(
            "auth_failed",
            kind=ErrorKind.AUTH_FAILED,
            detail=f"{key} {path}: cannot read it ({exc.strerror})",
        ) from None
    if not value:
        raise StoreUnavailable(
            "auth_failed", kind=ErrorKind.AUTH_FAILED, detail=f"{key} {path} is empty"
        )
    return value
