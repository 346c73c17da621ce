"""Which version is this credential? For services that receive credentials (API keys, webhook
HMAC secrets): accept current and previous during an overlap, and learn who still presents old
ones. Values are compared as keyed fingerprints, in constant time, every candidate every time.
"""

from __future__ import annotations

import enum
import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.cache import SecretCache
from sidecar.core.facts import Listener, Quiet, Verified
from sidecar.core.policy import SecretClass
from sidecar.store.interface import Backend, SecretNotFound, StoreError

Fingerprint = Callable[[str, str, Any], str]
RETIRED_MEMO = 4096  # (path, version) fingerprint sets kept for retired versions


class Match(enum.StrEnum):
    """Which version a presented credential is: the current one, the previous one (overlap
    open), an older retired one, or none known."""

    CURRENT = "current"
    PREVIOUS = "previous"
    RETIRED = "retired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A verification's answer: what matched (``kid``, ``version``), the current version, and
    the retired versions the store could not give (so not checked)."""

    match: Match
    kid: str | None
    version: int | None
    current_version: int | None
    secret_class: SecretClass
    unchecked: list[int] = field(default_factory=list)  # retired versions the store could not give


class Verifier:
    """Tells which version of a secret a presented credential is: the current one, the previous
    one during an overlap, or a retired one up to ``lookback`` versions back. Keyed
    fingerprints, compared in constant time."""

    def __init__(
        self,
        cache: SecretCache,
        backend: Backend,
        fingerprint: Fingerprint,
        *,
        lookback: int,
        listener: Listener | None = None,
    ) -> None:
        self._cache = cache
        self._backend = backend
        self._fingerprint = fingerprint
        self._lookback = lookback
        self._listener: Listener = listener or Quiet()
        # Retired versions are known by fingerprints only: their values are not kept.
        self._retired: OrderedDict[tuple[str, int], Mapping[str, str]] = OrderedDict()

    async def verify(self, path: str, field: str, value: Any) -> Verdict:
        """Which version of ``path``'s ``field`` the presented ``value`` is; every candidate is
        compared, and the verdict is told as a ``Verified`` fact. Raises what reading ``path``
        does."""
        latest = await self._cache.get(path)
        secret = latest.entry.secret
        secret_class = latest.entry.secret_class
        current = secret.version
        candidates: list[tuple[Match, int | None, str | None]] = [
            (Match.CURRENT, current, self._fp(path, field, secret.data))
        ]
        unchecked: list[int] = []
        if current is not None and current > 1:
            overlap = self._cache.overlap(path)
            first_retired = current - 1
            if overlap is not None:
                try:
                    previous = await self._cache.get(path, current - 1)
                except SecretNotFound:
                    pass
                else:
                    fp = self._fp(path, field, previous.entry.secret.data)
                    candidates.append((Match.PREVIOUS, current - 1, fp))
                first_retired = current - 2
            for old in range(first_retired, max(0, current - 1 - self._lookback), -1):
                try:
                    fps = await self._retired_fingerprints(path, old)
                except SecretNotFound:
                    continue
                except StoreError:
                    unchecked.append(old)
                    continue
                candidates.append((Match.RETIRED, old, fps.get(field)))
        presented = self._fingerprint(path, field, value).encode()
        found: tuple[Match, int | None] = (Match.UNKNOWN, None)
        for candidate, candidate_version, fp in candidates:
            # No early exit: every candidate is compared, whatever matched before.
            equal = fp is not None and hmac.compare_digest(presented, fp.encode())
            if equal and found[0] is Match.UNKNOWN:
                found = (candidate, candidate_version)
        match, version = found
        kid = None
        if match is not Match.UNKNOWN:
            kid = path if version is None else f"{path}#{version}"
        verdict = Verdict(match, kid, version, current, secret_class, unchecked)
        self._listener.notify(Verified(path, secret_class, verdict, field))
        return verdict

    def _fp(self, path: str, field: str, data: Mapping[str, Any]) -> str | None:
        return self._fingerprint(path, field, data[field]) if field in data else None

    async def _retired_fingerprints(self, path: str, version: int) -> Mapping[str, str]:
        key = (path, version)
        known = self._retired.get(key)
        if known is not None:
            self._retired.move_to_end(key)
            return known
        secret = await self._backend.read(path, version)
        fps = {name: self._fingerprint(path, name, v) for name, v in secret.data.items()}
        self._retired[key] = fps
        if len(self._retired) > RETIRED_MEMO:
            self._retired.popitem(last=False)
        return fps
