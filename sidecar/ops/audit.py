"""Append-only audit log: one JSON object per line for each security-relevant event.

It never holds a secret value or a token. Values appear only as HMAC-SHA256 fingerprints under
a local key, so the evidence shows that a value changed (or did not) without revealing it.
``sidecar evidence`` (sidecar/ops/evidence.py) reads the log back.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from sidecar.ops.snapshot import SnapshotKeyError, load_key

log = logging.getLogger("sidecar.audit")

# A record carrying one of these is a bug in the caller, whatever the value looks like.
FORBIDDEN_FIELDS = frozenset({"value", "data", "secret", "token", "password"})
_RESERVED_FIELDS = frozenset({"time", "event", "audit"})
_SCALARS = (str, int, float, bool)
_FINGERPRINT_INFO = b"secrets-sidecar audit fingerprint"
_FIELD_LABEL = b"secrets-sidecar audit field\x00"
_PREFIX = "hmac-sha256:"


class AuditKeyError(SnapshotKeyError):
    """The fingerprint key file is missing, unreadable or not a 256-bit key."""


def iso_time(epoch: float) -> str:
    """``2026-11-30T02:28:39.469Z``: the form of every time in the audit log."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint_key(key_file: Path | None, fallback: bytes | None) -> tuple[bytes, str]:
    """The fingerprint key and where it came from: ``key_file``, ``snapshot_key`` or ``random``.

    Fingerprints made with a random key cannot be compared across restarts; the caller should
    say so in its start-up log.
    """
    if key_file is not None:
        try:
            return load_key(key_file, "audit fingerprint key"), "key_file"
        except SnapshotKeyError as exc:
            raise AuditKeyError(str(exc)) from exc
    if fallback is not None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        # Derived, not the snapshot key itself: a fingerprint must never be usable as, or
        # reveal anything about, the key that encrypts the snapshot.
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_FINGERPRINT_INFO)
        return hkdf.derive(fallback), "snapshot_key"
    return secrets.token_bytes(32), "random"


