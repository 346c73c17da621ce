"""The fleet scenarios, full size (``make fleet``) and small (the suite's smoke run): each is
one or more simulations, the shaped fleet ("after") and, where the shaping matters, the fleet
without it ("before": refresh-ahead and retries as before issue 16), run side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.fleet.fleet import Event, FleetSpec, SimRun, default_mix, simulate
from benchmarks.fleet.storemodel import StoreModel

ROTATED = "secret/fleet/standard/s000"


@dataclass
class Run:
    """One simulation of a scenario: what it measures its figures over (``window``)."""

    scenario: str
    label: str
    spec: FleetSpec
    duration: float
    window: tuple[float, float]
    rolling: float = 0.0
    events: list[Event] = field(default_factory=list)


def catalogue(smoke: bool, store: StoreModel) -> list[Run]:
    """Every run, in the order the report shows them. Fleets are started as the sizing rule
    says (docs/fleet.md): a rolling start, or a ``startup_jitter``, long enough for the store
    to fetch every pod's secrets at most at half its data capacity."""
    big, sizes = (60, [20, 60]) if smoke else (2000, [100, 1000, 3000])
    scale = 0.4 if smoke else 1.0  # shorter outages and runs in the smoke run

    def spread(pods: int) -> float:
        return max(60.0, round(2 * pods * 20 / store.capacity["data"]))

    runs = []
    for n in sizes:
        rolling = spread(n)
        runs.append(
            Run(
                "steady",
                f"{n:,} pods, 1 min",
                FleetSpec(n),
                rolling + 180,
                (rolling + 60, rolling + 180),
                rolling=rolling,
            )
        )
    if not smoke:
        rolling = spread(10_000)
        runs.append(
            Run(
                "steady",
                "10,000 pods, 5 min",
                FleetSpec(10_000, mix=default_mix(300)),
                rolling + 180,
                (rolling + 60, rolling + 180),
                rolling=rolling,
            )
        )
        # At 1 minute, 10,000 pods need about this store's whole capacity: shown briefly
        # (an overloaded store makes every simulated request slow to simulate too).
        runs.append(
            Run("steady", "10,000 pods, 1 min", FleetSpec(10_000), 120, (60, 120), rolling=60)
        )
    for label, shaped in (("before", False), ("after", True)):
        runs.append(
            Run(
                "restart_cold",
                label,
                FleetSpec(big, spread_load=shaped),
                600 * scale,
                (180 * scale, 600 * scale),
            )
        )
    jitter = max(3.0, round(2 * big * 20 / store.capacity["data"]))  # the sizing rule, x2
    runs.append(
        Run(
            "restart_cold",
            "after, jitter sized",
            FleetSpec(big, startup_jitter=jitter),
            600 * scale,
            (180 * scale, 600 * scale),
        )
    )
    for label, shaped in (("before", False), ("after", True)):
        at = 180 * scale
        runs.append(
            Run(
                "restart_warm",
                label,
                FleetSpec(big, spread_load=shaped),
                780 * scale,
                (at + 180 * scale, 780 * scale),
                rolling=60,
                events=[Event(at=at, kind="restart", warm=True)],
            )
        )
    outage = 300 * scale
    for label, shaped in (("before", False), ("after", True)):
        runs.append(
            Run(
                "outage",
                label,
                FleetSpec(big, spread_load=shaped),
                120 + outage + 360 * scale,
                (120 + outage, 120 + outage + 120 * scale),
                rolling=60,
                events=[Event(at=120, kind="outage", seconds=outage)],
            )
        )
    runs.append(
        Run(
            "rotation",
            "after",
            FleetSpec(big),
            300,
            (150, 300),
            rolling=60,
            events=[Event(at=150, kind="rotate", path=ROTATED)],
        )
    )
    return runs


def execute(run: Run, store: StoreModel) -> dict[str, Any]:
    """Simulate ``run`` on a fresh copy of the store model; its figures and its series."""
    model = StoreModel(capacity=dict(store.capacity), base_latency=store.base_latency)
    import time

    started = time.perf_counter()
    result = simulate(
        run.spec,
        model,
        duration=run.duration,
        rolling=run.rolling,
        events=run.events,
        label=f"{run.scenario} {run.label}" if run.spec.sidecars >= 1000 else "",
    )
    return summarise(run, result, time.perf_counter() - started)


def summarise(run: Run, result: SimRun, wall: float) -> dict[str, Any]:
    """The figures the report shows for one run."""
    start, end = run.window
    reads = sum(result.reads.values())
    stale = result.reads.get("stale", 0)
    refused = sum(v for k, v in result.reads.items() if k.startswith("refused:"))
    figures: dict[str, Any] = {
        "scenario": run.scenario,
        "label": run.label,
        "sidecars": run.spec.sidecars,
        "secrets": run.spec.secrets,
        "spread_load": run.spec.spread_load,
        "duration": run.duration,
        "window": [start, end],
        "estimate": round(run.spec.expected_rate(), 1),
        "capacity": result.capacity,
        "in_window": result.window(start, end),
        "whole_run": result.window(0, run.duration),
        "per_minute": [result.window(m * 60, (m + 1) * 60) for m in range(int(run.duration // 60))],
        "reads_sampled": reads,
        "reads_stale": stale,
        "reads_refused": refused,
        "reads_in_window": result.reads_in(start, end),
        "startup_jitter": run.spec.startup_jitter,
        "refusals": dict(result.unavailable),
        "requests_by_kind": dict(result.by_kind),
        "convergence": result.convergence,
        "series": result.arrivals,
        "refused_series": result.refused,
        "wall_seconds": round(wall, 1),
    }
    for event in run.events:
        if event.kind == "outage":
            back = int(event.at + event.seconds)
            figures["outage"] = {
                "at": event.at,
                "seconds": event.seconds,
                "before": result.window(event.at - 60, event.at),
                "recovery": result.window(back, back + 120),
            }
        if event.kind == "restart":
            figures["restart_at"] = event.at
    restart = figures.get("restart_at", 0)
    figures["read_refused_first_minute"] = result.reads_in(restart, restart + 60)["refused"]
    return figures
