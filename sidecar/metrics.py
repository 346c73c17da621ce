"""Every metric, defined once. Pass a fresh ``CollectorRegistry`` in tests.

Label values come from bounded sets (outcomes, error kinds, configured class names); paths
and versions never become labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from sidecar import __version__
from sidecar.backend import StoreError
from sidecar.cache import Outcome
from sidecar.policy import SecretClass

FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Info("sidecar_build", "Version of the running sidecar.", registry=r)
        self.build_info.info({"version": __version__})
        self.cache_lookups = Counter(
            "sidecar_cache_lookups",
            "Secret reads by how they were answered: hit (memory), miss (fetched), "
            "coalesced (joined a fetch under way), stale (served past refresh_interval "
            "because the store could not confirm).",
            ["outcome", "class"],
            registry=r,
        )
        self.fetch_duration = Histogram(
            "sidecar_backend_fetch_duration_seconds",
            "Time of each store read (mount discovery and re-login included), by outcome.",
            ["outcome"],
            buckets=FETCH_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "sidecar_backend_errors",
            "Failed store reads by kind (not_found, forbidden, timeout, connection, sealed, "
            "rate_limited, server_error, auth_failed, bad_response, invalid_request, stale_read).",
            ["kind"],
            registry=r,
        )
        self.secrets_cached = Gauge(
            "sidecar_secrets_cached", "Secret values held in memory now.", registry=r
        )
        self.requests = Counter(
            "sidecar_http_requests",
            "Requests to the secrets API by status code.",
            ["status"],
            registry=r,
        )
        self.auth_events = Counter(
            "sidecar_auth_events",
            "The sidecar's own store identity: login/renew attempts by result.",
            ["event", "result"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "sidecar_token_expiry_timestamp_seconds",
            "When the sidecar's store token expires (0: never or unknown).",
            registry=r,
        )
        for event in ("login", "renew"):
            for result in ("success", "failure"):
                self.auth_events.labels(event=event, result=result)

    def declare_classes(self, names: list[str]) -> None:
        """Export zeros for every class and outcome, so rates work from the first scrape."""
        for name in names:
            for outcome in Outcome:
                self.cache_lookups.labels(outcome=outcome.value, **{"class": name})

    # CacheObserver
    def fetch_finished(
        self, path: str, secret_class: SecretClass, seconds: float, error: StoreError | None
    ) -> None:
        if error is None:
            self.fetch_duration.labels(outcome="success").observe(seconds)
            return
        self.fetch_duration.labels(outcome=error.kind.value).observe(seconds)
        self.backend_errors.labels(kind=error.kind.value).inc()

    def lookup(self, secret_class: SecretClass, outcome: Outcome) -> None:
        self.cache_lookups.labels(outcome=outcome.value, **{"class": secret_class.name}).inc()

    def entries_changed(self, count: int) -> None:
        self.secrets_cached.set(count)
