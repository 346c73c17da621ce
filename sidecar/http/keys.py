"""What the HTTP layer shares: the application's keys, the endpoints' fixed prefixes, limits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from sidecar.core.cache import SecretCache
from sidecar.core.events import EventHub
from sidecar.core.facts import Bus
from sidecar.core.verify import Verifier
from sidecar.ops.emergency import Admin
from sidecar.settings import HTTPSettings

SECRETS_PREFIX = "/secrets/"
VAULT_PREFIX = "/v1/"
MAX_BODY = 64 * 1024

CACHE_KEY = web.AppKey("cache", SecretCache)
FACTS_KEY = web.AppKey("facts", Bus)
VERIFIER_KEY = web.AppKey("verifier", Verifier)
HUB_KEY = web.AppKey("hub", EventHub)
ADMIN_KEY = web.AppKey("admin", Admin)
MAX_WAIT_KEY = web.AppKey("max_wait", float)
PASSTHROUGH_KEY = web.AppKey("vault_passthrough", bool)
HTTP_KEY = web.AppKey("http", HTTPSettings)
ReadyReport = Callable[[], Mapping[str, Any]]
StatusReport = Callable[[], Mapping[str, Any]]
STATUS_KEY: web.AppKey[StatusReport] = web.AppKey("status")
# What every response says in Server: no versions (aiohttp's default names its own and Python's).
SERVER = "secrets-sidecar"


def hit_headers(cache_header: str) -> CIMultiDict[str]:
    """The headers every fresh hit carries (``cache_header``: HIT under the API's own name),
    built once and copied per response, never changed."""
    return CIMultiDict(
        {
            "Content-Type": "application/json",
            cache_header: "HIT",
            "Cache-Control": "no-store",
            "Server": SERVER,
        }
    )


READY_KEY: web.AppKey[ReadyReport] = web.AppKey("ready")
