"""Warm start: load the encrypted snapshot into the cache at start, save it periodically and at
shutdown. File format and crypto live in ``snapshot.py``; this is the glue, facts and logs."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sidecar.core.cache import SecretCache, restore_verdict
from sidecar.core.facts import Listener, SnapshotFailed, SnapshotLoaded, SnapshotSaved
from sidecar.ops.audit import AuditLog, iso_time
from sidecar.ops.snapshot import (
    SnapshotKeyError,
    key_file_mode_problem,
    load_key,
    read_snapshot,
    write_snapshot,
)
from sidecar.ops.snapshot_records import SnapshotEntry
from sidecar.settings import ConfigError, Settings, SnapshotSettings
from sidecar.store.interface import METADATA

log = logging.getLogger("sidecar.snapshot")


def snapshot_key(settings: SnapshotSettings) -> bytes | None:
    """The snapshot key, or None when no key_file is configured (no snapshot then)."""
    if settings.key_file is None:
        return None
    try:
        key = load_key(settings.key_file)
    except SnapshotKeyError as exc:
        raise ConfigError([f"snapshot.key_file: {exc}"]) from None
    problem = key_file_mode_problem(settings.key_file)
    if problem:
        log.warning("snapshot key file is too open", extra={"problem": problem})
    return key


class MountMemory(Protocol):
    """The store's mounts as discovered (engine, KV version), kept in the snapshot so a warm
    start does not ask the store again which mount holds each path."""

    def export_mounts(self) -> list[dict[str, Any]]:
        """The mounts known now, as plain data for the snapshot."""

    def import_mounts(self, mounts: list[dict[str, Any]]) -> int:
        """Take mounts back from the snapshot; returns how many were taken."""


class Snapshotter:
    """Keeps the encrypted snapshot in step with the cache: loaded at start, saved on an interval
    and at shutdown, removed when it cannot be rewritten without a value that was dropped."""

    def __init__(
        self,
        settings: SnapshotSettings,
        key: bytes,
        cache: SecretCache,
        listener: Listener,
        audit: AuditLog | None = None,
        wall: Callable[[], float] = time.time,
        mounts: MountMemory | None = None,
        confirm_within: float = 0.0,
    ) -> None:
        self._mounts = mounts
        self._confirm_within = confirm_within
        self._audit = audit
        self._path: Path = settings.path
        self._interval = settings.interval
        self._key = key
        self._cache = cache
        self._listener = listener
        self._wall = wall
        self._saved_generation: int | None = None
        self._lock = asyncio.Lock()

    def load(self) -> int:
        """Restore what the snapshot holds. A bad snapshot is reported and ignored."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            log.error(
                "snapshot directory cannot be created; snapshots will fail",
                extra={"directory": str(self._path.parent), "error": exc.strerror},
            )
        result = read_snapshot(self._path, self._key)
        if result.problem is not None:
            log.error(
                "snapshot unusable in part or whole; ignoring what cannot be read",
                extra={
                    "file": str(self._path),
                    "problem": result.problem,
                    "skipped": result.skipped,
                    "recovered": len(result.entries),
                },
            )
        secrets = result.entries
        if result.mounts and self._mounts is not None:
            self._mounts.import_mounts(result.mounts)
        restored, discarded = self._cache.restore(
            [
                ((e.secret.path, e.version_key), e.secret, e.confirmed_at, e.issued_by)
                for e in secrets
            ],
            confirm_within=self._confirm_within,
        )
        self._listener.notify(SnapshotLoaded(restored, unusable=result.problem is not None))
        if self._audit is not None:
            self._audit.record(
                "snapshot_loaded", restored=restored, discarded=discarded, problem=result.problem
            )
        log.info(
            "snapshot loaded" if result.entries or result.problem else "no snapshot yet",
            extra={
                "file": str(self._path),
                "restored": restored,
                "discarded": discarded,
                "written_at": None if result.written_at is None else iso_time(result.written_at),
            },
        )
        return restored

    def unsaved(self) -> bool:
        """True while the cache holds changes the snapshot file does not have yet."""
        return self._cache.generation != self._saved_generation

    async def save(self, *, force: bool = False) -> bool:
        """Write the snapshot (in a thread: fsync must not stall the event loop), unless the
        cache has not changed since the last save and ``force`` is not set. False when it could
        not be written (logged and counted; the previous file stays)."""
        async with self._lock:
            generation = self._cache.generation
            if not force and generation == self._saved_generation:
                return True
            entries = [
                SnapshotEntry(
                    version_key=key[1],
                    secret=entry.secret,
                    class_name=entry.secret_class.name,
                    confirmed_at=entry.fetched_at,
                    issued_by=entry.issued_by,
                )
                for key, entry in self._cache.export()
            ]
            mounts = self._mounts.export_mounts() if self._mounts is not None else None
            try:
                count = await asyncio.to_thread(
                    functools.partial(
                        write_snapshot,
                        self._path,
                        self._key,
                        entries,
                        mounts=mounts,
                        now=self._wall(),
                    )
                )
            except Exception as exc:  # disk full, or anything else: the loop must go on
                self._listener.notify(SnapshotFailed("save"))
                log.error(
                    "snapshot not written; the previous one stays",
                    extra={
                        "file": str(self._path),
                        "error": (exc.strerror if isinstance(exc, OSError) else None)
                        or type(exc).__name__,
                    },
                )
                return False
            self._saved_generation = generation
            if self._audit is not None:
                self._audit.record("snapshot_saved", entries=count)
            self._listener.notify(SnapshotSaved(count, self._wall()))
            log.debug("snapshot saved", extra={"file": str(self._path), "entries": count})
            return True

    def remove(self, why: str) -> None:
        """Delete the snapshot file: it holds values that must not come back after a restart
        (purged or revoked) and could not be rewritten without them."""
        try:
            self._path.unlink(missing_ok=True)
        except OSError as exc:
            self._listener.notify(SnapshotFailed("save"))
            log.critical(
                "snapshot could not be rewritten nor removed: it may still hold a value that "
                "was purged or revoked; delete it before the next start",
                extra={"file": str(self._path), "why": why, "error": exc.strerror},
            )
            return
        self._saved_generation = None
        if self._audit is not None:
            self._audit.record("snapshot_removed", why=why)
        log.error(
            "snapshot removed: it could not be rewritten without a value that must not come "
            "back; the next start is cold",
            extra={"file": str(self._path), "why": why},
        )

    async def run(self) -> None:
        """Save every ``snapshot.interval`` for as long as the sidecar runs (skipped when the
        cache has not changed)."""
        while True:
            await asyncio.sleep(self._interval)
            await self.save()


