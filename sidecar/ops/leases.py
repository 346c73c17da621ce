"""Leased credentials at scrape time: how many are held and how long each has left in the
store, by class (bounded by the number of classes, never by the number of credentials)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.core.cache import SecretCache

REMAINING_BUCKETS = (5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)


class LeaseCollector(Collector):
    """``sidecar_leases_active{class}`` and ``sidecar_lease_remaining_seconds{class}``, read
    from the cache when Prometheus scrapes."""

    def __init__(self, cache: SecretCache, classes: Callable[[], list[str]]) -> None:
        self._cache = cache
        self._classes = classes

    def collect(self) -> Iterator[Metric]:
        """The two families, a series per class (zero when it holds no lease)."""
        active = GaugeMetricFamily(
            "sidecar_leases_active",
            "Leased credentials held now (database credentials and the like), by class.",
            labels=["class"],
        )
        remaining = GaugeHistogramMetricFamily(
            "sidecar_lease_remaining_seconds",
            "Seconds until each held credential's lease ends in the store, by class.",
            labels=["class"],
        )
        by_class: dict[str, list[float]] = {name: [] for name in self._classes()}
        for secret_class, left in self._cache.leases():
            by_class.setdefault(secret_class.name, []).append(left)
        for name, lefts in sorted(by_class.items()):
            active.add_metric([name], len(lefts))
            buckets = [(str(b), float(sum(1 for x in lefts if x <= b))) for b in REMAINING_BUCKETS]
            buckets.append(("+Inf", float(len(lefts))))
            remaining.add_metric([name], buckets, gsum_value=sum(lefts))
        yield active
        yield remaining

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the series are made at each scrape."""
        return iter(())
