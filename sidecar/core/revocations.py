"""The fleet-wide revocation list as the cache holds it: which paths (or versions of them) are
refused, and why."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Revocation = tuple[str, int | None, str]  # (path, version or None for every version, reason)


class SecretRevoked(Exception):
    """The path (or this version of it) is on the revocation list."""

    def __init__(self, path: str, version: int | None, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.version = version
        self.reason = reason


class Revocations:
    """The revocation list in force, consulted by reads: which paths, or versions of them, are
    refused and why. ``active`` lets the hot path skip it while it is empty."""

    def __init__(self) -> None:
        self._table: dict[str, dict[int | None, str]] = {}  # path -> {version|None: reason}
        self.active = False  # anything listed (a plain attribute: the hot path reads it)

    def replace(self, revoked: Iterable[Revocation]) -> tuple[list[Revocation], list[Revocation]]:
        """The new list in force; returns (added, removed)."""
        table: dict[str, dict[int | None, str]] = {}
        for path, version, reason in revoked:
            table.setdefault(path, {})[version] = reason
        old = {(p, v): r for p, versions in self._table.items() for v, r in versions.items()}
        new = {(p, v): r for p, versions in table.items() for v, r in versions.items()}
        added = [(p, v, r) for (p, v), r in new.items() if (p, v) not in old]
        removed = [(p, v, r) for (p, v), r in old.items() if (p, v) not in new]
        self._table = table
        self.active = bool(table)
        return added, removed

    def covers(self, path: str, version: int | None) -> bool:
        """Is a value of ``path`` at ``version`` refused (the path, or that version, listed)?"""
        versions = self._table.get(path)
        if not versions:
            return False
        return None in versions or version in versions

    def check(self, path: str, version: int | None) -> None:
        """Raise SecretRevoked if ``path`` (or this version of it) is on the list."""
        versions = self._table.get(path)
        if not versions:
            return
        if None in versions:
            raise SecretRevoked(path, None, versions[None])
        if version is not None and version in versions:
            raise SecretRevoked(path, version, versions[version])

    def listing(self) -> list[dict[str, Any]]:
        """The list as dicts (path, version (None: every version), reason), by path, for /admin."""
        return [
            {"path": path, "version": version, "reason": reason}
            for path, versions in sorted(self._table.items())
            for version, reason in versions.items()
        ]
