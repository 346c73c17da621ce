"""The snapshot's key: a 256-bit key from a file, in whichever of the usual forms it was made,
and a warning when others could read it."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from pathlib import Path

KEY_SIZE = 32

_KEY_FORMS = (
    "32 raw bytes, 64 hex characters, or base64 (standard or URL-safe) of 32 bytes; "
    "make one with: head -c 32 /dev/urandom > {path} && chmod 600 {path}"
)


class SnapshotKeyError(Exception):
    """The key file is missing, unreadable or not in one of the accepted forms."""


def load_key(path: Path, what: str = "snapshot key") -> bytes:
    """A 256-bit key from ``path`` in any accepted form (raw, hex, base64); SnapshotKeyError
    otherwise, naming the file and the forms but never echoing its content."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SnapshotKeyError(
            f"cannot read {what} file {path}: {exc.strerror or exc}; "
            f"it must hold {_KEY_FORMS.format(path=path)}"
        ) from exc
    key = _parse_key(raw)
    if key is None:
        # Never echo the content: it may be a real key in the wrong form.
        raise SnapshotKeyError(
            f"{what} file {path} ({len(raw)} bytes) is not a 256-bit key; "
            f"it must hold {_KEY_FORMS.format(path=path)}"
        )
    return key


def _parse_key(raw: bytes) -> bytes | None:
    if len(raw) == KEY_SIZE and not _is_printable_ascii(raw):
        return raw
    # A 32-byte file of printable ASCII is almost surely text (say `openssl rand -hex 16`);
    # random bytes are all printable with probability ~1e-14.
    try:
        text = raw.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(text) == 2 * KEY_SIZE:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(text)
    standard = text.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error:
        return None
    return key if len(key) == KEY_SIZE else None


def _is_printable_ascii(raw: bytes) -> bool:
    return all(0x20 <= b < 0x7F or b in b"\t\r\n" for b in raw)


def key_file_mode_problem(path: Path) -> str | None:
    """A message for the log when others may read or replace the key, else None.

    Read access for the file's group is accepted when the sidecar itself is in that group: a
    Kubernetes Secret volume with ``fsGroup`` always looks like that (root-owned, mode 0440,
    group = the pod's ``fsGroup``), and so does a key shared with a service group on a host."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot check permissions of snapshot key file {path}: {exc.strerror or exc}"
    mode = stat.S_IMODE(info.st_mode)
    group_read_by_us = mode & 0o070 == 0o040 and info.st_gid in _our_groups()
    if mode & 0o007 or (mode & 0o070 and not group_read_by_us):
        return (
            f"snapshot key file {path} has mode {mode:04o}: group/other can access it; "
            f"run: chmod 600 {path}"
        )
    return None


def _our_groups() -> set[int]:
    return {os.getgid(), os.getegid(), *os.getgroups()}
