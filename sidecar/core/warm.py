"""Warm start, as the cache sees it: which values restored from a snapshot may be used, how
they are held (served at once as stale, confirmed with the store soon), and which may be
written to disk."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from sidecar.core.entries import CacheKey, Entry, EntryTable
from sidecar.core.leases import leased_class
from sidecar.core.policy import OnOutage, Policy, SecretClass
from sidecar.core.upkeep import Upkeep
from sidecar.store.interface import Secret

CLOCK_TOLERANCE = 5.0  # seconds a restored lease's stamp may be ahead of this clock


def restore_verdict(
    policy: Policy, path: str, age: float, secret: Secret | None = None
) -> tuple[SecretClass | None, str | None]:
    """May a value of this age, restored from disk, be used? (class, None) if so, else
    (class, reason), or (None, reason) when no rule classifies the path any more. A leased
    ``secret`` is judged by its lease (its class as the lease limits it); ``age`` below zero
    means it was stamped in the future."""
    secret_class = policy.classify(path)
    if secret_class is None:
        return None, "no rule classifies this path any more"
    if secret_class.on_outage is OnOutage.FAIL_CLOSED:
        return secret_class, "its class is fail_closed (never restored from disk)"
    if secret is not None and secret.lease_id is not None:
        # a credential is reused only within its lease (less the margin)
        secret_class = leased_class(secret_class, secret.lease_duration)
        if age >= secret_class.max_cache_age:
            return secret_class, "its lease has ended"
        if age < -CLOCK_TOLERANCE:
            return (
                secret_class,
                "stamped in the future (the clock moved): its lease's end is unknown",
            )
    if age >= secret_class.max_cache_age:
        return secret_class, "older than max_cache_age"
    return secret_class, None


Restored = tuple[CacheKey, Secret, float] | tuple[CacheKey, Secret, float, str | None]


def restore(
    items: Iterable[Restored],
    policy: Policy,
    entries: EntryTable,
    upkeep: Upkeep,
    *,
    confirm_within: float,
    clock: Callable[[], float],
    wall: Callable[[], float],
) -> tuple[int, int]:
    """Warm the cache from a snapshot: ``(key, secret, confirmed_at wall time)`` each.

    Returns (restored, discarded). Values are provisional: served at once, marked stale,
    without asking the store; each is confirmed in the background at a random moment within
    ``confirm_within`` seconds (so a fleet restarting together asks the store once per secret,
    spread out). Values past max_cache_age, of fail_closed classes, no longer classified by
    the rules, or of a key already held are discarded.
    """
    now, at = clock(), wall()
    restored = discarded = 0
    for item in items:
        key, secret, confirmed_wall = item[0], item[1], item[2]
        issued_by = item[3] if len(item) > 3 else None  # a lease: the token that made it
        secret_class, why_not = restore_verdict(policy, key[0], at - confirmed_wall, secret)
        if secret_class is None or why_not is not None or key in entries:
            discarded += 1
            continue
        age = max(0.0, at - confirmed_wall)
        entry = Entry(
            secret=secret,
            secret_class=secret_class,
            confirmed_at=now - age,
            fetched_at=confirmed_wall,
            last_read=-math.inf,
            provisional=True,
            serial=upkeep.schedule.serial(),
            issued_by=issued_by,
        )
        entries.adopt(key, entry)
        upkeep.restored(key, entry, confirm_within)
        restored += 1
    entries.report()
    return restored, discarded


def exportable(entries: EntryTable) -> list[tuple[CacheKey, Entry]]:
    """What may be written to disk: never values of fail_closed classes. A leased credential
    goes with its lease (restored only within it)."""
    return [
        (key, entry)
        for key, entry in entries.items()
        if entry.secret_class.on_outage is not OnOutage.FAIL_CLOSED
    ]
