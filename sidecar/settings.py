"""The one settings object: YAML file, ``SIDECAR_*`` environment, Vault's own variables.

Precedence, highest first: ``SIDECAR_<NAME>`` (nested with ``__``, as in
``SIDECAR_BACKEND__TIMEOUT``), then the YAML file, then Vault's conventions (``BAO_ADDR``/
``VAULT_ADDR``, ``BAO_TOKEN``/``VAULT_TOKEN``, ``VAULT_NAMESPACE``, ``VAULT_CACERT``...), then
defaults. Every error names the key and the valid range.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.core.durations import format_duration, parse_duration
from sidecar.core.paths import check_kv_path
from sidecar.core.policy import OnOutage, Policy, Rule, SecretClass, is_literal

Duration = Annotated[float, BeforeValidator(parse_duration)]
Text = Annotated[str, Field(min_length=1)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0 (e.g. 500ms, 30s, 15m)")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


class ConfigError(Exception):
    """Invalid configuration. ``problems`` are lines of the form ``key.path: what is wrong``."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  {p}" for p in problems))


class Strict(BaseModel):
    """The base of every settings section: an unknown key is an error (a typo must not pass
    silently), and settings cannot change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def split_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) as host and port, for binding and for the
    loopback check; ValueError says the expected form."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8100, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only, so a secrets API open to the network
    is refused unless allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostport(value: str) -> str:
    split_hostport(value)
    return value


HostPort = Annotated[str, AfterValidator(_hostport)]


class SecretClassSettings(Strict):
    """A class of secrets by failure mode: who owns it, how long it may be cached, what to do
    when the store is down. Every field but ``preload``, ``overlap`` and ``negative_ttl`` is
    required: intent must be written down."""

    business_function: Text
    owner: Text
    refresh_interval: PositiveDuration
    max_cache_age: PositiveDuration
    on_outage: OnOutage
    rotation_method: Text
    revocation_steps: Text
    preload: bool = False
    overlap: Duration = 0.0  # how long the previous version stays available after a rotation
    # How long the store's "no such secret" / "not allowed" is remembered (capped at
    # refresh_interval), so a loop of reads of a missing path is not a loop of store reads.
    negative_ttl: Duration = 5.0

    @field_validator("overlap")
    @classmethod
    def _overlap_visible(cls, value: float, info: ValidationInfo) -> float:
        refresh = info.data.get("refresh_interval")
        if value and refresh is not None and value < refresh:
            raise ValueError(
                f"must be 0 or at least refresh_interval ({format_duration(refresh)}): a "
                "shorter overlap can end before the sidecar notices the rotation; "
                f"got {format_duration(value)}"
            )
        return value

    @field_validator("max_cache_age")
    @classmethod
    def _at_least_refresh(cls, value: float, info: ValidationInfo) -> float:
        refresh = info.data.get("refresh_interval")
        if refresh is not None and value < refresh:
            raise ValueError(
                f"must be at least refresh_interval ({format_duration(refresh)}), "
                f"got {format_duration(value)}"
            )
        return value


class RuleSettings(Strict):
    """One ``secrets`` rule: which store paths (a glob) belong to which class, and whether to
    preload them."""

    match: Text = Field(description="glob over the store path; ** spans segments")
    class_: Text = Field(alias="class")
    preload: bool | None = None  # None: the class decides


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


AuthSettings = Annotated[TokenAuth | AppRoleAuth | KubernetesAuth, Field(discriminator="method")]


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


class HTTPSettings(Strict):
    """What one local process can hold on each listener: connections are capped (an idle one
    is closed to make room before a new one is refused), a new connection's request headers
    (and any request body) must arrive within ``header_timeout``, and an idle kept-alive
    connection is closed after ``keepalive_timeout``."""

    max_connections: int = Field(default=1024, ge=16, le=65536)
    ops_max_connections: int = Field(default=128, ge=4, le=4096)
    header_timeout: PositiveDuration = 10.0
    keepalive_timeout: PositiveDuration = 30.0

    @field_validator("header_timeout", "keepalive_timeout")
    @classmethod
    def _timeout_range(cls, value: float) -> float:
        if value > 600:
            raise ValueError(f"must be at most 10m, got {format_duration(value)}")
        return value


class VaultAPISettings(Strict):
    """The Vault-compatible API under /v1/: KV reads from the cache, the rest refused (405) or,
    with ``passthrough``, forwarded to the store with the caller's own token."""

    enabled: bool = True
    passthrough: bool = False


