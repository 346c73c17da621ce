"""A simulated fleet and what happens to it: N ``SimSidecar``s sharing one ``StoreModel``, started
together or over a rolling window, with events (a mass restart, a store outage, a rotation) at
set virtual times, and a sample of application reads. Measures store requests per second, the
answers reads got, and how fast the fleet converges on a new version."""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks.fleet.simsidecar import SimSidecar, Tally
from benchmarks.fleet.storemodel import StoreModel
from benchmarks.fleet.vloop import run_virtual
from sidecar.backend_settings import BackendSettings
from sidecar.core.entries import Outcome
from sidecar.core.policy import OnOutage, Policy, Rule, SecretClass
from sidecar.store.interface import StoreError


def secret_class(name: str, refresh: float, max_age: float, on_outage: OnOutage) -> SecretClass:
    """A class of the simulated fleet (owner and runbook fields do not matter here)."""
    return SecretClass(
        name=name,
        business_function=f"{name} (fleet simulation)",
        owner="team-fleet",
        refresh_interval=refresh,
        max_cache_age=max_age,
        on_outage=on_outage,
        rotation_method="new KV v2 version",
        revocation_steps="n/a",
    )


def default_mix(refresh: float = 60.0) -> list[tuple[SecretClass, float]]:
    """The fleet's class mix: 70 % ``standard`` (serve_stale), 20 % ``payments`` (fail_closed),
    both at ``refresh``; 10 % ``static`` (serve_stale, five times slower)."""
    return [
        (secret_class("standard", refresh, 15 * 60, OnOutage.SERVE_STALE), 0.7),
        (secret_class("payments", refresh, 5 * 60, OnOutage.FAIL_CLOSED), 0.2),
        (secret_class("static", refresh * 5, 3600, OnOutage.SERVE_STALE), 0.1),
    ]


@dataclass
class FleetSpec:
    """What is simulated: ``sidecars`` pods each preloading the same ``secrets`` paths."""

    sidecars: int
    secrets: int = 20
    mix: list[tuple[SecretClass, float]] = field(default_factory=default_mix)
    startup_jitter: float = 3.0
    backend: dict[str, Any] = field(default_factory=dict)  # backend settings over the defaults
    spread_load: bool = True  # the shaping (off: refresh-ahead as before issue 16)

    def policy(self) -> tuple[Policy, list[str]]:
        """The paths, and the rules that class them (each literal, preloaded)."""
        rules: list[Rule] = []
        paths: list[str] = []
        counts = _apportion(self.secrets, [share for _, share in self.mix])
        for (klass, _), count in zip(self.mix, counts, strict=True):
            for i in range(count):
                path = f"secret/fleet/{klass.name}/s{i:03d}"
                paths.append(path)
                rules.append(Rule(path, klass, preload=True))
        return Policy(rules), paths

    def backend_settings(self) -> BackendSettings:
        """The sidecars' backend settings: the defaults, with ``backend`` over them."""
        doc = {"auth": {"method": "token", "token_file": "/dev/null"}, **self.backend}
        return BackendSettings.model_validate(doc)

    def expected_rate(self) -> float:
        """The steady-state estimate (core/load.py's rule): secrets / (0.825 x interval)."""
        counts = _apportion(self.secrets, [share for _, share in self.mix])
        per_sidecar = sum(
            count / (0.825 * klass.refresh_interval)
            for (klass, _), count in zip(self.mix, counts, strict=True)
        )
        return self.sidecars * per_sidecar


def _apportion(total: int, shares: list[float]) -> list[int]:
    counts = [int(total * share) for share in shares]
    for i in sorted(range(len(shares)), key=lambda i: -(total * shares[i] % 1)):
        if sum(counts) >= total:
            break
        counts[i] += 1
    return counts


@dataclass
class Event:
    """Something done to the fleet at virtual second ``at``: ``restart`` (all sidecars, cold or
    ``warm`` from their snapshots), ``outage`` (the store down for ``seconds``), ``rotate``
    (a new version of ``path``)."""

    at: float
    kind: str
    seconds: float = 0.0
    warm: bool = False
    path: str = ""


