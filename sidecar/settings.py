"""The one settings object: YAML file, ``SIDECAR_*`` environment, Vault's own variables.

Precedence, highest first: ``SIDECAR_<NAME>`` (nested with ``__``, as in
``SIDECAR_BACKEND__TIMEOUT``), then the YAML file, then Vault's conventions (``BAO_ADDR``/
``VAULT_ADDR``, ``BAO_TOKEN``/``VAULT_TOKEN``, ``VAULT_NAMESPACE``, ``VAULT_CACERT``...), then
defaults. Every error names the key and the valid range.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.backend_settings import BackendSettings
from sidecar.core.durations import format_duration
from sidecar.core.paths import check_kv_path
from sidecar.core.policy import OnOutage, Policy, Rule, SecretClass, is_literal
from sidecar.settings_fields import (
    ConfigError,
    Duration,
    HostPort,
    PositiveDuration,
    Strict,
    Text,
    split_hostport,
)

__all__ = ["BackendSettings", "ConfigError", "Settings", "split_hostport"]


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
    # Revoke every leased credential in the store when the sidecar stops. Off by default: a
    # restarting pod would break its own database connections.
    revoke_leases_on_shutdown: bool = False
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

    def secret_classes(self) -> list[SecretClass]:
        """Every configured class, as configured (those no rule uses included)."""
        return [SecretClass(name=name, **spec.model_dump()) for name, spec in self.classes.items()]

    def policy(self) -> Policy:
        """The rules and classes as the cache's Policy; a rule preloads only if it (or else its
        class) says so and its path is literal."""
        classes = {c.name: c for c in self.secret_classes()}
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
