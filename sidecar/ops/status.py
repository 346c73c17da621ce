"""What on-call reads at a glance (``GET /admin/status``, ``sidecar status``, the status page):
every value held with its class, owner, version, age against its limits and state, the store
nodes and their circuits, the sidecar's token, the snapshot, incident windows and revocations.
Never a value: versions, ages, states and error kinds only.

The board keeps what only facts tell (a fetch's error, a node's circuit, a login, a snapshot
write) from the same bus as the metrics and the audit trail; the report joins it with what the
cache holds now."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.backoff import CircuitState
from sidecar.core.entries import CacheKey, Entry
from sidecar.core.facts import (
    AuthEvent,
    Fact,
    FetchFinished,
    NodeState,
    SnapshotFailed,
    SnapshotSaved,
)
from sidecar.ops.audit import iso_time

RUNBOOKS = "https://github.com/secrets-sidecar/secrets-sidecar/blob/main/docs/runbooks/"
# which runbook a row in each state points at
STATE_RUNBOOKS = {
    "stale": "serving-stale.md",
    "failing": "store-unreachable.md",
    "near_limit": "cache-age-near-limit.md",
}
NODE_RUNBOOK = "circuit-open.md"
AUTH_RUNBOOK = "auth-failing.md"
SNAPSHOT_RUNBOOK = "snapshot-not-written.md"
MAX_ERRORS_KEPT = 1024  # last errors by path: bounded, whatever paths callers try


@dataclass(frozen=True, slots=True)
class LastError:
    """The last failed store read of a path: its kind and when."""

    kind: str
    at: float  # wall time


class StatusBoard:
    """The facts a status report needs and the cache does not keep, bounded."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._errors: OrderedDict[str, LastError] = OrderedDict()
        self._nodes: dict[str, tuple[bool, CircuitState, float]] = {}
        self._auth: tuple[str, bool, float | None, float] | None = None
        self._snapshot_at: float | None = None
        self._snapshot_failed_at: float | None = None

    def notify(self, fact: Fact) -> None:
        """Keep what a status report needs from ``fact``; ignore the rest."""
        match fact:
            case FetchFinished(path, _, _, error):
                if error is None:
                    self._errors.pop(path, None)
                else:
                    self._errors[path] = LastError(error.kind.value, self._wall())
                    self._errors.move_to_end(path)
                    while len(self._errors) > MAX_ERRORS_KEPT:
                        self._errors.popitem(last=False)
            case NodeState(address, up, circuit):
                self._nodes[address] = (up, circuit, self._wall())
            case AuthEvent(event, ok, expires_at):
                self._auth = (event, ok, expires_at, self._wall())
            case SnapshotSaved(_, at):
                self._snapshot_at = at
                self._snapshot_failed_at = None
            case SnapshotFailed(operation) if operation == "save":
                self._snapshot_failed_at = self._wall()
            case _:
                pass

    def last_error(self, path: str) -> LastError | None:
        """The last store error for ``path`` since it last succeeded, if any."""
        return self._errors.get(path)

    def nodes(self) -> list[dict[str, Any]]:
        """Each store node seen: answering or not, its circuit, when, and a runbook if open."""
        return [
            {
                "address": address,
                "up": up,
                "circuit": circuit.name.lower(),
                "seen_at": iso_time(at),
                "runbook": None if circuit is CircuitState.CLOSED else RUNBOOKS + NODE_RUNBOOK,
            }
            for address, (up, circuit, at) in sorted(self._nodes.items())
        ]

    def auth(self, method: str, now: float) -> dict[str, Any]:
        """The sidecar's store identity: the last login or renewal and its token's expiry."""
        report: dict[str, Any] = {"method": method, "last_event": None, "ok": None}
        report["token_expires_at"] = report["token_expires_in_seconds"] = None
        if self._auth is not None:
            event, ok, expires_at, at = self._auth
            report.update(last_event=event, ok=ok, at=iso_time(at))
            if expires_at:
                report["token_expires_at"] = iso_time(expires_at)
                report["token_expires_in_seconds"] = round(expires_at - now, 1)
            if not ok:
                report["runbook"] = RUNBOOKS + AUTH_RUNBOOK
        return report

    def snapshot(self, enabled: bool, interval: float | None, now: float) -> dict[str, Any]:
        """When the snapshot was last written, how long ago, and whether writing fails."""
        report: dict[str, Any] = {"enabled": enabled, "interval_seconds": interval}
        report["written_at"] = None if self._snapshot_at is None else iso_time(self._snapshot_at)
        report["age_seconds"] = (
            None if self._snapshot_at is None else round(now - self._snapshot_at, 1)
        )
        report["failing"] = self._snapshot_failed_at is not None
        if report["failing"]:
            report["runbook"] = RUNBOOKS + SNAPSHOT_RUNBOOK
        return report


def secret_rows(
    held: Iterable[tuple[CacheKey, Entry, float]],
    board: StatusBoard,
    now: float,
) -> list[dict[str, Any]]:
    """One row per value held: what it is, how old against its class's limits, its state."""
    rows = []
    for (path, version_key), entry, age in held:
        secret_class = entry.secret_class
        error = board.last_error(path)
        failing = error is not None and error.at >= entry.fetched_at
        if failing:
            state = "failing"
        elif age < secret_class.refresh_interval and not entry.provisional:
            state = "fresh"
        else:
            state = "stale"
        if state != "fresh" and age >= 0.8 * secret_class.max_cache_age:
            state = "near_limit"
        rows.append(
            {
                "path": path,
                "pinned_version": version_key,  # a ?version=N read holds its own entry
                "version": entry.secret.version,
                "kid": entry.secret.kid,
                "class": secret_class.name,
                "owner": secret_class.owner,
                "on_outage": secret_class.on_outage.value,
                "state": state,
                "age_seconds": round(age, 1),
                "refresh_interval_seconds": secret_class.refresh_interval,
                "max_cache_age_seconds": secret_class.max_cache_age,
                "confirmed_at": iso_time(entry.fetched_at),
                "last_error": None if error is None else error.kind,
                "last_error_at": None if error is None else iso_time(error.at),
                "overlap_until": iso_time(entry.overlap_until)
                if entry.overlap_until > now
                else None,
                "runbook": RUNBOOKS + STATE_RUNBOOKS[state] if state in STATE_RUNBOOKS else None,
            }
        )
    return sorted(rows, key=lambda r: (r["path"], r["pinned_version"] or 0))


def status_report(
    *,
    rows: list[dict[str, Any]],
    board: StatusBoard,
    auth_method: str,
    snapshot_enabled: bool,
    snapshot_interval: float | None,
    overlaps_open: int,
    extensions: Mapping[str, str],
    revocations: list[dict[str, object]],
    revocations_polled_at: float | None,
    now: float,
) -> dict[str, Any]:
    """The whole report, as ``GET /admin/status`` answers it (the page and the CLI show it)."""
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return {
        "generated_at": iso_time(now),
        "secrets_cached": len(rows),
        "states": states,
        "secrets": rows,
        "overlaps_open": overlaps_open,
        "extensions": dict(extensions),
        "revocations": revocations,
        "revocation_list_polled_at": (
            None if revocations_polled_at is None else iso_time(revocations_polled_at)
        ),
        "store_nodes": board.nodes(),
        "auth": board.auth(auth_method, now),
        "snapshot": board.snapshot(snapshot_enabled, snapshot_interval, now),
        "runbooks": RUNBOOKS + "README.md",
    }