@dataclass
class SimRun:
    """What one simulation measured."""

    spec: FleetSpec
    duration: float
    capacity: float
    arrivals: list[int]  # store requests received in each virtual second
    refused: list[int]  # requests refused while the store was down, per second
    reads: Counter[str]  # sampled application reads by answer
    unavailable: Counter[str]
    convergence: dict[str, Any]
    wall_seconds: float = 0.0
    by_kind: Counter[str] = field(default_factory=Counter)
    read_seconds: dict[str, Counter[int]] = field(default_factory=dict)

    def reads_in(self, start: float, end: float) -> dict[str, int]:
        """Sampled reads answered, stale and refused in [start, end)."""
        return {
            answer: sum(n for second, n in by_second.items() if start <= second < end)
            for answer, by_second in self.read_seconds.items()
        }

    def window(self, start: float, end: float) -> dict[str, float]:
        """Mean, peak and peak/mean of requests per second in [start, end)."""
        series = self.arrivals[int(start) : int(end)]
        if not series:
            return {"mean": 0.0, "peak": 0.0, "peak_to_mean": 0.0}
        mean = statistics.fmean(series)
        peak = max(series)
        return {
            "mean": round(mean, 1),
            "peak": peak,
            "peak_to_mean": round(peak / mean, 2) if mean else 0.0,
            "mean_of_capacity": round(mean / self.capacity, 3),
            "peak_of_capacity": round(peak / self.capacity, 3),
        }


READS_PER_SECOND = 200  # sampled application reads (random sidecar, random path)


def simulate(
    spec: FleetSpec,
    store: StoreModel,
    *,
    duration: float,
    rolling: float = 0.0,
    events: list[Event] | None = None,
    seed: int = 1,
    label: str = "",
) -> SimRun:
    """Run ``spec`` for ``duration`` virtual seconds. Sidecars start at t=0, or at uniform
    random moments within ``rolling`` seconds (a fleet already in steady state)."""
    logging.disable(logging.CRITICAL)  # the sidecars' own warnings, times thousands
    try:
        return run_virtual(_simulate(spec, store, duration, rolling, events or [], seed, label))
    finally:
        logging.disable(logging.NOTSET)


async def _simulate(
    spec: FleetSpec,
    store: StoreModel,
    duration: float,
    rolling: float,
    events: list[Event],
    seed: int,
    label: str,
) -> SimRun:
    fleet = _Fleet(spec, store, seed)
    fleet.start(rolling)
    happenings = [asyncio.ensure_future(fleet.happen(event)) for event in events]
    reading = asyncio.ensure_future(fleet.read_forever())
    telling = asyncio.ensure_future(_progress(store, label)) if label else None
    await asyncio.sleep(duration)
    if telling is not None:
        telling.cancel()
    reading.cancel()
    for task in happenings:
        task.cancel()
    await fleet.stop()
    seconds = int(duration)
    return SimRun(
        spec=spec,
        duration=duration,
        capacity=store.headline_capacity,
        arrivals=[store.arrivals.get(s, 0) for s in range(seconds)],
        refused=[store.refused.get(s, 0) for s in range(seconds)],
        reads=fleet.reads,
        read_seconds=fleet.read_seconds,
        unavailable=fleet.tally.unavailable,
        convergence=fleet.convergence(),
        by_kind=Counter(store.by_kind),
    )


