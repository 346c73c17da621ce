"""The one guard: which token may call which endpoint, decided on the route that will run.

Each route declares what it needs (``Access``) and the literal text its path starts with. The
guard runs for exactly that route, so authorisation is decided on what is dispatched, not on a
spelling of it: ``/%61dmin/purge`` and ``http://host/admin/purge`` reach the purge route, and
the purge route wants the admin token. On top of that, the request target must be a plain path
(origin-form) whose fixed part is spelt literally: a percent-encoded or absolute-form spelling
of an endpoint is refused even with the right token.

Fresh cache hits are answered before aiohttp's router (``hit_front``) after the same checks.
(A wrapper, not an aiohttp middleware: the middleware machinery costs as much per request as a
whole cache hit.)
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from multidict import CIMultiDictProxy, istr

from sidecar.http.errors import Refused, error_response
from sidecar.http.tokens import CallerCheck
from sidecar.ops.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CALLER_KEY = web.RequestKey("caller", bool)  # False: not the caller token (passthrough only)


class Access(enum.Enum):
    """Which token a route needs. Each route declares one, so authorisation follows the route
    that actually runs, whatever the spelling of its path."""

    CALLER = "caller"  # the caller token: /secrets, /verify, /events
    ADMIN = "admin"  # the admin token: /admin/*
    VAULT = "vault"  # the caller token; with vault_api.passthrough, also the caller's store token
    EITHER = "either"  # unknown endpoints: either of our tokens gets the 404


# A loopback API has no business behind a proxy: a forwarded request smells of SSRF, and the
# URL-override headers change the path some frameworks route on.
FORWARDING_HEADERS = tuple(
    istr(name)
    for name in (
        "X-Forwarded-For",
        "Forwarded",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Real-IP",
        "X-Original-URL",
        "X-Rewrite-URL",
    )
)
SIDECAR_TOKEN = istr("X-Sidecar-Token")
AUTHORIZATION = istr("Authorization")
CHALLENGE = 'Basic realm="secrets-sidecar admin", charset="UTF-8"'
VAULT_TOKEN = istr("X-Vault-Token")

_MISSING = {
    Access.ADMIN: "send the admin token in X-Sidecar-Token; it is in the sidecar's "
    "admin_token_file",
    Access.CALLER: "send the caller token in X-Sidecar-Token (or X-Vault-Token); it is in the "
    "sidecar's caller_token_file",
}


def forwarding_header(headers: CIMultiDictProxy[str]) -> str | None:
    """The first proxy or URL-override header the request carries, or None: such a request is
    refused, since a loopback API has no business behind a proxy."""
    if headers.keys().isdisjoint(FORWARDING_HEADERS):  # one call in C: the common case
        return None
    return next(str(name) for name in FORWARDING_HEADERS if name in headers)


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token the caller sent: ``X-Sidecar-Token``, else ``X-Vault-Token`` (what Vault clients
    send)."""
    return headers.get(SIDECAR_TOKEN) or headers.get(VAULT_TOKEN)


def basic_password(header: str | None) -> str | None:
    """The password of ``Authorization: Basic`` (any user name), or None: how a browser sends
    the admin token to the status page. Malformed credentials are None (then 401)."""
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon and password else None


def well_formed(token: str) -> bool:
    """Tokens are printable ASCII; anything else (invalid UTF-8 on the wire arrives as lone
    surrogates) is refused before any comparison."""
    return token.isascii() and token.isprintable()


