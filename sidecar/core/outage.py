"""The outage decision, in one place: what a read gets when the store cannot confirm the value
held (pure: a class, an age, and what went wrong), and how a read applies it."""

from __future__ import annotations

import enum
from collections.abc import Callable

from sidecar.core.entries import CacheKey, Entry, EntryTable, Lookup, Outcome
from sidecar.core.leases import ended_by_lease
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


def aged_out(
    secret_class: SecretClass, cause: StoreUnavailable, why: str = "max_cache_age_exceeded"
) -> StoreUnavailable:
    """The 503 of a key whose value was dropped at max_cache_age (``why``: or at its lease's
    end) while the store cannot give a new one: says why, keeping the outage's kind and hint."""
    if why == "lease_expired":
        return StoreUnavailable(
            "lease_expired",
            kind=cause.kind,
            detail="the credential's lease has ended (a dead credential is never served) and "
            f"the store cannot issue a new one ({cause.reason})",
            retry_after=cause.retry_after,
        )
    return StoreUnavailable(
        "max_cache_age_exceeded",
        kind=cause.kind,
        detail=f"cached value is older than max_cache_age ({secret_class.max_cache_age:g}s) "
        f"and the store cannot confirm it ({cause.reason})",
        retry_after=cause.retry_after,
    )


def without_store(
    entries: EntryTable,
    key: CacheKey,
    entry: Entry | None,
    secret_class: SecretClass,
    cause: StoreUnavailable,
    now: float,
    on_stale: Callable[[Entry, float], None],
) -> Lookup:
    """The store could not answer a read of ``key`` (of ``secret_class``): the value held as
    ``decide`` allows it (``on_stale`` hears of a stale one), or the refusal that says why not.
    ``entry``: what the read saw before it asked the store (None: nothing; one may have arrived
    since)."""
    if entry is None:
        entry = entries.get(key)
    if entry is not None:
        age = now - entry.confirmed_at
        decision = decide(entry.secret_class, age, provisional=entry.provisional)
        if decision is Decision.FRESH:
            return Lookup(entry, Outcome.HIT, age)
        if decision is Decision.STALE:
            on_stale(entry, age)
            return Lookup(entry, Outcome.STALE, age)
        if decision is Decision.FAIL_CLOSED:
            raise fail_closed(secret_class, cause) from cause
        entries.expire(key, entry, expiry_reason(entry))
    why = entries.aged_out(key)
    if why is not None:
        raise aged_out(secret_class, cause, why) from cause
    raise cause


def expiry_reason(entry: Entry) -> str:
    """Why ``entry`` ends when it does: its lease (a leased value's class is limited to the
    lease's usable time when that came first), or its class's max_cache_age."""
    secret = entry.secret
    if secret.lease_id is not None and ended_by_lease(entry.secret_class, secret.lease_duration):
        return "lease_expired"
    return "max_cache_age_exceeded"
