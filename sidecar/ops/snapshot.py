"""Encrypted on-disk snapshot of the cache, so a restarted sidecar can serve stale values
while the store is down.

Layout (integers big-endian)::

    header, 62 bytes
      magic        8    b"\\x89SCSNAP\\n"
      version      u16  FORMAT_VERSION (2; version 1 files are still read)
      written_at   f64  wall-clock epoch seconds
      count        u32  number of records
      salt         16   random per file; HKDF-SHA256(key, salt) gives the file's AES and MAC keys
      key_check    8    HMAC-SHA256(key, b"secrets-sidecar snapshot key check")[:8]
      header_mac   16   HMAC-SHA256(file MAC key, the 46 bytes above)[:16]
    record, count times
      meta_len u32, meta   plaintext, orjson: ["secret", path, version_key] or ["mounts"]
                           (version 1: [path, version_key]; the mount table was a record
                           whose path was "\\x00mounts")
      box_len  u32, box    nonce(12) || AES-256-GCM ciphertext || tag(16) of
                           orjson {data, version, created_time, kv_version, class,
                                   confirmed_at, custom_metadata, lease_duration}
                           or, for the mount table, {mounts: [...]}
                           AAD = b"secrets-sidecar snapshot v1\\0" || u32 record index || meta

No secret value is ever in plaintext. The authenticated header count plus the record index in
the AAD mean records cannot be dropped, reordered, duplicated or moved between paths unnoticed.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sidecar.ops.files import fsync_directory, remove_stale_temps
from sidecar.ops.snapshot_key import KEY_SIZE as _KEY_SIZE
from sidecar.ops.snapshot_key import SnapshotKeyError, key_file_mode_problem, load_key
from sidecar.ops.snapshot_records import (
    SnapshotEntry,
    decode_mounts,
    decode_secret,
    secret_record,
)

__all__ = [
    "FORMAT_VERSION",
    "LoadResult",
    "SnapshotEntry",
    "SnapshotKeyError",
    "describe",
    "key_file_mode_problem",
    "load_key",
    "read_snapshot",
    "write_snapshot",
]

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_V1_MOUNTS_PATH = "\x00mounts"  # version 1 kept the mount table as a record of this path

_MAGIC = b"\x89SCSNAP\n"  # high byte and newline catch 7-bit and text-mode mangling, as PNG does
_HEAD = struct.Struct(">8sHdI16s8s")
_MAC_SIZE = 16
_HEADER_SIZE = _HEAD.size + _MAC_SIZE
_LEN = struct.Struct(">I")
_INDEX = struct.Struct(">I")
_NONCE_SIZE = 12
_TAG_SIZE = 16
_LABEL = b"secrets-sidecar snapshot v1\x00"
_KEY_CHECK_LABEL = b"secrets-sidecar snapshot key check"


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a snapshot yielded: the entries and mount table that could be authenticated, and what
    could not be used, so a damaged file makes a partial warm start rather than a failure."""

    entries: list[SnapshotEntry]
    skipped: int  # records present but not loadable (tampered, corrupt, wrong key)
    problem: str | None  # None when the whole file loaded cleanly
    written_at: float | None  # from the header, when it could be authenticated
    mounts: list[dict[str, Any]] = field(default_factory=list)  # the mount table, if kept
    format_version: int | None = None


def _require_key(key: bytes) -> None:
    if len(key) != _KEY_SIZE:
        raise ValueError(f"snapshot key must be {_KEY_SIZE} bytes, got {len(key)}")


def _key_check(key: bytes) -> bytes:
    return hmac.new(key, _KEY_CHECK_LABEL, "sha256").digest()[:8]


