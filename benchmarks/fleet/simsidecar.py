"""One simulated sidecar: the sidecar's own ``SecretCache`` (schedule, refresh-ahead jitter,
retries with backoff, warm start) and ``Nodes`` (circuit breaker, probes, request budget), on
the virtual loop's clock, with a store backend that asks the ``StoreModel`` instead of HTTP.
Nothing of the sidecar is re-implemented here: only the wire is replaced."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterable

from benchmarks.fleet.storemodel import StoreDown, StoreModel
from sidecar.backend_settings import BackendSettings
from sidecar.core.cache import SecretCache
from sidecar.core.facts import Fact, Quiet, Rotated, StaleServed, Unavailable
from sidecar.core.policy import Policy
from sidecar.core.warm import Restored
from sidecar.store.interface import ErrorKind, Secret, StoreUnavailable, VersionInfo
from sidecar.store.nodes import Nodes
from sidecar.store.replies import Reply

EPOCH = 1_800_000_000.0  # the virtual wall clock's start


class SimBackend:
    """The ``Backend`` the cache talks to, over the sidecar's own ``Nodes`` (so the breaker and
    the request budget are the real ones) to the store model. ``versions``: the store's current
    version of each path, shared by the fleet."""

    def __init__(
        self, nodes: Nodes, store: StoreModel, versions: dict[str, int], timeout: float
    ) -> None:
        self._nodes = nodes
        self._store = store
        self._versions = versions
        self._timeout = timeout

    async def ask(self, kind: str) -> Reply:
        """One request of ``kind`` as the HTTP client would make it: within the timeout."""
        try:
            await self._store.request(kind, self._timeout)
        except TimeoutError:
            raise StoreUnavailable("timeout", kind=ErrorKind.TIMEOUT) from None
        except StoreDown:
            raise StoreUnavailable("connection_refused", kind=ErrorKind.CONNECTION) from None
        return Reply(200, {}, {})

    async def start(self) -> None:
        """Nothing to log in to."""

    async def read(self, path: str, version: int | None, *, urgent: bool = False) -> Secret:
        """A KV v2 data read."""
        await self._nodes.send(lambda _node: self.ask("data"), urgent=urgent)
        current = self._versions[path]
        return Secret(path=path, data={"v": current}, version=current)

    async def version_info(self, path: str) -> VersionInfo | None:
        """A KV v2 metadata read (the refresh-ahead check)."""
        await self._nodes.send(lambda _node: self.ask("metadata"))
        return VersionInfo(current=self._versions[path], created_time=None, gone=False)

    async def renew(self, lease_id: str, increment: int) -> int:
        """Not simulated (KV only)."""
        raise NotImplementedError

    async def revoke_lease(self, lease_id: str) -> None:
        """Not simulated (KV only)."""
        raise NotImplementedError

    @property
    def token_digest(self) -> str | None:
        """No token."""
        return None

    async def close(self) -> None:
        """Nothing to release."""


class Tally:
    """What the fleet's caches report, summed: stale answers, refusals, and for each sidecar
    the moment it first held each new version (rotation convergence)."""

    def __init__(self) -> None:
        self.stale = 0
        self.unavailable: Counter[str] = Counter()
        self.rotated: dict[tuple[str, int], list[float]] = {}

    def listener(self, loop: asyncio.AbstractEventLoop) -> _Heard:
        """A listener for one sidecar's cache."""
        return _Heard(self, loop)


class _Heard(Quiet):
    def __init__(self, tally: Tally, loop: asyncio.AbstractEventLoop) -> None:
        self._tally = tally
        self._loop = loop

    def notify(self, fact: Fact) -> None:
        match fact:
            case StaleServed():
                self._tally.stale += 1
            case Unavailable(_, reason):
                self._tally.unavailable[reason] += 1
            case Rotated(path=path, new=new) if new.version is not None:
                self._tally.rotated.setdefault((path, new.version), []).append(self._loop.time())
            case _:
                pass


class SimSidecar:
    """One sidecar of the fleet: preloads ``paths`` (cold) or restores them (warm), keeps them
    fresh with its own upkeep, and probes the store when its breaker opens."""

    def __init__(
        self,
        backend: BackendSettings,
        policy: Policy,
        store: StoreModel,
        versions: dict[str, int],
        tally: Tally,
        seed: int,
        *,
        spread_load: bool = True,
    ) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)  # noqa: S311 - a seeded simulation, not a secret
        self.nodes = Nodes(backend, Quiet(), clock=loop.time, rng=rng.random)
        self.backend = SimBackend(self.nodes, store, versions, backend.timeout)
        self.cache = SecretCache(
            self.backend,
            policy,
            listener=tally.listener(loop),
            clock=loop.time,
            wall=lambda: EPOCH + loop.time(),
            rng=rng.random,
            backoff=(backend.backoff.base, backend.backoff.cap),
            spread_load=spread_load,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def start(
        self, paths: list[str], startup_jitter: float, restored: Iterable[Restored] = ()
    ) -> None:
        """Start as ``sidecar run`` does: restore the snapshot (confirmed within the jitter),
        preload with jitter, then the refresher and the prober."""
        self.cache.restore(restored, confirm_within=startup_jitter)
        self.cache.preload(paths, startup_jitter)
        self._tasks = [
            asyncio.ensure_future(self.cache.run_refresher()),
            asyncio.ensure_future(self.nodes.probe_forever(lambda _n: self.backend.ask("health"))),
        ]

    def snapshot(self) -> list[Restored]:
        """What its snapshot would hold now (serve_stale values: ``export``)."""
        return [(key, entry.secret, entry.fetched_at) for key, entry in self.cache.export()]

    async def stop(self) -> None:
        """Stop its tasks and its fetches."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cache.close()
