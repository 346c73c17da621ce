"""Files that must survive a crash: what makes a rename durable, and the clean-up of temp files
left by writers that died mid-write."""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

STALE_TEMP_AGE = 3600.0  # a temp file untouched this long belongs to no live write


def fsync_directory(directory: Path) -> None:
    """Make a rename into ``directory`` durable: without it a power loss can bring back the old
    file. (Nothing to do off POSIX.)"""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> None:
    """Best effort: remove temp files left by writers that died (kill -9, power loss)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(path.parent) as items:
        for item in items:
            match = pattern.fullmatch(item.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                if _is_abandoned(int(match[1]), item.stat().st_mtime, now):
                    os.unlink(item.path)


def _is_abandoned(pid: int, mtime: float, now: float) -> bool:
    if now - mtime > STALE_TEMP_AGE:
        return True  # also catches our own pid reused after a restart (pid 1 in containers)
    if pid <= 0 or pid == os.getpid() or os.name != "posix":
        return False  # ours may be another thread's write in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False
