"""Store paths as they cross the HTTP boundary: checked once, here, before any rule or store sees
them. Pure: no I/O.

A path is later pasted into a store URL, matched against the allow-list rules, used as a cache
key and written to the audit log, so it must mean the same thing to all of them: no traversal,
no empty segments, and only characters that need no encoding in a URL path. ``?``, ``#`` and
``%`` in particular would start a query, a fragment or an escape in the store request.
"""

from __future__ import annotations

import string

MAX_PATH_BYTES = 512
# Unreserved URL characters plus a few sub-delimiters that KV key names commonly use. Nothing
# here changes the meaning of a URL when pasted into its path.
SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.~/@+=,:")
SAFE_DESCRIPTION = "letters, digits and - _ . ~ / @ + = , :"
# The store's own backends at these mounts are never KV secrets; the sidecar reads KV only.
RESERVED_MOUNTS = ("sys", "auth", "identity", "cubbyhole")
# KV v2 puts one of these after the mount in the store's API path (``secret/data/app/db``).
KV2_ACTIONS = ("data", "metadata")


class InvalidPath(ValueError):
    """The path is malformed; the message says how and what is allowed."""


def check_path(path: str, *, what: str = "the secret path") -> str:
    """``path`` if every part of it is safe to match, cache, log and paste into a store URL."""
    if not path:
        raise InvalidPath(f"{what} is empty; use /secrets/<mount>/<path>")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise InvalidPath(f"{what} contains NUL or control characters")
    if "\\" in path:
        raise InvalidPath(f"{what} contains a backslash")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath(
                f"{what} contains an empty, '.' or '..' segment "
                "(no traversal, no '//', no leading or trailing '/')"
            )
    bad = next((ch for ch in path if ch not in SAFE_CHARACTERS), None)
    if bad is not None:
        raise InvalidPath(
            f"{what} contains {_show(bad)}: store paths may contain only {SAFE_DESCRIPTION} "
            "(no ?, #, % or spaces, and nothing still percent-encoded after one decoding)"
        )
    return path


def check_kv_path(path: str, *, what: str = "the secret path") -> str:
    """A path the sidecar reads with its own identity: safe, and not one of the store's system
    backends (``sys/``, ``auth/``, ``identity/``, ``cubbyhole/``), which are never KV."""
    check_path(path, what=what)
    first = path.split("/", 1)[0]
    if first in RESERVED_MOUNTS:
        raise InvalidPath(
            f"{what} starts with {first + '/'!r}, the store's own {first} backend: the sidecar "
            "serves KV secrets only"
        )
    return path


def kv_candidates(api_path: str, actions: tuple[str, ...] = KV2_ACTIONS) -> list[str]:
    """The secret paths a Vault API path can name before its mount is known: itself (KV v1),
    or itself without one action segment after the mount (KV v2: ``data``, ``metadata``, and
    for writes ``delete``, ``destroy``...). Used to ask the rules before the store (a path no
    candidate of which is allowed never causes a store request) and to drop what a write
    through the sidecar made stale."""
    parts = api_path.split("/")
    candidates = [api_path]
    for i in range(1, len(parts) - 1):
        if parts[i] in actions:
            candidates.append("/".join(parts[:i] + parts[i + 1 :]))
    return candidates


def _show(ch: str) -> str:
    if ch == " ":
        return "a space"
    if ch.isprintable() and ch.isascii():
        return repr(ch)
    return f"the character U+{ord(ch):04X}"
