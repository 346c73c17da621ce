"""Every metric, defined once. Pass a fresh ``CollectorRegistry`` in tests.

Label values come from bounded sets (outcomes, error kinds, configured class names); paths
and versions never become labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.core.cache import SecretCache
from sidecar.core.entries import Outcome
from sidecar.core.facts import (
    AuthEvent,
    BackgroundFailed,
    BudgetDegraded,
    ConnectionClosed,
    ConnectionsOpen,
    EntriesChanged,
    Fact,
    FetchFinished,
    FirstServed,
    LeaseEvent,
    LookedUp,
    NodeState,
    PreviousRetired,
    PreviousServed,
    RevocationsPolled,
    Revoked,
    Rotated,
    SnapshotFailed,
    SnapshotLoaded,
    SnapshotSaved,
    Unavailable,
    Verified,
)
from sidecar.core.policy import SecretClass
from sidecar.core.verify import Match
from sidecar.ops.leases import LeaseCollector

BACKGROUND_TASKS = (
    "snapshot",
    "refresh",
    "revocations",
    "token_watch",
    "store_prober",
    "store_auth",
)
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric, fed by facts (``notify``), except the hot path's plain counts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._classes: list[str] = []
        r = self.registry
        self.build_info = Info("sidecar_build", "Version of the running sidecar.", registry=r)
        self.build_info.info({"version": __version__})
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
        # The hot path's counts, plain ints read at scrape time (facts.py says why): HTTP
        # statuses here, cache hits in the cache; the other lookups come as facts.
        self.http_statuses: dict[int, int] = {}
        self.lookups: dict[tuple[Outcome, str], int] = {}  # (outcome, class) -> reads
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
        self.fail_closed = Counter(
            "sidecar_fail_closed",
            "Reads refused (503) because a fail_closed class may not serve an unconfirmed value.",
            ["class"],
            registry=r,
        )
        self.unavailable_reads = Counter(
            "sidecar_unavailable",
            "Reads answered 503, by class and reason (connection_failed, timeout, sealed, "
            "rate_limited, auth_failed, fail_closed, max_cache_age_exceeded, throttled...).",
            ["class", "reason"],
            registry=r,
        )
        self.backend_up = Gauge(
            "sidecar_backend_up",
            "1 if the last request to this store address got an answer, else 0.",
            ["address"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "sidecar_circuit_state",
            "Circuit breaker per store address: 0 closed, 1 open (failing fast), 2 half-open "
            "(one probe out).",
            ["address"],
            registry=r,
        )
        self.snapshot_last_success = Gauge(
            "sidecar_snapshot_last_success_timestamp_seconds",
            "When the snapshot was last written successfully (0: never).",
            registry=r,
        )
        self.snapshot_entries = Gauge(
            "sidecar_snapshot_entries",
            "Entries in the last snapshot written, or loaded at start.",
            registry=r,
        )
        self.snapshot_errors = Counter(
            "sidecar_snapshot_errors",
            "Snapshot problems: operation=load (corrupt, truncated, tampered, wrong key; the "
            "snapshot is ignored) or save (the previous snapshot stays).",
            ["operation"],
            registry=r,
        )
        self.rotations = Counter(
            "sidecar_rotations",
            "New versions detected (the store's current version moved past the one held).",
            ["class"],
            registry=r,
        )
        self.rotation_adoption = Histogram(
            "sidecar_rotation_adoption_seconds",
            "From detecting a rotation to the app's first read of the new version: evidence "
            "that the app reloaded.",
            ["class"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.lease_events = Counter(
            "sidecar_lease_events",
            "What happened to leased credentials' leases, by class and event: issued, renewed, "
            "renewal_refused (near max_ttl, or gone), reissued (a new credential replaced one), "
            "revoked (a replaced one, after its overlap), expired (ended, store unreachable).",
            ["class", "event"],
            registry=r,
        )
        self.budget_degraded = Counter(
            "sidecar_budget_degraded",
            "Times the store request budget (backend.rate_limit) could not keep up, by class and "
            "action: deferred (a background refresh put off until a token is spare), "
            "served_stale (a read answered with the value held, within max_cache_age, instead "
            "of waiting for a token).",
            ["class", "action"],
            registry=r,
        )
        self.previous_served = Counter(
            "sidecar_previous_version_served",
            "Reads of ?version=previous (during an overlap): someone still reads the old value.",
            ["class"],
            registry=r,
        )
        self.verifications = Counter(
            "sidecar_verifications",
            "POST /verify results: match = current, previous, retired, unknown.",
            ["class", "match"],
            registry=r,
        )
        self.retired_uses = Counter(
            "sidecar_retired_credential_uses",
            "A retired credential was presented to /verify: authentication attempts with "
            "values that rotation should have ended.",
            ["class"],
            registry=r,
        )
        self.previous_retired = Counter(
            "sidecar_previous_retired",
            "Rotations finished: the overlap ended and the previous version is no longer served.",
            ["class"],
            registry=r,
        )
        self.revocations = Counter(
            "sidecar_revocations",
            "Entries that appeared on the revocation list.",
            registry=r,
        )
        self.background_errors = Counter(
            "sidecar_background_errors",
            "Unexpected failures of a background task, which is then restarted (snapshot, "
            "refresh, revocations, token_watch, store_prober, store_auth).",
            ["task"],
            registry=r,
        )
        self.revocation_polls = Counter(
            "sidecar_revocation_polls",
            "Polls of the revocation list by result: success, or failure (unreadable or "
            "malformed: the last good list stays in force).",
            ["result"],
            registry=r,
        )
        self.revocation_last_success = Gauge(
            "sidecar_revocation_list_last_success_timestamp_seconds",
            "When the revocation list was last read and applied (0: never).",
            registry=r,
        )
        self.connections = Gauge(
            "sidecar_http_connections",
            "Open client connections by listener (api: the secrets API, ops: metrics and probes).",
            ["listener"],
            registry=r,
        )
        self.connections_closed = Counter(
            "sidecar_http_connections_closed",
            "Connections the sidecar closed to protect itself, by listener and reason: limit "
            "(refused at max_connections, every open one busy), evicted (an idle one closed to "
            "make room for a new one), header_timeout (no complete request headers in time).",
            ["listener", "reason"],
            registry=r,
        )
        for task in BACKGROUND_TASKS:
            self.background_errors.labels(task)
        for result in ("success", "failure"):
            self.revocation_polls.labels(result)
        for listener in ("api", "ops"):
            self.connections.labels(listener)
            for reason in ("limit", "evicted", "header_timeout"):
                self.connections_closed.labels(listener, reason)
        self.snapshot_errors.labels(operation="load")
        self.snapshot_errors.labels(operation="save")
        for event in ("login", "renew"):
            for result in ("success", "failure"):
                self.auth_events.labels(event=event, result=result)

    def watch_ages(self, cache: SecretCache) -> None:
        """Export what the request path only counts (lookups, statuses), the ages of cached
        values and open overlaps, at scrape time: no metric work on the request path."""
        self.registry.register(_AgeCollector(cache, self))
        self.registry.register(_CountsCollector(cache, self))
        self.registry.register(LeaseCollector(cache, lambda: self._classes))
        overlap = Gauge(
            "sidecar_overlap_open",
            "Secrets whose previous version is still served (?version=previous) after a "
            "rotation, within their class's overlap.",
            registry=self.registry,
        )
        overlap.set_function(lambda: float(cache.overlaps_open()))

    def declare_schedule(
        self, *, snapshot_interval: float | None, revocation_poll_interval: float | None
    ) -> None:
        """How often the snapshot is written and the revocation list polled (when they are on),
        so "not done for several intervals" is an expression in an alert."""
        if snapshot_interval is not None:
            Gauge(
                "sidecar_snapshot_interval_seconds",
                "How often the snapshot is written when the cache changed (snapshot.interval).",
                registry=self.registry,
            ).set(snapshot_interval)
        if revocation_poll_interval is not None:
            Gauge(
                "sidecar_revocation_poll_interval_seconds",
                "How often the revocation list is polled (revocation_poll_interval).",
                registry=self.registry,
            ).set(revocation_poll_interval)

    def watch_snapshot(self, unsaved: Callable[[], bool]) -> None:
        """Whether the cache has changes the snapshot does not have, at scrape time: "not written
        for several intervals" is an alert only while there is something to write."""
        Gauge(
            "sidecar_snapshot_unsaved_changes",
            "1 while the cache holds changes not yet in the snapshot file, else 0.",
            registry=self.registry,
        ).set_function(lambda: 1.0 if unsaved() else 0.0)

    def declare_classes(
        self,
        classes: Sequence[SecretClass],
        in_force: Callable[[str], SecretClass | None] | None = None,
    ) -> None:
        """Export zeros for every class and outcome, so rates work from the first scrape, and
        each class's owner and limits (``in_force``: the class as now in force, incident
        windows included), so an alert can name the owner and compare an age with a limit."""
        names = sorted(c.name for c in classes)
        self._classes = names
        self.registry.register(_ClassCollector(classes, in_force or (lambda _name: None)))
        for name in names:
            self.fail_closed.labels(name)
            self.rotations.labels(name)
            self.retired_uses.labels(name)
            self.previous_served.labels(name)
            for action in ("deferred", "served_stale"):
                self.budget_degraded.labels(name, action)
            self.previous_retired.labels(name)
            # zeros first: an increase() over a series born at its first observation sees 0
            self.rotation_adoption.labels(name)

    def notify(self, fact: Fact) -> None:
        """Every metric but the hot path's counts moves here, from a fact."""
        match fact:
            case FetchFinished(_, _, seconds, error):
                outcome = "success" if error is None else error.kind.value
                self.fetch_duration.labels(outcome=outcome).observe(seconds)
                if error is not None:
                    self.backend_errors.labels(kind=error.kind.value).inc()
            case LookedUp(secret_class, outcome) if outcome is not Outcome.HIT:
                # (hits are the cache's own count: most never become a fact)
                key = (outcome, secret_class.name)
                self.lookups[key] = self.lookups.get(key, 0) + 1
            case Unavailable(secret_class, reason):
                self.unavailable_reads.labels(secret_class.name, reason).inc()
                if reason == "fail_closed":
                    self.fail_closed.labels(secret_class.name).inc()
            case BudgetDegraded(secret_class, action):
                self.budget_degraded.labels(secret_class.name, action).inc()
            case EntriesChanged(count):
                self.secrets_cached.set(count)
            case Rotated(_, secret_class):
                self.rotations.labels(secret_class.name).inc()
            case FirstServed(_, secret_class, _, since) if since is not None:
                self.rotation_adoption.labels(secret_class.name).observe(since)
            case PreviousServed(secret_class):
                self.previous_served.labels(secret_class.name).inc()
            case LeaseEvent(_, secret_class, event):
                self.lease_events.labels(secret_class.name, event).inc()
            case PreviousRetired(_, secret_class):
                self.previous_retired.labels(secret_class.name).inc()
            case Verified(_, secret_class, verdict):
                self.verifications.labels(secret_class.name, verdict.match.value).inc()
                if verdict.match is Match.RETIRED:
                    self.retired_uses.labels(secret_class.name).inc()
            case _:
                self._store_or_ops(fact)

    def _store_or_ops(self, fact: Fact) -> None:
        match fact:
            case AuthEvent(event, ok, expires_at):
                self.auth_events.labels(event=event, result="success" if ok else "failure").inc()
                if ok:
                    self.token_expiry.set(expires_at or 0)
            case NodeState(address, up, circuit):
                self.backend_up.labels(address).set(1 if up else 0)
                self.circuit_state.labels(address).set(int(circuit))
            case BackgroundFailed(task):
                self.background_errors.labels(task).inc()
            case SnapshotLoaded(restored, unusable):
                self.snapshot_entries.set(restored)
                if unusable:
                    self.snapshot_errors.labels(operation="load").inc()
            case SnapshotSaved(entries, at):
                self.snapshot_entries.set(entries)
                self.snapshot_last_success.set(at)
            case SnapshotFailed(operation):
                self.snapshot_errors.labels(operation=operation).inc()
            case Revoked():
                self.revocations.inc()
            case RevocationsPolled(ok, at):
                self.revocation_polls.labels("success" if ok else "failure").inc()
                if ok:
                    self.revocation_last_success.set(at)
            case ConnectionClosed(listener, reason):
                self.connections_closed.labels(listener, reason).inc()
            case ConnectionsOpen(listener, count):
                self.connections.labels(listener).set(count)


