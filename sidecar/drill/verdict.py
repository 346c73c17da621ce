"""What a drill saw, and the verdict against each class's declared behaviour (pure: the reads
come in as records; no I/O)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Read:
    """One read through the sidecar during a drill."""

    at: float  # seconds since the scenario started
    phase: str  # warmup, fault, recovery
    path: str
    status: int
    seconds: float
    version: int | None = None
    stale: bool = False
    age: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ClassPolicy:
    """What a class promises (from the sidecar's config)."""

    name: str
    on_outage: str  # serve_stale, fail_closed
    refresh_interval: float
    max_cache_age: float


@dataclass
class Outcome:
    """One class in one scenario: the counts, and what broke its promise (empty: it held)."""

    scenario: str
    secret_class: str
    reads: int = 0
    fresh: int = 0
    stale: int = 0
    unavailable: Counter[str] = field(default_factory=Counter)
    invalid: int = 0  # 403/404/410
    older: int = 0  # a version older than one already served
    p50: float = 0.0
    p99: float = 0.0
    recovered_after: float | None = None  # seconds from the fault's end to a fresh read
    broken: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        """Did the class keep every promise in this scenario?"""
        return not self.broken

    def as_dict(self) -> dict[str, Any]:
        """The outcome for ``--json``."""
        return {
            "scenario": self.scenario,
            "class": self.secret_class,
            "reads": self.reads,
            "fresh": self.fresh,
            "stale": self.stale,
            "unavailable": dict(self.unavailable),
            "invalid": self.invalid,
            "older_version_served": self.older,
            "p50_seconds": round(self.p50, 4),
            "p99_seconds": round(self.p99, 4),
            "recovered_after_seconds": self.recovered_after,
            "holds": self.holds,
            "broken": self.broken,
        }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _count(outcome: Outcome, reads: list[Read]) -> list[float]:
    """Fill in the counts; the latencies of the refusals during the fault."""
    newest: dict[str, int] = {}
    refusal_seconds: list[float] = []
    for read in reads:
        if read.status == 200:
            if read.stale:
                outcome.stale += 1
            else:
                outcome.fresh += 1
            if read.version is not None:
                if read.version < newest.get(read.path, 0):
                    outcome.older += 1
                newest[read.path] = max(newest.get(read.path, 0), read.version)
        elif read.status == 503:
            outcome.unavailable[read.reason or "?"] += 1
            if read.phase == "fault":
                refusal_seconds.append(read.seconds)
        elif read.status in (403, 404, 410):
            outcome.invalid += 1
        else:
            outcome.unavailable[read.reason or str(read.status)] += 1
    latencies = [r.seconds for r in reads]
    outcome.p50, outcome.p99 = _quantile(latencies, 0.5), _quantile(latencies, 0.99)
    return refusal_seconds


def judge(
    scenario: str,
    policy: ClassPolicy,
    reads: list[Read],
    *,
    fault_seconds: float,
    fault_ended_at: float,
    timeout: float,
    recovery_bound: float,
    exited: bool,
    outage: bool = True,
) -> Outcome:
    """The outcome of ``scenario`` for one class, from its reads (in time order). ``outage``:
    the fault made the store unavailable (the class's outage behaviour is judged), rather than
    wrong (only the rules every class keeps)."""
    outcome = Outcome(scenario, policy.name, reads=len(reads))
    refusal_seconds = _count(outcome, reads)
    after = [r for r in reads if r.phase == "recovery" and r.status == 200 and not r.stale]
    if after:
        outcome.recovered_after = round(max(0.0, after[0].at - fault_ended_at), 2)

    broken = outcome.broken
    if exited:
        broken.append("the sidecar exited during the scenario")
    if outcome.older:
        broken.append(f"{outcome.older} read(s) got a version older than one already served")
    if outcome.recovered_after is None:
        broken.append("no fresh read after the fault cleared")
    elif outcome.recovered_after > recovery_bound:
        broken.append(
            f"recovered {outcome.recovered_after:g}s after the fault cleared "
            f"(bound {recovery_bound:g}s)"
        )
    during = [r for r in reads if r.phase == "fault"]
    if policy.on_outage == "fail_closed" and outcome.stale:
        broken.append(f"fail_closed: {outcome.stale} stale answer(s)")
    if not outage:
        return outcome
    if policy.on_outage == "serve_stale":
        failed = [
            r for r in during if r.status in (0, 503) and r.reason != "max_cache_age_exceeded"
        ]
        if failed:
            broken.append(
                f"serve_stale: {len(failed)} read(s) failed during the fault while values were "
                "within max_cache_age"
            )
        too_old = [r for r in during if r.status == 200 and (r.age or 0) > policy.max_cache_age]
        if too_old:
            broken.append(f"serve_stale: {len(too_old)} value(s) served past max_cache_age")
    else:
        slow = [s for s in refusal_seconds if s >= timeout]
        if refusal_seconds and len(slow) > len(refusal_seconds) // 2:
            broken.append(
                f"fail_closed: most refusals took at least backend.timeout ({timeout:g}s): "
                "the circuit did not make them fast"
            )
        answered = [r for r in during if r.status == 200 and (r.age or 0) > 0]
        if fault_seconds > policy.refresh_interval and not refusal_seconds and answered:
            broken.append(
                f"fail_closed: never refused during a {fault_seconds:g}s outage; the values went "
                f"unconfirmed for up to refresh_interval ({policy.refresh_interval:g}s)"
            )
        elif fault_seconds <= policy.refresh_interval and answered:
            broken.append(
                f"fail_closed: refresh_interval ({policy.refresh_interval:g}s) is longer than the "
                f"{fault_seconds:g}s outage: it served values the store could not confirm "
                "throughout; it does not fail closed in time"
            )
    return outcome
