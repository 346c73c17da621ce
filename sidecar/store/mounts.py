"""The store's mount table as the sidecar knows it: which secrets engine holds a path, and its
KV version, learned as the CLI learns it (``sys/internal/ui/mounts/<path>``) and trusted for
a while, and remembered across restarts by the snapshot."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sidecar.store import replies
from sidecar.store.interface import Mount

log = logging.getLogger("sidecar.store")

MOUNT_TTL = 300.0  # how long a discovered mount (path, KV version) is trusted


class MountTable:
    """Which mount holds a path, learned from the store and trusted for MOUNT_TTL: reads need not
    ask the store about the mount each time, yet a remount is noticed within minutes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._mounts: dict[str, Mount] = {}
        self.no_metadata: set[str] = set()  # mounts whose metadata we may not read

    def known(self, api_path: str) -> Mount | None:
        """The mount holding ``api_path`` if already known and trusted: the longest prefix."""
        best: Mount | None = None
        for mount in self._mounts.values():
            if api_path.startswith(mount.path) and (
                best is None or len(mount.path) > len(best.path)
            ):
                best = mount
        if best is None or self._clock() - best.discovered_at >= MOUNT_TTL:
            return None
        return best

    def learned(self, found: replies.MountReply) -> Mount:
        """Remember a mount the store just named (trusted for MOUNT_TTL from now) and return it."""
        mount = Mount(
            path=found.path,
            kv_version=found.kv_version,
            discovered_at=self._clock(),
            engine=found.engine,
            info=found.info,
        )
        self._mounts[found.path] = mount
        log.info(
            "mount discovered",
            extra={"mount": found.path, "engine": found.engine, "kv_version": mount.kv_version},
        )
        return mount

    def export(self) -> list[dict[str, Any]]:
        """The mounts discovered so far, for the snapshot (no secret in them)."""
        return [
            {"path": m.path, "engine": m.engine, "kv_version": m.kv_version, "info": dict(m.info)}
            for m in self._mounts.values()
        ]

    def import_(self, mounts: list[dict[str, Any]]) -> int:
        """Mounts remembered from the snapshot: trusted for MOUNT_TTL like fresh discoveries."""
        now = self._clock()
        learned = 0
        for item in mounts:
            path, engine, kv_version = item.get("path"), item.get("engine"), item.get("kv_version")
            if not (isinstance(path, str) and path.endswith("/") and isinstance(engine, str)):
                continue
            if not isinstance(kv_version, int) or path in self._mounts:
                continue
            info = item.get("info")
            self._mounts[path] = Mount(
                path, kv_version, now, engine, info if isinstance(info, dict) else {}
            )
            learned += 1
        return learned