class Guard:
    """Decides whether a request's token and target may run the route that declared its access,
    and counts the statuses of responses for the metrics."""

    def __init__(
        self, callers: CallerCheck, admins: CallerCheck, metrics: Metrics, *, passthrough: bool
    ) -> None:
        self.callers = callers
        self.admins = admins
        self._statuses = metrics.http_statuses
        self._passthrough = passthrough

    def check(self, request: web.Request, access: Access, fixed: str) -> None:
        """Raise ``Refused`` unless this request may run the route that declared ``access``
        and whose path starts with ``fixed``."""
        headers = request.headers
        forwarded = forwarding_header(headers)
        if forwarded is not None:
            raise Refused(400, "bad_request", f"{forwarded} is refused: call the sidecar directly")
        presented = presented_token(headers)
        if presented is None and access is Access.ADMIN:
            presented = basic_password(headers.get(AUTHORIZATION))
        if presented is None:
            raise Refused(401, "unauthorized", _MISSING.get(access, _MISSING[Access.CALLER]))
        if not well_formed(presented):
            raise Refused(401, "unauthorized", "the token is malformed: tokens are printable ASCII")
        # Each comparison is constant-time; the admin one is needed only off the common path.
        is_caller = self.callers(presented)
        is_admin = (access is Access.ADMIN or not is_caller) and self.admins(presented)
        if access is Access.ADMIN:
            if not is_admin:
                raise Refused(
                    403,
                    "forbidden",
                    "admin endpoints need the admin token"
                    + (" (not the caller token)" if is_caller else ""),
                )
        elif access is Access.EITHER:
            if not (is_caller or is_admin):
                raise Refused(403, "forbidden", "the token is wrong")
        elif not is_caller:
            if (
                access is Access.VAULT
                and not is_admin
                and self._passthrough
                and SIDECAR_TOKEN not in headers
            ):
                # Vault API passthrough: a token that is not ours is the caller's own store
                # token. It may only be forwarded, never answered from the cache.
                request[CALLER_KEY] = False
            else:
                raise Refused(
                    403,
                    "forbidden",
                    "the admin token is for /admin/ only"
                    if is_admin
                    else "the caller token is wrong",
                )
        raw = request.raw_path
        if not raw.startswith("/"):
            raise Refused(
                400,
                "bad_request",
                "the request target must be a path such as /secrets/..., not an absolute URL",
            )
        if not raw.startswith(fixed):
            raise Refused(
                400,
                "bad_request",
                f"the path must start with {fixed} spelt as is: no percent-encoding in the "
                "fixed part of an endpoint",
            )

    def count(self, status: int) -> None:
        """Count one response by status for ``sidecar_http_requests``: a plain dict increment,
        cheap enough for the hot path."""
        statuses = self._statuses
        statuses[status] = statuses.get(status, 0) + 1


GUARD_KEY = web.AppKey("guard", Guard)


def guarded(
    handler: Handler, access: Access, fixed: str = "/", *, challenge: bool = False
) -> Handler:
    """``handler`` behind the guard, for a route that needs ``access`` and whose path starts
    with ``fixed``. Refusals on the Vault-compatible API come in Vault's error shape; a page
    for browsers (``challenge``) answers 401 with a Basic challenge, so the browser asks for
    the admin token."""
    vault = access is Access.VAULT

    async def guard(request: web.Request) -> web.StreamResponse:
        check = request.app[GUARD_KEY]
        response: web.StreamResponse
        try:
            check.check(request, access, fixed)
            response = await handler(request)
        except (Refused, web.HTTPException) as exc:
            response = error_response(exc, vault=vault)
            if challenge and response.status == 401:
                response.headers["WWW-Authenticate"] = CHALLENGE
        check.count(response.status)
        return response

    return guard


# -- the hit front: before routing -------------------------------------------------------

# A fast path answers a fresh cache hit from the path after its prefix, or returns None (then
# the request takes the full route). Synchronous: a hit awaits nothing.
FastPath = Callable[[str], web.StreamResponse | None]
FAST_PATHS_KEY = web.AppKey("fast_paths", dict)


def hit_front(app: web.Application) -> Callable[[web.Request], web.StreamResponse | None]:
    """Fresh hits, answered before aiohttp's router and per-route dispatch (which cost as
    much as all of a hit's own work), or None: then the request takes the full route (misses,
    errors, refusals). Only a literal prefix with no escapes and no query qualifies, with the
    caller token and no forwarding header: the same request would pass the guard of the route
    it names. Synchronous: a hit awaits nothing."""
    fast_paths: dict[str, FastPath] = app.get(FAST_PATHS_KEY, {})
    guard = app[GUARD_KEY]
    callers = guard.callers

    def front(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET":
            return None
        raw = request.raw_path
        for prefix, fast in fast_paths.items():
            if not raw.startswith(prefix):
                continue
            headers = request.headers
            token = presented_token(headers)
            if (
                token is not None
                and "?" not in raw
                and "%" not in raw
                and token.isascii()
                and forwarding_header(headers) is None
                and callers(token)
            ):
                response = fast(raw[len(prefix) :])
                if response is not None:
                    guard.count(200)
                    return response
            return None
        return None

    return front