async def _progress(store: StoreModel, label: str, every: float = 60.0) -> None:
    """A line per virtual minute: long simulations show they are moving, and how fast."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        now = int(loop.time())
        last = [store.arrivals.get(s, 0) for s in range(now - int(every), now)]
        print(
            f"    {label}: {now} virtual s in {time.monotonic() - started:.0f} s, "
            f"{sum(last) / every:,.0f} store req/s in the last minute",
            flush=True,
        )


class _Fleet:
    """The simulated pods, what happens to them, and the application reads sampled from them."""

    def __init__(self, spec: FleetSpec, store: StoreModel, seed: int) -> None:
        self.spec = spec
        self.store = store
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - a seeded simulation, not a secret
        self.policy, self.paths = spec.policy()
        self.versions = dict.fromkeys(self.paths, 1)
        self.backend = spec.backend_settings()
        self.tally = Tally()
        self.reads: Counter[str] = Counter()
        # answered / stale / refused, by second: a window's reads, not only the whole run's
        self.read_seconds: dict[str, Counter[int]] = {
            "answered": Counter(),
            "stale": Counter(),
            "refused": Counter(),
        }
        self.rotations: dict[str, float] = {}
        self.pods: list[SimSidecar | None] = [None] * spec.sidecars
        self._starters: list[asyncio.Task[None]] = []

    def _make(self, i: int) -> SimSidecar:
        return SimSidecar(
            self.backend,
            self.policy,
            self.store,
            self.versions,
            self.tally,
            seed=self.seed * 1_000_003 + i,
            spread_load=self.spec.spread_load,
        )

    def start(self, rolling: float) -> None:
        """Start every pod at 0, or each at a random moment within ``rolling`` seconds."""

        async def one(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            pod = self._make(i)
            pod.start(self.paths, self.spec.startup_jitter)
            self.pods[i] = pod

        self._starters = [
            asyncio.ensure_future(one(i, self.rng.random() * rolling if rolling else 0.0))
            for i in range(self.spec.sidecars)
        ]

    async def restart(self, warm: bool) -> None:
        """Every pod at once, as new processes: cold, or from its snapshot (``warm``)."""
        for i, pod in enumerate(self.pods):
            if pod is None:
                continue
            snapshot = pod.snapshot() if warm else []
            await pod.stop()
            fresh = self._make(i + self.spec.sidecars)  # a new process: new randomness
            fresh.start(self.paths, self.spec.startup_jitter, snapshot)
            self.pods[i] = fresh

    async def happen(self, event: Event) -> None:
        """Wait for ``event``'s moment, then do it."""
        await asyncio.sleep(event.at)
        if event.kind == "restart":
            await self.restart(event.warm)
        elif event.kind == "outage":
            self.store.down = True
            await asyncio.sleep(event.seconds)
            self.store.down = False
        elif event.kind == "rotate":
            self.versions[event.path] += 1
            self.rotations[event.path] = asyncio.get_running_loop().time()

    async def _read(self, pod: SimSidecar, path: str) -> None:
        try:
            lookup = await pod.cache.get(path)
        except StoreError as exc:
            self._count(f"refused:{exc.reason}")
            return
        self._count("stale" if lookup.outcome is Outcome.STALE else "answered")

    def _count(self, answer: str) -> None:
        self.reads[answer] += 1
        self.read_seconds[answer.split(":", maxsplit=1)[0]][
            int(asyncio.get_running_loop().time())
        ] += 1

    async def read_forever(self) -> None:
        """Each second, ``READS_PER_SECOND`` reads of a random secret from a random pod."""
        pending: set[asyncio.Task[None]] = set()
        while True:
            await asyncio.sleep(1.0)
            for _ in range(min(READS_PER_SECOND, self.spec.sidecars * 4)):
                pod = self.pods[self.rng.randrange(self.spec.sidecars)]
                if pod is None:
                    continue
                path = self.paths[self.rng.randrange(len(self.paths))]
                if pod.cache.hit(path) is not None:
                    self._count("answered")
                    continue
                task = asyncio.ensure_future(self._read(pod, path))
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def stop(self) -> None:
        """Stop every pod (and the ones still waiting to start)."""
        for task in self._starters:
            task.cancel()
        for pod in self.pods:
            if pod is not None:
                await pod.stop()

    def convergence(self) -> dict[str, Any]:
        """For each rotated path: how long after the write each pod first held the new version."""
        out: dict[str, Any] = {}
        for path, at in self.rotations.items():
            seen = [
                t - at
                for (p, version), times in self.tally.rotated.items()
                if p == path and version == self.versions[path]
                for t in times
            ]
            out[path] = {
                "seconds": sorted(round(t, 2) for t in seen),
                "sidecars_converged": len(seen),
                "p50_seconds": round(statistics.median(seen), 1) if seen else None,
                "max_seconds": round(max(seen), 1) if seen else None,
            }
        return out