def _file_keys(key: bytes, salt: bytes) -> tuple[AESGCM, bytes]:
    # A fresh key per file: random 96-bit nonces are only safe for ~2**32 messages per key,
    # which one long-lived key would reach writing tens of thousands of entries a minute.
    # It also ties each record to its file, so records cannot be spliced between snapshots.
    # Imported here: a sidecar without a snapshot key never loads cryptography (~7 MB RSS).
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=_LABEL).derive(key)
    return AESGCM(derived[:32]), derived[32:]


def _header_mac(mac_key: bytes, head: bytes) -> bytes:
    return hmac.new(mac_key, head, "sha256").digest()[:_MAC_SIZE]


# -- write ----------------------------------------------------------------------------


def write_snapshot(
    path: Path,
    key: bytes,
    entries: Iterable[SnapshotEntry],
    *,
    mounts: list[dict[str, Any]] | None = None,
    now: float | None = None,
) -> int:
    """Atomically replace ``path`` with a snapshot of ``entries`` (and the store's mount table,
    ``mounts``); return how many entries were written.

    Entries whose data cannot be encoded as JSON are left out. On any failure the temp file
    is removed and ``path`` is untouched; an OSError from the final directory fsync means the
    new snapshot is in place but may not survive a power loss.
    """
    _require_key(key)
    salt = os.urandom(16)
    aead, mac_key = _file_keys(key, salt)
    written_at = time.time() if now is None else now
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(_HEADER_SIZE))  # placeholder: the count is known only at the end
            count = 0
            for entry in entries:
                record = _seal(aead, count, *secret_record(entry))
                if record is not None:
                    f.write(record)
                    count += 1
            records = count
            if mounts:
                record = _seal(aead, records, ["mounts"], {"mounts": mounts})
                if record is not None:
                    f.write(record)
                    records += 1
            head = _HEAD.pack(_MAGIC, FORMAT_VERSION, written_at, records, salt, _key_check(key))
            f.seek(0)
            f.write(head + _header_mac(mac_key, head))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)
    remove_stale_temps(path)
    return count


def _seal(aead: AESGCM, index: int, meta_fields: list[Any], fields: dict[str, Any]) -> bytes | None:
    try:
        meta = orjson.dumps(meta_fields)
        payload = orjson.dumps(fields)
    except orjson.JSONEncodeError:
        return None
    nonce = os.urandom(_NONCE_SIZE)
    box = nonce + aead.encrypt(nonce, payload, _LABEL + _INDEX.pack(index) + meta)
    return _LEN.pack(len(meta)) + meta + _LEN.pack(len(box)) + box


# -- read -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    version: int
    written_at: float
    count: int
    salt: bytes
    key_check: bytes
    signed: bytes  # the bytes the header MAC covers
    mac: bytes


def _parse_header(data: bytes) -> _Header | str:
    """The header, or why there is none."""
    if not data:
        return "empty file"
    if data[: len(_MAGIC)] != _MAGIC[: len(data)]:
        return "not a sidecar snapshot (bad magic)"
    if len(data) < len(_MAGIC) + 2:
        return "truncated inside the header"
    (version,) = struct.unpack_from(">H", data, len(_MAGIC))
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        return f"unsupported snapshot format version {version} (this sidecar reads {readable})"
    if len(data) < _HEADER_SIZE:
        return "truncated inside the header"
    _, _, written_at, count, salt, key_check = _HEAD.unpack_from(data)
    return _Header(
        version,
        written_at,
        count,
        salt,
        key_check,
        data[: _HEAD.size],
        data[_HEAD.size : _HEADER_SIZE],
    )


def _split_records(data: bytes, limit: int | None) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """The (meta, box) pairs framed in ``data``, and what stopped the walk early, if anything."""
    records: list[tuple[bytes, bytes]] = []
    offset = _HEADER_SIZE
    while offset < len(data) and (limit is None or len(records) < limit):
        parts: list[bytes] = []
        for _ in range(2):
            if offset + _LEN.size > len(data):
                break
            (size,) = _LEN.unpack_from(data, offset)
            offset += _LEN.size
            if offset + size > len(data):
                break
            parts.append(data[offset : offset + size])
            offset += size
        if len(parts) < 2:
            # A corrupted length field reads the same as a cut: both run past the end.
            return records, f"truncated or corrupt inside record {len(records) + 1}"
        records.append((parts[0], parts[1]))
    if offset < len(data):
        return records, f"{len(data) - offset} unexpected bytes after the last record"
    return records, None


