"""The audit trail: what the cache, the verifier and the store identity report, as audit records.

Records name the path, the class and its owner, and carry fingerprints, never values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.core.backoff import CircuitState
from sidecar.core.entries import Entry
from sidecar.core.observer import CacheObserver
from sidecar.core.policy import SecretClass
from sidecar.core.verify import Match, Verdict, VerifyObserver
from sidecar.ops.audit import AuditLog, iso_time
from sidecar.store.interface import Secret, StoreError

FETCH_FAILED_EVERY = 60.0  # seconds: one fetch_failed record per path and kind, with a count


class AuditTrail(CacheObserver, VerifyObserver):
    def __init__(
        self, audit: AuditLog, method: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._audit = audit
        self._method = method
        self._clock = clock
        self._failures: dict[tuple[str, str], tuple[float, int]] = {}

    @staticmethod
    def _who(secret_class: SecretClass) -> dict[str, str]:
        return {"class": secret_class.name, "owner": secret_class.owner}

    # cache
    def fetch_finished(
        self, path: str, secret_class: SecretClass, seconds: float, error: StoreError | None
    ) -> None:
        if error is None:
            return
        # An outage fails every read: one record per path and kind a minute, with the count.
        key = (path, error.kind.value)
        now = self._clock()
        since, count = self._failures.get(key, (-FETCH_FAILED_EVERY, 0))
        if now - since < FETCH_FAILED_EVERY:
            self._failures[key] = (since, count + 1)
            return
        self._failures[key] = (now, 0)
        self._audit.record(
            "fetch_failed",
            path=path,
            kind=error.kind.value,
            reason=error.reason,
            suppressed=count or None,
            **self._who(secret_class),
        )

    def stale_served(self, path: str, secret_class: SecretClass, entry: Entry, age: float) -> None:
        self._audit.stale_served(
            path, version=entry.secret.version, age_seconds=round(age, 3), **self._who(secret_class)
        )

    def rotated(self, path: str, secret_class: SecretClass, old: Secret, new: Secret) -> None:
        self._audit.record(
            "rotation_detected",
            path=path,
            old_version=old.version,
            new_version=new.version,
            old_fingerprint=self._audit.fingerprint(old.data),
            new_fingerprint=self._audit.fingerprint(new.data),
            created_time=new.created_time,
            **self._who(secret_class),
        )

    def first_served(
        self, path: str, secret_class: SecretClass, secret: Secret, since_rotation: float | None
    ) -> None:
        self._audit.record(
            "version_first_served",
            path=path,
            version=secret.version,
            fingerprint=self._audit.fingerprint(secret.data),
            seconds_since_rotation=None if since_rotation is None else round(since_rotation, 3),
            **self._who(secret_class),
        )

    def previous_retired(
        self,
        path: str,
        secret_class: SecretClass,
        version: int,
        current_version: int,
        last_served: float | None,
    ) -> None:
        self._audit.record(
            "previous_retired",
            path=path,
            version=version,
            current_version=current_version,
            last_served=None if last_served is None else iso_time(last_served),
            **self._who(secret_class),
        )

    # verifier
    def verified(self, path: str, secret_class: SecretClass, verdict: Verdict, field: str) -> None:
        if verdict.match is Match.PREVIOUS:
            event = "previous_value_presented"
        elif verdict.match is Match.RETIRED:
            event = "retired_value_presented"
        else:
            return
        self._audit.record(
            event,
            path=path,
            field=field,
            version=verdict.version,
            current_version=verdict.current_version,
            **self._who(secret_class),
        )

    # the store identity (BackendObserver)
    def auth_event(self, event: str, ok: bool, expires_at: float | None) -> None:
        if not ok:
            self._audit.record("auth_failed", method=self._method, reason=event)
        elif event == "renew":
            self._audit.record(
                "auth_renewed",
                method=self._method,
                expires=None if not expires_at else iso_time(expires_at),
            )

    def node_state(self, address: str, up: bool, circuit: CircuitState) -> None:
        pass
