"""The snapshot's typed records, both ways: a cached value as written, and what a reader accepts
back. Authentic bytes may still come from a buggy or older writer, so every field is checked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sidecar.store.interface import Secret

MAX_LEASE_ID = 1024  # as the store layer accepts them


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One cached value as kept across restarts, with what deciding its restore needs: its class
    when saved, and when the store last confirmed it."""

    version_key: int | None  # the cache key's version part: None = "latest", N = that version
    secret: Secret
    class_name: str
    confirmed_at: float  # wall-clock epoch seconds when the store last confirmed the value
    issued_by: str | None = None  # a leased credential: digest of the token whose lease it is


def secret_record(entry: SnapshotEntry) -> tuple[list[Any], dict[str, Any]]:
    """A cached value as a record: its metadata (kind, path, version key) and its payload."""
    secret = entry.secret
    return ["secret", secret.path, entry.version_key], {
        "data": dict(secret.data),
        "version": secret.version,
        "created_time": secret.created_time,
        "kv_version": secret.kv_version,
        "class": entry.class_name,
        "confirmed_at": entry.confirmed_at,
        "custom_metadata": secret.custom_metadata,
        "lease_duration": secret.lease_duration,
        # a leased credential: its lease, so a restart within it reuses the credential
        **(
            {"lease_id": secret.lease_id, "renewable": secret.renewable, "by": entry.issued_by}
            if secret.lease_id
            else {}
        ),
    }


def decode_mounts(payload: Any) -> list[dict[str, Any]]:
    """The mount table record's payload (format 1 stored it as a secret-shaped record)."""
    if isinstance(payload, dict) and "data" in payload:  # version 1: a secret-shaped record
        payload = payload["data"]
    mounts = payload.get("mounts") if isinstance(payload, dict) else None
    if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
        raise ValueError("bad mount table")
    return mounts


def decode_secret(meta: Any, payload: Any) -> SnapshotEntry:
    """Authentic bytes may still come from a buggy or different writer: check the shape."""
    if not (isinstance(meta, list) and len(meta) == 2 and isinstance(payload, dict)):
        raise ValueError("bad record shape")
    path, version_key = meta
    confirmed_at = payload.get("confirmed_at")
    if not (
        isinstance(path, str)
        and is_optional_int(version_key)
        and isinstance(payload.get("data"), dict)
        and is_optional_int(payload.get("version"))
        and isinstance(payload.get("created_time"), str | None)
        and type(payload.get("kv_version")) is int
        and isinstance(payload.get("class"), str)
        and isinstance(confirmed_at, int | float)
        and not isinstance(confirmed_at, bool)
        and math.isfinite(confirmed_at)
    ):
        raise ValueError("bad record fields")
    custom = payload.get("custom_metadata")
    lease = payload.get("lease_duration", 0)
    lease_id, renewable = payload.get("lease_id"), payload.get("renewable", False)
    if lease_id is not None and not (
        isinstance(lease_id, str)
        and 0 < len(lease_id) <= MAX_LEASE_ID
        and lease_id.isprintable()
        and not any(c.isspace() for c in lease_id)
        and type(lease) is int
        and 0 < lease <= 10 * 365 * 86400
        and isinstance(renewable, bool)
    ):
        raise ValueError("bad lease fields")
    issued_by = payload.get("by")
    if issued_by is not None and not (
        isinstance(issued_by, str) and len(issued_by) == 16 and issued_by.isalnum()
    ):
        raise ValueError("bad lease fields")
    secret = Secret(
        path,
        payload["data"],
        payload["version"],
        payload["created_time"],
        payload["kv_version"],
        custom_metadata=custom if isinstance(custom, dict) else None,
        lease_duration=lease if type(lease) is int else 0,
        lease_id=lease_id,
        renewable=bool(renewable) if lease_id is not None else False,
    )
    return SnapshotEntry(version_key, secret, payload["class"], float(confirmed_at), issued_by)


def is_optional_int(value: object) -> bool:
    """None or a real int (not a bool): a version as the writer writes it."""
    return value is None or type(value) is int
