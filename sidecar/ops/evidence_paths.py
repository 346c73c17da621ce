"""``sidecar evidence``, per secret: the rotations, presentations, failures, purges and
revocations the audit log shows for one path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A leased credential's life in the audit log (issued, renewed, refused renewal, re-issued)
LEASE_EVENTS = frozenset(
    {
        "lease_issued",
        "lease_renewed",
        "lease_renewal_refused",
        "lease_reissued",
        "lease_revoked",
        "lease_expired",
    }
)


def new_tally() -> dict[str, Any]:
    """An empty ``{count, last}`` tally: the report's shape for every counted event."""
    return {"count": 0, "last": None}


class SecretEvidence:
    """What the audit log shows about one path, gathered record by record, then summarised for
    the report."""

    def __init__(self) -> None:
        self.class_: Any = None
        self.owner: Any = None
        self.rotations: list[tuple[float, dict[str, Any]]] = []
        self.served: dict[Any, list[tuple[float, str]]] = {}  # version -> first-served times
        self.retired: list[tuple[float, str, Mapping[str, Any]]] = []
        self.previous = {**new_tally(), "fields": set()}
        self.retired_presented = {**new_tally(), "fields": set(), "versions": set()}
        self.failures: dict[str, dict[str, Any]] = {}
        self.stale: dict[str, Any] = {"max_count": 0, "last": None}
        self.purges: list[dict[str, Any]] = []
        self.revocations: list[dict[str, Any]] = []
        self.unrevocations: list[dict[str, Any]] = []
        self.leases: dict[str, dict[str, Any]] = {}  # lease event -> {count, last, last_kid}

    def note_owner(self, record: Mapping[str, Any]) -> None:
        """Keep the latest class and owner any record names, so the report says whose secret it
        is."""
        if record.get("class") is not None:
            self.class_ = record["class"]
        if record.get("owner") is not None:
            self.owner = record["owner"]

    def add(self, event: str, epoch: float, stamp: str, r: Mapping[str, Any]) -> None:
        """Take one per-path record (``epoch`` orders it, ``stamp`` is shown) into the evidence;
        an event it does not know is ignored."""
        if event == "rotation_detected":
            old, new = r.get("old_fingerprint"), r.get("new_fingerprint")
            rotation = {
                "time": stamp,
                "old_version": r.get("old_version"),
                "new_version": r.get("new_version"),
                "created_time": r.get("created_time"),
                "value_changed": None if old is None or new is None else old != new,
            }
            self.rotations.append((epoch, rotation))
        elif event == "version_first_served":
            version = r.get("version")
            if version is None or isinstance(version, str | int | float):  # a dict key
                self.served.setdefault(version, []).append((epoch, stamp))
        elif event == "previous_retired":
            self.retired.append((epoch, stamp, r))
        elif event == "previous_value_presented":
            count_in(self.previous, stamp)
            _add(self.previous["fields"], r.get("field"))
        elif event == "retired_value_presented":
            count_in(self.retired_presented, stamp)
            _add(self.retired_presented["fields"], r.get("field"))
            _add(self.retired_presented["versions"], r.get("version"))
        elif event == "fetch_failed":
            kind = str(r.get("kind") or "unknown")
            tally = self.failures.setdefault(kind, {**new_tally(), "last_reason": None})
            count_in(tally, stamp)
            # A writer may rate-limit these records and say how many it left out.
            suppressed = r.get("suppressed")
            if isinstance(suppressed, int) and not isinstance(suppressed, bool):
                tally["count"] += max(0, suppressed)
            tally["last_reason"] = r.get("reason")
        elif event == "stale_served":
            count = r.get("count")
            if isinstance(count, int) and count > self.stale["max_count"]:
                self.stale["max_count"] = count
            self.stale["last"] = stamp
        elif event == "purged":
            self.purges.append(purge_record(stamp, r))
        elif event == "revoked":
            self.revocations.append(
                {
                    "time": stamp,
                    "version": r.get("version"),
                    "reason": r.get("reason"),
                    "entries": r.get("entries"),
                }
            )
        elif event in LEASE_EVENTS:
            tally = self.leases.setdefault(event.removeprefix("lease_"), new_tally())
            count_in(tally, stamp)
            tally["last_kid"] = r.get("kid")
        elif event == "unrevoked":
            self.unrevocations.append(
                {"time": stamp, "version": r.get("version"), "reason": r.get("reason")}
            )

    def summary(self) -> dict[str, Any]:
        """The path's section of the report: each rotation matched with its first serve and the
        retirement of the old version, and every tally with its sets sorted."""
        rotations = [self._rotation(epoch, rotation) for epoch, rotation in self.rotations]
        adopted_later = False
        for rotation in reversed(rotations):
            rotation["superseded"] = adopted_later
            adopted_later = adopted_later or rotation["first_served"] is not None
        return {
            "class": self.class_,
            "owner": self.owner,
            "rotations": rotations,
            "previous_value_presented": {
                **self.previous,
                "fields": _sorted(self.previous["fields"]),
            },
            "retired_value_presented": {
                **self.retired_presented,
                "fields": _sorted(self.retired_presented["fields"]),
                "versions": _sorted(self.retired_presented["versions"]),
            },
            "fetch_failures": {kind: self.failures[kind] for kind in sorted(self.failures)},
            "stale_served": self.stale,
            "purges": self.purges,
            "revocations": self.revocations,
            "unrevocations": self.unrevocations,
            # only for leased credentials: a KV secret's section is as it always was
            **({"leases": {e: self.leases[e] for e in sorted(self.leases)}} if self.leases else {}),
        }

    def _rotation(self, epoch: float, rotation: dict[str, Any]) -> dict[str, Any]:
        new = rotation["new_version"]
        served = self.served.get(new, [])
        if new is None:
            # KV v1 has no versions: only a serve after the rotation can be of the new value.
            served = [item for item in served if item[0] >= epoch]
        first = served[0] if served else None
        retired = self._retirement(epoch, rotation["old_version"])
        return {
            **rotation,
            "first_served": None if first is None else first[1],
            "adoption_seconds": None if first is None else round(first[0] - epoch, 3),
            "superseded": False,
            "previous_retired": None if retired is None else retired[1],
            "previous_last_served": None if retired is None else retired[2].get("last_served"),
        }

    def _retirement(
        self, epoch: float, old_version: Any
    ) -> tuple[float, str, Mapping[str, Any]] | None:
        for item in self.retired:
            if item[0] >= epoch and item[2].get("version") == old_version:
                self.retired.remove(item)  # one retirement per rotation
                return item
        return None


def count_in(tally: dict[str, Any], stamp: str) -> None:
    """Count one occurrence in a tally, and remember when it was."""
    tally["count"] += 1
    tally["last"] = stamp


def _add(items: set[Any], item: Any) -> None:
    if isinstance(item, str | int | float):  # anything else is not from our writer
        items.add(item)


def _sorted(items: set[Any]) -> list[Any]:
    return sorted(items, key=lambda item: (isinstance(item, str), item))


def purge_record(stamp: str, r: Mapping[str, Any]) -> dict[str, Any]:
    """A purge record in the report's shape, the same for per-path and global purges."""
    return {
        "time": stamp,
        "scope": r.get("scope"),
        "target": r.get("target"),
        "entries": r.get("entries"),
        "by": r.get("by"),
        # a purge of leased credentials revokes their leases in the store too
        **({"leases_revoked": r["leases_revoked"]} if r.get("leases_revoked") is not None else {}),
        **({"leases_not_revoked": r["leases_not_revoked"]} if r.get("leases_not_revoked") else {}),
    }
