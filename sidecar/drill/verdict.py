"""What a drill saw, and the verdict against each class's declared behaviour (pure: the reads
come in as records; no I/O)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
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
    previous: bool = False  # a ``?version=previous`` read (rotation scenario)


@dataclass(frozen=True)
class ClassPolicy:
    """What a class promises (from the sidecar's config)."""

    name: str
    on_outage: str  # serve_stale, fail_closed
    refresh_interval: float
    max_cache_age: float
    overlap: float = 0.0


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
    revoked: int = 0  # a version on the store's revocation list served
    p50: float = 0.0
    p99: float = 0.0
    recovered_after: float | None = None  # seconds from the fault's end to a fresh read
    previous_served: int = 0  # ``?version=previous`` answered (rotation)
    store_requests: int | None = None  # for this class's secrets, during the scenario
    store_source: str = ""  # where that count comes from: the store's audit log, or the proxy
    broken: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not judged, and why

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
            "revoked_version_served": self.revoked,
            "p50_seconds": round(self.p50, 4),
            "p99_seconds": round(self.p99, 4),
            "recovered_after_seconds": self.recovered_after,
            "previous_served": self.previous_served,
            "store_requests": self.store_requests,
            "store_requests_source": self.store_source,
            "holds": self.holds,
            "broken": self.broken,
            "notes": self.notes,
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
        if read.previous:  # an older version on purpose: counted apart, judged by the rotation
            outcome.previous_served += read.status == 200
            continue
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
    latencies = [r.seconds for r in reads if not r.previous]
    outcome.p50, outcome.p99 = _quantile(latencies, 0.5), _quantile(latencies, 0.99)
    return refusal_seconds


# What a scenario does to the store: makes it unavailable (the classes' outage behaviour is
# judged), makes it answer wrong (only the rules every class keeps), or leaves it available
# while something changes (a rotation, a revoked token, a leader lost: nothing may fail).
OUTAGE, WRONG, HEALTHY = "outage", "wrong", "healthy"


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
    kind: str = OUTAGE,
    fault_started_at: float | None = None,
) -> Outcome:
    """The outcome of ``scenario`` for one class, from its reads (in time order)."""
    outcome = Outcome(scenario, policy.name, reads=len(reads))
    refusal_seconds = _count(outcome, reads)
    after = [
        r
        for r in reads
        if r.phase == "recovery" and r.status == 200 and not r.stale and not r.previous
    ]
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
    during = [r for r in reads if r.phase == "fault" and not r.previous]
    if policy.on_outage == "fail_closed" and outcome.stale:
        broken.append(f"fail_closed: {outcome.stale} stale answer(s)")
    if kind == HEALTHY:
        failed = [r for r in during if r.status not in (200,)]
        if failed:
            statuses = sorted({f"{r.status} {r.reason or ''}".strip() for r in failed})
            broken.append(
                f"{len(failed)} read(s) failed while the store stayed available: "
                + ", ".join(statuses)
            )
    if kind != OUTAGE:
        return outcome
    if fault_started_at is not None:
        # the drill's own clock, not the sidecar's word: nothing can be confirmed while the
        # store is cut off, so a value served this long after the cut is past max_cache_age
        # whatever age it claims (``timeout``: a request already on its way may still land)
        beyond = fault_started_at + timeout + policy.max_cache_age
        late = [r for r in during if r.status == 200 and r.at > beyond]
        if late:
            broken.append(
                f"{len(late)} value(s) served more than max_cache_age "
                f"({policy.max_cache_age:g}s) after the store was cut off"
            )
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


def judge_rotation(
    outcome: Outcome,
    policy: ClassPolicy,
    reads: list[Read],
    written: dict[str, int],
    written_at: float,
    phase_end: float,
    slack: float,
) -> None:
    """Add the rotation's rules to ``outcome``: readers reach the version written at
    ``written_at`` within the class's refresh_interval (+ ``slack``); during its overlap,
    ``?version=previous`` answers the one before it."""
    bound = policy.refresh_interval + slack
    for path, version in sorted(written.items()):
        mine = [r for r in reads if r.path == path and r.at >= written_at]
        moved = next(
            (r for r in mine if not r.previous and r.status == 200 and (r.version or 0) >= version),
            None,
        )
        if moved is None:
            if phase_end - written_at >= bound:
                outcome.broken.append(
                    f"{path}: readers never got version {version} in "
                    f"{phase_end - written_at:.0f}s (refresh_interval {policy.refresh_interval:g}s)"
                )
            else:
                outcome.notes.append(
                    f"{path}: not judged: refresh_interval ({policy.refresh_interval:g}s) is "
                    "longer than the rotation phase"
                )
            continue
        took = moved.at - written_at
        if took > bound:
            outcome.broken.append(
                f"{path}: readers got version {version} {took:.1f}s after it was written "
                f"(refresh_interval {policy.refresh_interval:g}s)"
            )
        asked = [r for r in mine if r.previous and r.at >= moved.at]
        if policy.overlap <= 0:
            continue
        in_overlap = [r for r in asked if r.at < written_at + policy.overlap]
        wrong = [r for r in in_overlap if r.status != 200 or r.version != version - 1]
        if wrong:
            outcome.broken.append(
                f"{path}: {len(wrong)} ?version=previous read(s) during the overlap did not get "
                f"version {version - 1}"
            )
        elif not in_overlap:
            outcome.notes.append(f"{path}: ?version=previous was not read during the overlap")


def judge_revoked(outcome: Outcome, reads: list[Read], covers: Callable[[str, int], bool]) -> None:
    """Add to ``outcome`` the reads that served a version ``covers`` says is revoked."""
    outcome.revoked = sum(
        1 for r in reads if r.status == 200 and r.version is not None and covers(r.path, r.version)
    )
    if outcome.revoked:
        outcome.broken.append(f"{outcome.revoked} read(s) served a revoked version")