class AuditLog:
    """The evidence of security-relevant events, written as they happen, never holding a value.

    Thread-safe (store reads run in worker threads). With no ``path`` and no ``stdout``,
    records are validated and counted, then dropped: a disabled audit log."""

    def __init__(
        self,
        path: Path | None,
        *,
        stdout: bool = False,
        fingerprint_key: bytes,
        clock: Callable[[], float] = time.time,
        stream: IO[str] | None = None,
        stale_every: int = 100,
    ) -> None:
        if stale_every < 1:
            raise ValueError(f"stale_every must be at least 1, got {stale_every}")
        self.path = path
        self.records = 0
        self.failures = 0
        self.last_error: str | None = None
        self._key = fingerprint_key
        self._clock = clock
        self._stream = (stream or sys.stdout) if stdout else None
        self._stale_every = stale_every
        self._stale_counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._torn = False  # a failed write may have left part of a line in the file
        self._lost = 0  # records lost in the current failure burst
        self._failing_since: str | None = None
        self._closed = False
        if path is not None:
            try:
                self._open()
            except OSError as exc:
                # Not fatal: a full or read-only disk must not keep the daemon down. Each
                # record retries the open, so the log resumes once the path is fixed.
                self._fail(iso_time(clock()), exc, lost=0)

    # -- writing --------------------------------------------------------------------

    def record(self, event: str, **fields: Any) -> None:
        """Append one event to the evidence. Fields that could hold a value (by name, or not
        plain scalars) are refused as a caller's bug; a failed write is logged and counted, never
        raised, so a full disk cannot stop the serving of secrets."""
        if not event or not isinstance(event, str):
            raise ValueError(f"audit event name must be a non-empty string, got {event!r}")
        _check_fields(event, fields)
        with self._lock:
            self._record(event, fields)

    def stale_served(self, path: str, **fields: Any) -> None:
        """Recorded the 1st time and then every ``stale_every``-th time per path, with the count:
        an outage serving stale values thousands of times must not flood the log."""
        if "count" in fields:
            raise ValueError("stale_served counts by itself; do not pass 'count'")
        _check_fields("stale_served", fields)
        with self._lock:
            count = self._stale_counts.get(path, 0) + 1
            self._stale_counts[path] = count
            if count == 1 or count % self._stale_every == 0:
                self._record("stale_served", {"path": path, **fields, "count": count})

    def _record(self, event: str, fields: Mapping[str, Any]) -> None:
        self.records += 1
        if self._closed or (self.path is None and self._stream is None):
            return
        now = iso_time(self._clock())
        body = {k: v for k, v in fields.items() if v is not None}
        line = _encode({"time": now, "event": event, **body})
        if self._lost:
            # The log itself shows where evidence is missing.
            gap = {"time": now, "event": "audit_gap", "lost": self._lost}
            line = _encode({**gap, "since": self._failing_since}) + line
        error: Exception | None = None
        lost = 0
        if self.path is not None:
            try:
                self._append(line)
            except OSError as exc:
                error, lost, self._torn = exc, 1, True
        if self._stream is not None:
            try:
                self._stream.write(line.decode())
                self._stream.flush()
            except (OSError, ValueError) as exc:  # ValueError: a closed stream
                # Lost only if stdout is the only copy; the file is the evidence.
                error, lost = exc, 1 if self.path is None else lost
        if error is not None:
            self._fail(now, error, lost=lost)
        elif self._failing_since is not None:
            log.info(
                "audit log writable again",
                extra={"file": self._where(), "lost": self._lost, "since": self._failing_since},
            )
            self._lost, self._failing_since, self.last_error = 0, None, None

    def _append(self, line: bytes) -> None:
        self._reopen_if_moved()
        assert self._fd is not None
        if self._torn:
            line = b"\n" + line  # end the fragment, so it is one malformed line, not two
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self._torn = False

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # An existing file keeps its mode: an operator may have granted a log shipper read.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._fd, self._identity, self._torn = fd, (st.st_dev, st.st_ino), False

    def _reopen_if_moved(self) -> None:
        # logrotate (without copytruncate) renames the file; follow the path, not the inode.
        assert self.path is not None
        if self._fd is not None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == self._identity:
                return
            self._close_fd()
        self._open()

    def _fail(self, now: str, exc: Exception, *, lost: int) -> None:
        self.failures += 1
        self._lost += lost
        self.last_error = str(exc)
        if self._failing_since is None:
            self._failing_since = now
            log.warning(
                "cannot write the audit log; audit records are lost until it is writable "
                "again (check disk space and permissions of the file and its directory)",
                extra={"file": self._where(), "error": self.last_error},
            )

    def _where(self) -> str:
        return "stdout" if self.path is None else str(self.path)

    def close(self) -> None:
        """Stop writing at shutdown and release the file; later records are still checked and
        counted, but not written."""
        with self._lock:
            self._closed = True
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- fingerprints ---------------------------------------------------------------

    def fingerprint(self, data: Mapping[str, Any]) -> str:
        """Of a whole secret: same data and key, same fingerprint."""
        return _PREFIX + hmac.new(self._key, _canonical(dict(data)), "sha256").hexdigest()

    def fingerprint_value(self, path: str, field: str, value: Any) -> str:
        """Of one field. The label keeps it from ever equalling a whole-secret fingerprint
        (whose input always starts with ``{``); the path keeps equal passwords of two
        secrets from showing as equal."""
        message = _FIELD_LABEL + _canonical([path, field, value])
        return _PREFIX + hmac.new(self._key, message, "sha256").hexdigest()


def _canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _encode(record: dict[str, Any]) -> bytes:
    record["audit"] = True  # the file and the stdout copy carry the same line
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _check_fields(event: str, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        if name.lower() in FORBIDDEN_FIELDS:
            raise ValueError(
                f"audit event {event!r}: field {name!r} would hold a secret value; "
                "record a fingerprint (AuditLog.fingerprint_value) under another name"
            )
        if name in _RESERVED_FIELDS:
            raise ValueError(f"audit event {event!r}: field {name!r} is set by the audit log")
        # orjson would happily encode a dataclass such as backend.Secret, values and all.
        items = value if isinstance(value, list | tuple) else (value,)
        if not all(item is None or isinstance(item, _SCALARS) for item in items):
            raise TypeError(
                f"audit event {event!r}: field {name!r} is a {type(value).__name__}; "
                "pass strings, numbers, booleans or lists of them"
            )