def _held_as(version_key: int | None) -> str:
    """How a snapshot entry was read: the latest value, a version asked for by number, or a
    KV v2 metadata document (the Vault-compatible API's ``metadata/`` reads; no value)."""
    if version_key is None:
        return "latest"
    if version_key == METADATA:
        return "metadata"
    return f"version {version_key}"


def inspect_snapshot(settings: Settings, wall: Callable[[], float] = time.time) -> dict[str, Any]:
    """What the snapshot holds and what a start would do with each entry. Never values."""
    key = snapshot_key(settings.snapshot)
    if key is None:
        raise ConfigError(["snapshot.key_file: not set, so there is no snapshot to inspect"])
    path = settings.snapshot.path
    result = read_snapshot(path, key)
    policy = settings.policy()
    now = wall()
    entries = []
    for entry in result.entries:
        age = now - entry.confirmed_at
        secret_class, why_not = restore_verdict(policy, entry.secret.path, age, entry.secret)
        age = max(0.0, age)
        entries.append(
            {
                "path": entry.secret.path,
                "held_as": _held_as(entry.version_key),
                "version_key": entry.version_key,
                "version": entry.secret.version,
                "class": secret_class.name if secret_class else None,
                "class_when_saved": entry.class_name,
                "age_seconds": round(age, 3),
                "discard": why_not,
            }
        )
    return {
        "file": str(path),
        "format_version": result.format_version,
        "written_at": None if result.written_at is None else iso_time(result.written_at),
        "mounts": len(result.mounts),
        "problem": result.problem,
        "skipped": result.skipped,
        "restorable": sum(1 for e in entries if e["discard"] is None),
        "entries": entries,
    }