AGE_BUCKETS = (1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 21600.0, 86400.0)


class _AgeCollector(Collector):
    """``sidecar_secret_age_seconds{class}``: a gauge histogram of the ages of the values held
    now (seconds since the store last confirmed each), one series set per class: bounded by
    the number of classes, never by the number of secrets; with the oldest age and the open
    rotations by class."""

    def __init__(self, cache: SecretCache, metrics: Metrics) -> None:
        self._cache = cache
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeHistogramMetricFamily(
            "sidecar_secret_age_seconds",
            "Ages of the cached values now, by class (since the store last confirmed each).",
            labels=["class"],
        )
        oldest = GaugeMetricFamily(
            "sidecar_secret_oldest_age_seconds",
            "Age of the oldest value held now, by class (seconds since the store last confirmed "
            "it): compare with sidecar_class_effective_max_cache_age_seconds.",
            labels=["class"],
        )
        by_class: dict[str, list[float]] = {}
        for secret_class, age in self._cache.ages():
            by_class.setdefault(secret_class.name, []).append(age)
        for name, ages in sorted(by_class.items()):
            buckets = [(str(b), float(sum(1 for a in ages if a <= b))) for b in AGE_BUCKETS]
            buckets.append(("+Inf", float(len(ages))))
            family.add_metric([name], buckets, gsum_value=sum(ages))
            oldest.add_metric([name], max(ages))
        yield family
        yield oldest
        rotations = GaugeMetricFamily(
            "sidecar_rotations_open",
            "Rotations not finished, by class and state: awaiting_adoption (the app has not "
            "read the new version yet), overlap_open (it has; the previous version is still "
            "served). Zero for both: every rotation adopted and the previous version retired.",
            labels=["class", "state"],
        )
        open_by: dict[tuple[str, str], int] = {}
        for secret_class, state in self._cache.open_rotations():
            open_by[(secret_class.name, state)] = open_by.get((secret_class.name, state), 0) + 1
        for name in sorted(set(self._metrics._classes) | {n for n, _ in open_by}):
            for state in ("awaiting_adoption", "overlap_open"):
                rotations.add_metric([name, state], open_by.get((name, state), 0))
        yield rotations

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _CountsCollector(Collector):
    """Counters the hot path keeps as plain ints (a prometheus_client child takes a lock and a
    label lookup per increment, which costs as much as the rest of a cache hit)."""

    def __init__(self, cache: SecretCache, metrics: Metrics) -> None:
        self._cache = cache
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "sidecar_cache_lookups",
            "Secret reads by how they were answered: hit (memory), miss (fetched), coalesced "
            "(joined a fetch under way), stale (served past refresh_interval because the store "
            "could not confirm).",
            labels=["outcome", "class"],
        )
        stale = CounterMetricFamily(
            "sidecar_stale_served",
            "Reads answered with a value past refresh_interval because the store could not "
            "confirm it (serve_stale classes, within max_cache_age).",
            labels=["class"],
        )
        counts = dict(self._metrics.lookups)
        counts.update({(Outcome.HIT, name): n for name, n in self._cache.hits.items()})
        classes = sorted(set(self._metrics._classes) | {name for _, name in counts})
        for name in classes:
            for outcome in Outcome:
                lookups.add_metric([outcome.value, name], counts.get((outcome, name), 0))
            stale.add_metric([name], counts.get((Outcome.STALE, name), 0))
        yield lookups
        yield stale
        statuses = CounterMetricFamily(
            "sidecar_http_requests",
            "Requests to the secrets API (and the Vault-compatible and admin APIs) by status.",
            labels=["status"],
        )
        for status, count in sorted(self._metrics.http_statuses.items()):
            statuses.add_metric([str(status)], count)
        yield statuses

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _ClassCollector(Collector):
    """Each configured class's owner and limits, at scrape time: ``sidecar_class_info`` to join
    any per-class series to its owner (``* on(class) group_left(owner) sidecar_class_info``),
    and the limits an age or an extension is compared with. Bounded by the configured classes."""

    def __init__(
        self, classes: Sequence[SecretClass], in_force: Callable[[str], SecretClass | None]
    ) -> None:
        self._configured = sorted(classes, key=lambda c: c.name)
        self._in_force = in_force

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "sidecar_class_info",
            "1 for each configured class, with its owner and outage behaviour.",
            labels=["class", "owner", "on_outage"],
        )
        refresh = GaugeMetricFamily(
            "sidecar_class_refresh_interval_seconds",
            "Each class's refresh_interval (how long a value counts as fresh).",
            labels=["class"],
        )
        configured = GaugeMetricFamily(
            "sidecar_class_max_cache_age_seconds",
            "Each class's max_cache_age as configured.",
            labels=["class"],
        )
        effective = GaugeMetricFamily(
            "sidecar_class_effective_max_cache_age_seconds",
            "Each class's max_cache_age now in force: above the configured one while an "
            "/admin/extend window is open.",
            labels=["class"],
        )
        overlap = GaugeMetricFamily(
            "sidecar_class_overlap_seconds",
            "How long each class keeps the previous version after a rotation (0: no overlap).",
            labels=["class"],
        )
        for secret_class in self._configured:
            name = secret_class.name
            now = self._in_force(name) or secret_class
            info.add_metric([name, secret_class.owner, secret_class.on_outage.value], 1)
            refresh.add_metric([name], now.refresh_interval)
            configured.add_metric([name], secret_class.max_cache_age)
            effective.add_metric([name], now.max_cache_age)
            overlap.add_metric([name], now.overlap)
        yield from (info, refresh, configured, effective, overlap)

    def describe(self) -> Iterator[Metric]:
        return iter(())
