"""The outage decision, in one place: what a read gets when the store cannot confirm the value
held (pure: a class, an age, and what went wrong)."""

from __future__ import annotations

import enum

from sidecar.core.policy import Freshness, SecretClass
from sidecar.store.interface import StoreUnavailable


class Decision(enum.Enum):
    """What a read gets when the store cannot confirm the value held (``decide``'s answer)."""

    FRESH = "fresh"  # still within refresh_interval: served as a hit
    STALE = "stale"  # past it, but the class serves stale values this old
    FAIL_CLOSED = "fail_closed"  # the class never serves a value the store cannot confirm
    TOO_OLD = "too_old"  # past max_cache_age: dropped, never served again


def decide(secret_class: SecretClass, age: float, *, provisional: bool) -> Decision:
    """``age``: seconds since the store last confirmed the value; ``provisional``: restored
    from a snapshot and not confirmed since (never fresh)."""
    if secret_class.freshness(age) is Freshness.FRESH and not provisional:
        return Decision.FRESH
    if secret_class.may_serve_stale(age):
        return Decision.STALE
    if age < secret_class.max_cache_age:
        return Decision.FAIL_CLOSED
    return Decision.TOO_OLD


def fail_closed(secret_class: SecretClass, cause: StoreUnavailable) -> StoreUnavailable:
    """The 503 of a fail_closed class whose value the store cannot confirm: says why nothing was
    served, keeping the outage's kind and retry hint."""
    return StoreUnavailable(
        "fail_closed",
        kind=cause.kind,
        detail=f"class {secret_class.name!r} never serves unconfirmed values ({cause.reason})",
        retry_after=cause.retry_after,
    )


def aged_out(secret_class: SecretClass, cause: StoreUnavailable) -> StoreUnavailable:
    """The 503 of a key whose value was dropped at max_cache_age while the store cannot confirm a
    new one: says why, keeping the outage's kind and retry hint."""
    return StoreUnavailable(
        "max_cache_age_exceeded",
        kind=cause.kind,
        detail=f"cached value is older than max_cache_age ({secret_class.max_cache_age:g}s) "
        f"and the store cannot confirm it ({cause.reason})",
        retry_after=cause.retry_after,
    )
