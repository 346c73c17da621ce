"""The audit trail: the facts the cache, the verifier and the store identity report, as audit
records.

Records name the path, the class and its owner, and carry fingerprints, never values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.core.facts import (
    AuthEvent,
    Fact,
    FetchFinished,
    FirstServed,
    LeaseEvent,
    PreviousRetired,
    Rotated,
    StaleServed,
    Verified,
)
from sidecar.core.policy import SecretClass
from sidecar.core.verify import Match, Verdict
from sidecar.ops.audit import AuditLog, iso_time
from sidecar.store.interface import StoreError

FETCH_FAILED_EVERY = 60.0  # seconds: one fetch_failed record per path and kind, with a count


class AuditTrail:
    """Turns the facts that the cache, the verifier and the store identity report into audit
    records, with fetch failures rate-limited so an outage cannot flood the log."""

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

    def notify(self, fact: Fact) -> None:
        """Record a fact that is evidence (fetch failures, stale serves, rotations, first serves,
        retirements, previous or retired values presented, auth failures and renewals); any other
        fact is ignored."""
        match fact:
            case FetchFinished(path, secret_class, _, error) if error is not None:
                self._fetch_failed(path, secret_class, error)
            case StaleServed(path, secret_class, entry, age):
                self._audit.stale_served(
                    path,
                    version=entry.secret.version,
                    age_seconds=round(age, 3),
                    **self._who(secret_class),
                )
            case Rotated(path, secret_class, old_version, new, old):
                self._audit.record(
                    "rotation_detected",
                    path=path,
                    old_version=old_version,
                    new_version=new.version,
                    old_fingerprint=None if old is None else self._audit.fingerprint(old.data),
                    new_fingerprint=self._audit.fingerprint(new.data),
                    created_time=new.created_time,
                    **self._who(secret_class),
                )
            case FirstServed(path, secret_class, secret, since):
                self._audit.record(
                    "version_first_served",
                    path=path,
                    version=secret.version,
                    fingerprint=self._audit.fingerprint(secret.data),
                    seconds_since_rotation=None if since is None else round(since, 3),
                    **self._who(secret_class),
                )
            case PreviousRetired(path, secret_class, version, current_version, last_served):
                self._audit.record(
                    "previous_retired",
                    path=path,
                    version=version,
                    current_version=current_version,
                    last_served=None if last_served is None else iso_time(last_served),
                    **self._who(secret_class),
                )
            case Verified(path, secret_class, verdict, field):
                self._verified(path, secret_class, verdict, field)
            case LeaseEvent(path, secret_class, event, kid, lease_duration):
                # the credential by its kid (a digest of the lease ID), never its value
                self._audit.record(
                    f"lease_{event}",
                    path=path,
                    kid=kid,
                    lease_duration=lease_duration,
                    **self._who(secret_class),
                )
            case AuthEvent(event, ok, expires_at):
                if not ok:
                    self._audit.record("auth_failed", method=self._method, reason=event)
                elif event == "renew":
                    self._audit.record(
                        "auth_renewed",
                        method=self._method,
                        expires=None if not expires_at else iso_time(expires_at),
                    )

    def _fetch_failed(self, path: str, secret_class: SecretClass, error: StoreError) -> None:
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

    def _verified(self, path: str, secret_class: SecretClass, verdict: Verdict, field: str) -> None:
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
