"""The ``backend`` section: where the store is, how the sidecar proves who it is, and how hard
it may lean on the store (timeouts, retries, breakers, its request budget)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sidecar.core.durations import format_duration
from sidecar.settings_fields import Duration, PositiveDuration, Strict, Text


class TokenAuth(Strict):
    """Authenticate with a token given to the sidecar: ``token_file``, else BAO_TOKEN or
    VAULT_TOKEN from the environment (read once, at load)."""

    method: Literal["token"] = "token"
    token_file: Path | None = None
    _env_token: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _token_source(self) -> TokenAuth:
        if self.token_file is None:
            token = os.environ.get("BAO_TOKEN") or os.environ.get("VAULT_TOKEN")
            if not token:
                raise ValueError(
                    "token auth needs backend.auth.token_file, or BAO_TOKEN/VAULT_TOKEN "
                    "in the environment"
                )
            self._env_token = SecretStr(token)
        return self

    @property
    def env_token(self) -> SecretStr | None:
        """The token taken from the environment at load (None with ``token_file``), kept out of
        reprs and dumps."""
        return self._env_token


class AppRoleAuth(Strict):
    """Log in with AppRole: the role_id inline or in a file, and an optional secret_id file
    (files are read at each login)."""

    method: Literal["approle"]
    role_id: Text | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    mount: Text = "approle"

    @model_validator(mode="after")
    def _one_role_id(self) -> AppRoleAuth:
        if (self.role_id is None) == (self.role_id_file is None):
            raise ValueError("approle auth needs exactly one of role_id or role_id_file")
        return self


class KubernetesAuth(Strict):
    """Log in with the pod's service account token, read from ``jwt_file`` at each login (the
    kubelet rotates it)."""

    method: Literal["kubernetes"]
    role: Text
    jwt_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    mount: Text = "kubernetes"


def _token_unless_said(value: object) -> object:
    """``method`` defaults to ``token``, as documented: an ``auth:`` block with only a
    ``token_file`` means token auth, not "method is required"."""
    if isinstance(value, dict) and "method" not in value:
        return {**value, "method": "token"}
    return value


AuthSettings = Annotated[
    TokenAuth | AppRoleAuth | KubernetesAuth,
    Field(discriminator="method"),
    BeforeValidator(_token_unless_said),
]


class TLSSettings(Strict):
    """How to trust and authenticate to the store over HTTPS: the CA, a client certificate, or no
    verification at all."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    skip_verify: bool = False


class BackoffSettings(Strict):
    """Full-jitter exponential backoff: retry n waits ``min(cap, base * 2**n) * random()``."""

    base: PositiveDuration = 0.5
    cap: PositiveDuration = 30.0

    @field_validator("cap")
    @classmethod
    def _cap_at_least_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("base")
        if base is not None and value < base:
            raise ValueError(f"must be at least base ({format_duration(base)})")
        return value


class CircuitBreakerSettings(Strict):
    """How many consecutive failures open a node's circuit, after which requests to it fail fast
    instead of each waiting out a timeout."""

    failure_threshold: int = Field(default=3, ge=1, le=100)


class RateLimitSettings(Strict):
    """This sidecar's own budget of store requests (token bucket)."""

    requests_per_second: float = Field(default=50.0, gt=0, le=100_000)
    burst: int = Field(default=20, ge=1, le=100_000)
    # The share of the burst that background refreshes leave to reads: they spend only tokens
    # above it and never queue, so a read never waits behind refresh-ahead.
    reserved_for_reads: float = Field(default=0.25, ge=0, lt=1)


class BackendSettings(Strict):
    """The store and how to talk to it: its nodes, namespace, auth, timeout, concurrency, TLS,
    and the limits that protect both sides."""

    address: Text = "http://127.0.0.1:8200"
    addresses: list[Text] = Field(default_factory=list)
    namespace: str | None = None
    # Defaults are validated like written values, so a missing token is reported as
    # backend.auth alongside every other problem instead of aborting validation from a factory.
    auth: AuthSettings = Field(default_factory=lambda: {"method": "token"}, validate_default=True)
    timeout: Duration = 2.0
    max_concurrency: int = Field(default=8, ge=1, le=256)
    tls: TLSSettings = TLSSettings()
    backoff: BackoffSettings = BackoffSettings()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    # The requests/s the store is sized for (from its own load test), exported so a fleet-wide
    # alert can compare the sidecars' summed load with it; 0: not known (no alert).
    store_capacity: float = Field(default=0.0, ge=0, le=10_000_000)
    # The largest store reply read (decompressed); a larger one is refused as bad_response.
    max_response_size: ByteSize = ByteSize(4 * 1024 * 1024)

    @field_validator("max_response_size")
    @classmethod
    def _response_size_range(cls, value: ByteSize) -> ByteSize:
        if not 1024 <= value <= 1024**3:
            raise ValueError(f"must be from 1KiB to 1GiB, got {value.human_readable()}")
        return value

    @field_validator("address")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("addresses")
    @classmethod
    def _http_urls(cls, values: list[str]) -> list[str]:
        urls = [_http_url(v) for v in values]
        if len(set(urls)) != len(urls):
            raise ValueError("lists an address twice")
        return urls

    @property
    def urls(self) -> list[str]:
        """The store's nodes in order of preference: ``addresses``, else ``address``."""
        return list(self.addresses) or [self.address]

    @field_validator("timeout")
    @classmethod
    def _timeout_range(cls, value: float) -> float:
        if not 0.05 <= value <= 300:
            raise ValueError(f"must be from 50ms to 5m, got {format_duration(value)}")
        return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    return value.rstrip("/")