class SnapshotSettings(Strict):
    """The encrypted warm-start snapshot. Without ``key_file`` there is no snapshot."""

    path: Path = Path("/var/lib/secrets-sidecar/snapshot")
    key_file: Path | None = None
    interval: PositiveDuration = 30.0


LogLevel = Literal["debug", "info", "warning", "error"]


class Settings(BaseSettings):
    """The whole configuration: ``SIDECAR_*`` variables over the YAML file over Vault's variables
    over defaults. Load it with ``config.load_settings``, which adds the checks across keys."""

    model_config = SettingsConfigDict(
        env_prefix="SIDECAR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    listen: HostPort = "127.0.0.1:8100"
    metrics_listen: HostPort = "0.0.0.0:9102"
    allow_remote_callers: bool = False
    caller_token_file: Path = Path("/run/secrets-sidecar/token")
    token_rotation_grace: Duration = 30.0
    log_level: LogLevel = "info"
    access_log: bool = False
    shutdown_timeout: Duration = 10.0
    startup_jitter: Duration = 3.0
    admin_token_file: Path = Path("/run/secrets-sidecar-admin/token")
    max_wait: PositiveDuration = 300.0
    max_cache_age_ceiling: PositiveDuration = 86400.0
    verify_lookback: int = Field(default=3, ge=1, le=50)
    revocation_list: Text | None = None
    revocation_poll_interval: PositiveDuration = 5.0
    audit_log: Path | None = None
    audit_stdout: bool = False
    audit_fingerprint_key_file: Path | None = None
    snapshot: SnapshotSettings = SnapshotSettings()
    vault_api: VaultAPISettings = VaultAPISettings()
    http: HTTPSettings = HTTPSettings()
    backend: BackendSettings = Field(default_factory=dict, validate_default=True)
    classes: dict[str, SecretClassSettings] = Field(min_length=1)
    secrets: list[RuleSettings] = Field(min_length=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The sources in precedence order: ``SIDECAR_*`` beats the YAML document (passed as init
        kwargs), which beats Vault's own variables; no dotenv or secrets directory."""
        # The YAML document arrives as init kwargs; SIDECAR_* beats it, Vault's variables don't.
        return env_settings, init_settings, VaultEnvironment(settings_cls)

    @field_validator("revocation_list")
    @classmethod
    def _revocation_path(cls, value: str | None) -> str | None:
        if value is not None:
            check_kv_path(value, what="the path")
        return value

    def policy(self) -> Policy:
        """The rules and classes as the cache's Policy; a rule preloads only if it (or else its
        class) says so and its path is literal."""
        classes = {
            name: SecretClass(name=name, **spec.model_dump()) for name, spec in self.classes.items()
        }
        return Policy(
            Rule(
                rule.match,
                classes[rule.class_],
                preload=(rule.preload if rule.preload is not None else classes[rule.class_].preload)
                and is_literal(rule.match),
            )
            for rule in self.secrets
        )


class VaultEnvironment(PydanticBaseSettingsSource):
    """Vault's (and OpenBao's) environment conventions, as the CLI and SDKs read them."""

    _MAP: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
        (("BAO_ADDR", "VAULT_ADDR"), ("address",)),
        (("BAO_NAMESPACE", "VAULT_NAMESPACE"), ("namespace",)),
        (("BAO_CACERT", "VAULT_CACERT"), ("tls", "ca_cert")),
        (("BAO_CLIENT_CERT", "VAULT_CLIENT_CERT"), ("tls", "client_cert")),
        (("BAO_CLIENT_KEY", "VAULT_CLIENT_KEY"), ("tls", "client_key")),
        (("BAO_SKIP_VERIFY", "VAULT_SKIP_VERIFY"), ("tls", "skip_verify")),
    )

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Unused, but required of a settings source: ``__call__`` reads the variables itself."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        backend: dict[str, Any] = {}
        for names, key in self._MAP:
            value = next((os.environ[n] for n in names if os.environ.get(n)), None)
            if value is None:
                continue
            target = backend
            for part in key[:-1]:
                target = target.setdefault(part, {})
            target[key[-1]] = value
        return {"backend": backend} if backend else {}
