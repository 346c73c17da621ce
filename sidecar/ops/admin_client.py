"""The terminal side of the admin API: ``sidecar status`` and ``sidecar admin ...`` ask the
running sidecar on its own listener, with the admin token from its config (what on-call runs
through `kubectl exec`: the image has no curl)."""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from sidecar.core.durations import format_duration
from sidecar.settings import Settings


class AdminCallFailed(Exception):
    """The sidecar could not be asked, or refused: the message says which and what it said."""


def admin_call(
    settings: Settings,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """One admin request (``path`` such as ``/admin/status``); the JSON answer."""
    try:
        token = settings.admin_token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AdminCallFailed(
            f"cannot read admin_token_file {settings.admin_token_file}: {exc.strerror}; run this "
            "where the sidecar runs (kubectl exec ... -c secrets-sidecar)"
        ) from None
    host, _, port = settings.listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")  # noqa: S104
    url = f"http://{host}:{port}{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("X-Sidecar-Token", token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - http URL
            reply = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        said = exc.read()[:500].decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):  # not JSON: show it as it came
            said = json.loads(said).get("reason", said)
        raise AdminCallFailed(f"{method} {path} answered {exc.code}: {said}") from None
    except (OSError, ValueError) as exc:
        raise AdminCallFailed(
            f"cannot reach the sidecar at {host}:{port} ({exc}); is it running with this config?"
        ) from None
    if not isinstance(reply, dict):
        raise AdminCallFailed(f"{method} {path} did not answer a JSON object")
    return reply


def ask(
    settings: Settings, method: str, path: str, body: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """``admin_call`` for a command: the answer, or None once the reason is on stderr."""
    try:
        return admin_call(settings, method, path, body)
    except AdminCallFailed as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return None


def purge_main(settings: Settings, *, path: str | None, prefix: str | None, every: bool) -> int:
    """``sidecar admin purge``: drop values from memory and snapshot; 0 done, 1 not done."""
    body: dict[str, Any] = (
        {"path": path} if path else {"prefix": prefix} if prefix else {"all": every}
    )
    reply = ask(settings, "POST", "/admin/purge", body)
    if reply is None:
        return 1
    print(
        f"purged {reply.get('purged')} cached value(s) from memory and snapshot; the next read "
        "of each goes to the store"
    )
    return 0


def extend_main(settings: Settings, *, secret_class: str, max_cache_age: str, duration: str) -> int:
    """``sidecar admin extend``: a temporary, audited max_cache_age; 0 done, 1 refused."""
    body = {"class": secret_class, "max_cache_age": max_cache_age, "for": duration}
    reply = ask(settings, "POST", "/admin/extend", body)
    if reply is None:
        return 1
    print(
        f"class {reply.get('class')}: max_cache_age {format_duration(reply['max_cache_age'])} "
        f"(configured {format_duration(reply['configured_max_cache_age'])}) until "
        f"{reply.get('until')}, then it reverts by itself"
    )
    return 0
