"""Which class a secret belongs to, and how fresh a cached value is. Pure: no I/O, no clock."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache


class OnOutage(enum.StrEnum):
    """What a class does when the store cannot confirm a value: serve it stale (until
    max_cache_age) or fail closed (503)."""

    SERVE_STALE = "serve_stale"
    FAIL_CLOSED = "fail_closed"


class Freshness(enum.Enum):
    """Where a cached value stands by age: within refresh_interval, past it, or past
    max_cache_age."""

    FRESH = "fresh"  # within refresh_interval: serve without asking the store
    STALE = "stale"  # past refresh_interval: ask the store; on outage the class decides
    EXPIRED = "expired"  # past max_cache_age: never serve again


@dataclass(frozen=True, slots=True)
class SecretClass:
    """A class of secrets from the configuration: how often values are refreshed, how long they
    may be kept and served in an outage, the rotation overlap, and its owner's runbook (who owns
    it, what it is for, how it is rotated and revoked)."""

    name: str
    business_function: str
    owner: str
    refresh_interval: float
    max_cache_age: float
    on_outage: OnOutage
    rotation_method: str
    revocation_steps: str
    preload: bool = False
    overlap: float = 0.0  # seconds the previous version stays available after a rotation
    negative_ttl: float = 5.0  # seconds a "not found"/"forbidden" answer is remembered

    @property
    def negative_seconds(self) -> float:
        """How long a refusal is remembered: never longer than a value would be trusted."""
        return min(self.negative_ttl, self.refresh_interval)

    def freshness(self, age: float) -> Freshness:
        """``age``: seconds since the store last confirmed the value."""
        if age < self.refresh_interval:
            return Freshness.FRESH
        if age < self.max_cache_age:
            return Freshness.STALE
        return Freshness.EXPIRED

    def may_serve_stale(self, age: float) -> bool:
        """Whether a value this old may answer a read the store cannot confirm."""
        return self.on_outage is OnOutage.SERVE_STALE and age < self.max_cache_age


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``secrets`` entry of the configuration: paths matching the glob ``match`` get its
    class."""

    match: str
    secret_class: SecretClass
    preload: bool = False  # fetch at start and keep fresh, read or not (literal paths only)

    def matches(self, path: str) -> bool:
        """Does ``path`` match this rule's glob (see ``glob_regex``)?"""
        return glob_regex(self.match).fullmatch(path) is not None


class Policy:
    """First matching rule wins. Unmatched paths have no class and are not served."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._rules = tuple(rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in order (the first match wins), as now in force."""
        return self._rules

    def classify(self, path: str) -> SecretClass | None:
        """The class of the first rule matching ``path``; None: no rule does (not served)."""
        for rule in self._rules:
            if rule.matches(path):
                return rule.secret_class
        return None

    def class_named(self, name: str) -> SecretClass | None:
        """The class now in force under ``name`` (incident windows included), or None."""
        return next((r.secret_class for r in self._rules if r.secret_class.name == name), None)

    def replace_class(self, secret_class: SecretClass) -> SecretClass:
        """Put a changed copy of a class in place (same name); returns the one replaced."""
        old = self.class_named(secret_class.name)
        if old is None:
            raise KeyError(secret_class.name)
        self._rules = tuple(
            Rule(r.match, secret_class, r.preload)
            if r.secret_class.name == secret_class.name
            else r
            for r in self._rules
        )
        return old

    def preload_paths(self) -> list[str]:
        """Paths to fetch at start and keep fresh: literal rules marked (or classed) preload,
        when that rule is the one that classifies the path."""
        return [
            rule.match
            for rule in self._rules
            if rule.preload and self.classify(rule.match) is rule.secret_class
        ]


def is_literal(pattern: str) -> bool:
    """A pattern without wildcards names exactly one path (only such paths can be preloaded)."""
    return not any(ch in pattern for ch in "*?")


@lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` spans segments; ``*`` and ``?`` stay within one, as in .gitignore.

    ``a/**`` matches ``a/x`` and ``a/x/y`` (not ``a``); ``**/db`` matches ``db`` and ``x/db``.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)