def read_snapshot(path: Path, key: bytes) -> LoadResult:
    """Whatever can be recovered from ``path``; never raises for a bad or missing file."""
    _require_key(key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return LoadResult([], 0, None, None)
    except OSError as exc:
        return LoadResult([], 0, f"cannot read snapshot: {exc.strerror or exc}", None)
    header = _parse_header(data)
    if isinstance(header, str):
        return LoadResult([], 0, header, None)
    problems: list[str] = []
    if not hmac.compare_digest(header.key_check, _key_check(key)):
        records, _ = _split_records(data, None)
        return LoadResult(
            [], len(records), "wrong key: the snapshot was written with another key", None
        )
    aead, mac_key = _file_keys(key, header.salt)
    authentic = hmac.compare_digest(header.mac, _header_mac(mac_key, header.signed))
    if not authentic:
        problems.append("header failed authentication (corrupt or tampered)")
    records, framing = _split_records(data, header.count if authentic else None)
    if framing is not None:
        problems.append(framing)
    elif authentic and len(records) < header.count:
        problems.append(f"truncated: {len(records)} of {header.count} records present")
    entries: list[SnapshotEntry] = []
    mounts: list[dict[str, Any]] = []
    skipped = 0
    for index, (meta, box) in enumerate(records):
        opened = _open(aead, index, meta, box, header.version)
        if isinstance(opened, SnapshotEntry):
            entries.append(opened)
        elif opened is not None:
            mounts = opened
        else:
            skipped += 1
    if skipped:
        problems.append(f"{skipped} record(s) failed authentication (corrupt or tampered)")
    return LoadResult(
        entries,
        skipped,
        "; ".join(problems) or None,
        header.written_at if authentic else None,
        mounts,
        header.version,
    )


def _open(
    aead: AESGCM, index: int, meta: bytes, box: bytes, version: int
) -> SnapshotEntry | list[dict[str, Any]] | None:
    """A secret, the mount table, or None for a record that cannot be used."""
    from cryptography.exceptions import InvalidTag

    if len(box) < _NONCE_SIZE + _TAG_SIZE:
        return None
    try:
        payload = aead.decrypt(
            box[:_NONCE_SIZE], box[_NONCE_SIZE:], _LABEL + _INDEX.pack(index) + meta
        )
        fields, body = orjson.loads(meta), orjson.loads(payload)
        if not isinstance(fields, list):
            return None
        if version == 1:  # [path, version_key]; the mount table under a reserved path
            fields = ["mounts"] if fields[:1] == [_V1_MOUNTS_PATH] else ["secret", *fields]
        if fields == ["mounts"]:
            return decode_mounts(body)
        if fields[:1] == ["secret"]:
            return decode_secret(fields[1:], body)
        return None
    except (InvalidTag, orjson.JSONDecodeError, ValueError, TypeError):
        return None


# -- inspect --------------------------------------------------------------------------


def describe(path: Path) -> dict[str, Any]:
    """Header facts for people, without the key (so unverified); ``{"problem": ...}`` if none."""
    try:
        with path.open("rb") as f:
            data = f.read(_HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        return {"problem": f"cannot read snapshot: {exc.strerror or exc}"}
    header = _parse_header(data)
    if isinstance(header, str):
        return {"problem": header, "size": size}
    return {
        "format_version": header.version,
        "written_at": header.written_at,
        "entries": header.count,
        "size": size,
        "key_check": header.key_check.hex(),  # tells which key file it needs, reveals nothing
    }
