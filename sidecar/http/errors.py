"""Every refusal a caller can see, and the one function that turns each into a status and a body.

Handlers and the guard raise (or hand over) typed refusals; ``error_response`` maps them: our JSON
(``error``, ``reason``, ``path``) on the native and admin APIs, Vault's ``{"errors": [...]}`` on the
Vault-compatible one. A store's own error text never reaches a caller: it is logged where it is
received, and callers get our classified reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from sidecar.core.cache import PathNotAllowed, SecretRevoked
from sidecar.core.paths import InvalidPath
from sidecar.ops.emergency import AdminError
from sidecar.store.interface import (
    InvalidRequest,
    SecretForbidden,
    SecretNotFound,
    StoreUnavailable,
)

log = logging.getLogger("sidecar.http")

DEFAULT_RETRY_AFTER = 2  # seconds, when the store gave no hint


class BadRequest(Exception):
    """The caller's request is malformed; the message says how (it becomes the 400's reason)."""


class PayloadTooLarge(Exception):
    """A request body over the limit."""


class Refused(Exception):
    """A refusal decided before any handler: a token, a header, the request target."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


class FieldNotFound(Exception):
    """The secret has no field of the name asked for (a one-field read): a 404 with its own code,
    so a caller can tell a wrong field from a missing secret."""


class VersionRetired(Exception):
    """``?version=previous`` after the overlap: the previous version is no longer served."""


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
}


def error_response(
    exc: BaseException, path: str | None = None, *, vault: bool = False
) -> web.Response:
    """Every failure a caller can see becomes a status and a body here and nowhere else.

    404/403 mean the secret is invalid (the store answered no); 503 means it is unavailable
    (nobody could ask). The two never share a status.
    """
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    detail: str | None = None
    if isinstance(exc, Refused):
        status, code, reason = exc.status, exc.code, exc.reason
    elif isinstance(exc, BadRequest | InvalidPath):
        status, code, reason = 400, "bad_request", str(exc)
    elif isinstance(exc, PayloadTooLarge):
        status, code, reason = 413, "request_too_large", str(exc)
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        status, code = 413, "request_too_large"
        reason = f"the body is larger than {exc.max_size} bytes"  # type: ignore[attr-defined]
    elif isinstance(exc, InvalidRequest):
        status, code, reason = 400, "bad_request", exc.reason
    elif isinstance(exc, PathNotAllowed):
        status, code = 403, "path_not_allowed"
        reason = "no rule under 'secrets' in the sidecar's configuration matches this path"
    elif isinstance(exc, SecretNotFound):
        status, code, reason = 404, "secret_not_found", exc.reason
    elif isinstance(exc, FieldNotFound):
        status, code, reason = 404, "field_not_found", f"the secret has no field {exc}"
    elif isinstance(exc, SecretForbidden):
        status, code, reason = 403, "secret_forbidden", exc.reason
    elif isinstance(exc, VersionRetired):
        status, code, reason = 410, "version_retired", str(exc)
    elif isinstance(exc, SecretRevoked):
        status, code, reason = 410, "secret_revoked", exc.reason
    elif isinstance(exc, AdminError):
        status, code, reason = exc.status, _HTTP_CODES.get(exc.status, "bad_request"), exc.reason
    elif isinstance(exc, StoreUnavailable):
        status, code, reason, detail = 503, "secret_unavailable", exc.reason, exc.detail
        retry = exc.retry_after
        if retry is None or not math.isfinite(retry):
            retry = DEFAULT_RETRY_AFTER
        headers["Retry-After"] = str(max(1, math.ceil(min(retry, 3600.0))))
    elif isinstance(exc, web.HTTPException):  # aiohttp's own refusals, in our shape
        status, code, reason = exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason
    else:
        log.exception("unexpected error serving a request", extra={"path": path})
        status, code, reason = 500, "internal_error", "unexpected error; see the sidecar's log"
    if vault:
        return vault_error(status, code, reason, detail, headers)
    body: dict[str, Any] = {"error": code, "reason": reason, "path": path}
    if detail:
        body["detail"] = detail
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def vault_error(
    status: int,
    code: str,
    reason: str,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Vault's error shape. A plain 404 has no message, as Vault's own (the CLI then says
    "No value found at ..."); others carry our code and reason."""
    if code in ("secret_not_found", "not_found"):
        errors: list[str] = []
    elif code == "secret_forbidden":
        errors = ["permission denied"]
    else:
        errors = [f"{code}: {reason}" + (f" ({detail})" if detail else "")]
    return web.Response(
        status=status,
        body=orjson.dumps({"errors": errors}),
        content_type="application/json",
        headers=headers or {"Cache-Control": "no-store"},
    )
