"""What this sidecar costs the store, at scrape time: the steady-state requests/s of the values
it keeps fresh now (core/load.py's rule), and the store's capacity as configured, so one alert
can sum a fleet's load and compare it with what the store can take (docs/fleet.md)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.core.cache import SecretCache
from sidecar.core.load import in_use
from sidecar.settings import Settings


class StoreLoadCollector(Collector):
    """``sidecar_store_load_expected_requests_per_second`` and, when configured,
    ``sidecar_store_capacity_requests_per_second``."""

    def __init__(
        self, cache: SecretCache, revocation_poll_interval: float | None, capacity: float
    ) -> None:
        self._cache = cache
        self._poll = revocation_poll_interval
        self._capacity = capacity

    @classmethod
    def of(cls, settings: Settings, cache: SecretCache) -> StoreLoadCollector:
        """The collector for this sidecar's settings (revocation polls, the store's capacity)."""
        poll = settings.revocation_poll_interval if settings.revocation_list else None
        return cls(cache, poll, settings.backend.store_capacity)

    def collect(self) -> Iterator[Metric]:
        """The expected load (summed over the values kept fresh) and the capacity."""
        intervals = (c.refresh_interval for c in self._cache.kept_fresh())
        yield GaugeMetricFamily(
            "sidecar_store_load_expected_requests_per_second",
            "Store requests/s this sidecar makes in steady state for the values it keeps fresh "
            "now (one check per refresh cycle, at 82.5 % of refresh_interval on average) and "
            "its revocation-list polls. Summed over a fleet: the store's steady load.",
            value=in_use(intervals, self._poll),
        )
        if self._capacity > 0:
            yield GaugeMetricFamily(
                "sidecar_store_capacity_requests_per_second",
                "The requests/s the store is sized for (backend.store_capacity), for comparing "
                "a fleet's summed expected load with it.",
                value=self._capacity,
            )

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the values are read at each scrape."""
        return iter(())
