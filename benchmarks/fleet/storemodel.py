"""The store as the fleet sees it: one queue served at the store's measured capacity, plus the
latency of an idle request; it can be taken down. Calibrated from a real OpenBao (calibrate.py).

A request costs ``1 / capacity`` seconds of the store's time and waits its turn (FIFO), so
below capacity an answer takes about ``base_latency`` and above it the queue, and the latency,
grow until requests time out: what a real node does when asked more than it can serve. A
timed-out request was still served (its time is spent), as on a real node."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field


class StoreDown(Exception):
    """The store refused the connection (it is down)."""


@dataclass
class StoreModel:
    """``capacity``: requests a second per kind (``data``, ``metadata``, ``health``);
    ``base_latency``: seconds an answer takes with nobody else asking."""

    capacity: dict[str, float]
    base_latency: float
    down: bool = False
    arrivals: Counter[int] = field(default_factory=Counter)  # second -> requests received
    refused: Counter[int] = field(default_factory=Counter)  # second -> refused while down
    by_kind: Counter[str] = field(default_factory=Counter)
    _free_at: float = 0.0

    @property
    def headline_capacity(self) -> float:
        """Requests a second of the kind the fleet mostly makes (metadata checks)."""
        return self.capacity["metadata"]

    async def request(self, kind: str, give_up_after: float) -> None:
        """One request of ``kind``: returns when answered; raises StoreDown when down and
        TimeoutError when the answer would come after ``give_up_after`` seconds (then at that time;
        the store still spends the request's time, as a real node does)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        second = int(now)
        if self.down:
            self.refused[second] += 1
            raise StoreDown
        if kind != "health":  # health checks are not reads: counted apart, nearly free
            self.arrivals[second] += 1
        self.by_kind[kind] += 1
        start = max(now, self._free_at)
        self._free_at = start + 1.0 / self.capacity[kind]
        latency = self._free_at - now + self.base_latency
        if latency > give_up_after:
            await asyncio.sleep(give_up_after)
            raise TimeoutError
        await asyncio.sleep(latency)
