"""Leased secrets (database credentials and the like) in the cache, pure: how long one may be
served. Every read of a leased path makes a new credential in the store (a new database user),
so one lease is shared by every caller until shortly before it ends, whatever the class's
refresh_interval says; and it is never served past that point, whatever its max_cache_age says:
a dead credential is "invalid", not "stale"."""

from __future__ import annotations

import dataclasses

from sidecar.core.policy import SecretClass

MARGIN_SHARE = 0.1  # of the lease: served until this much before its end
MARGIN_CAP = 30.0  # seconds: the margin is never longer (a day-long lease ends 30 s early)


def usable_for(lease_duration: float) -> float:
    """Seconds a lease of ``lease_duration`` is served: its duration less a safety margin, so
    that a credential handed out is still valid when the app uses it."""
    return max(0.0, lease_duration - min(MARGIN_CAP, lease_duration * MARGIN_SHARE))


def leased_class(secret_class: SecretClass, lease_duration: float) -> SecretClass:
    """``secret_class`` as it applies to one leased value: fresh (no store request, no new
    credential) until the lease's usable end or the class's max_cache_age, whichever is first,
    and never served after it, not even during an outage (no stale window). Refresh-ahead then
    issues the next credential at 75-90 % of that time, while the current one still works."""
    limit = min(usable_for(lease_duration), secret_class.max_cache_age)
    limit = max(limit, 0.001)  # a zero-length lease is served to the reads that asked for it
    return dataclasses.replace(secret_class, refresh_interval=limit, max_cache_age=limit)


def ended_by_lease(leased: SecretClass, lease_duration: float) -> bool:
    """Did the lease (rather than the class's max_cache_age) set the end of a value whose class
    is ``leased`` (as ``leased_class`` made it)?"""
    return usable_for(lease_duration) <= leased.max_cache_age + 1e-6
