"""The caller and admin tokens: who may ask this sidecar for secrets, and who may use /admin.

Each is read from its file when that exists, else generated and written there: the caller token
with mode 0640 (in a directory created 0750), so the application container can read it from a
shared volume; the admin token with mode 0600 (in a directory created 0700). The files are
watched: a token written there (a rotation) works at once, and the one it replaced keeps
working for a short grace, then stops.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("sidecar.callers")

MIN_LENGTH = 16


class CallerTokenError(Exception):
    """A token file cannot be read or created, or holds an unusable token: a configuration error
    reported at start (a rotation to a bad token is logged and ignored instead)."""

    pass


MAX_PREVIOUS = 8  # replaced tokens still in their grace, at most (oldest dropped first)


class CallerCheck:
    """Constant-time comparison of a presented token against the expected one and, during the
    grace after each rotation, the ones it replaced: every one is compared every time (no
    early exit)."""

    def __init__(self, token: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._expected = token.encode()
        self._previous: list[tuple[bytes, float]] = []  # (token, monotonic end of its grace)
        self._clock = clock

    def __call__(self, presented: str) -> bool:
        try:
            given = presented.encode()
        except UnicodeEncodeError:  # lone surrogates: invalid UTF-8 on the wire
            return False
        ok = hmac.compare_digest(given, self._expected)
        if self._previous:
            now = self._clock()
            if now >= self._previous[0][1]:  # graces end in the order they began
                self._previous = [(t, until) for t, until in self._previous if now < until]
            for token, _ in self._previous:
                ok = hmac.compare_digest(given, token) | ok
        return ok

    def rotate(self, token: str, *, grace: float) -> None:
        """``token`` is valid from now on; the current one for ``grace`` more seconds (and
        those replaced before it until their own graces end)."""
        if grace > 0:
            self._previous.append((self._expected, self._clock() + grace))
            del self._previous[:-MAX_PREVIOUS]
        self._expected = token.encode()


def _read(path: Path, key: str) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_LENGTH:
        raise CallerTokenError(
            f"{key} {path}: the token must be at least {MIN_LENGTH} characters; delete the file "
            "to have a random one generated"
        )
    if not (token.isascii() and token.isprintable()):
        raise CallerTokenError(
            f"{key} {path}: the token must be printable ASCII (no spaces or control characters)"
        )
    return token


def load_or_create(
    path: Path, mode: int = 0o640, *, key: str = "caller_token_file", dir_mode: int = 0o750
) -> str:
    """The token in ``path``; if there is no such file, a random one written there with ``mode``
    (its directory, if missing, made with ``dir_mode``). ``key`` names the setting in messages.
    Raises CallerTokenError; warns when the file is more open than ``mode``."""
    try:
        token = _read(path, key)
    except FileNotFoundError:
        return _create(path, mode, key, dir_mode)
    except OSError as exc:
        raise CallerTokenError(
            f"{key} {path}: cannot read it ({exc.strerror}); fix its permissions or point "
            f"{key} elsewhere"
        ) from None
    except UnicodeDecodeError:
        raise CallerTokenError(f"{key} {path}: the token is not text") from None
    _warn_if_open(path, mode, key)
    log.info("token loaded", extra={"file": str(path)})
    return token


def _warn_if_open(path: Path, mode: int, key: str) -> None:
    """The file may be no more open than the mode we would create it with."""
    try:
        actual = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    extra = actual & ~mode & 0o077
    if extra:
        log.warning(
            "token file is readable by more users than it should be",
            extra={
                "file": str(path),
                "key": key,
                "mode": f"{actual:04o}",
                "fix": f"chmod {mode:o}",
            },
        )


def _create(path: Path, mode: int, key: str, dir_mode: int) -> str:
    token = secrets.token_urlsafe(32)
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, dir_mode)  # umask must not widen what we promise
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        # Another process created it between our read and our write: theirs wins.
        return load_or_create(path, mode, key=key, dir_mode=dir_mode)
    except OSError as exc:
        raise CallerTokenError(
            f"{key} {path}: cannot create it ({exc.strerror}); make its directory writable or "
            f"point {key} elsewhere"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), mode)  # umask must not widen or narrow what we promise
        handle.write(token + "\n")
    log.info("token generated", extra={"file": str(path), "mode": f"{mode:04o}"})
    return token


class TokenFile:
    """A token file, watched: when its content changes, the new token is accepted at once and
    the old one for ``grace`` seconds. A file that disappears or holds something invalid keeps
    the current token (and says so in the log)."""

    def __init__(
        self,
        path: Path,
        check: CallerCheck,
        token: str,
        *,
        key: str,
        grace: float,
        on_rotate: Callable[[], None] | None = None,
        taken: Callable[[str], bool] = lambda token: False,
    ) -> None:
        """``taken(token)``: the token is already another file's (the admin token may never
        become the caller token, nor the other way round)."""
        self._taken = taken
        self.path = path
        self.check = check
        self._token = token
        self._key = key
        self._grace = grace
        self._on_rotate = on_rotate
        self._seen = self._signature()
        self._complained: object = None

    def _signature(self) -> object:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def poll(self) -> bool:
        """Look at the file once; True when a new token was adopted."""
        signature = self._signature()
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            token = _read(self.path, self._key)
        except (OSError, UnicodeDecodeError, CallerTokenError) as exc:
            if self._complained != signature:
                self._complained = signature
                log.error(
                    "token file unreadable or invalid; the current token stays valid",
                    extra={"file": str(self.path), "key": self._key, "problem": _why(exc)},
                )
            return False
        if hmac.compare_digest(token.encode(), self._token.encode()):
            return False
        if self._taken(token):
            log.error(
                "token file holds the other token (caller and admin tokens must differ); the "
                "current token stays valid",
                extra={"file": str(self.path), "key": self._key},
            )
            return False
        self._token = token
        self.check.rotate(token, grace=self._grace)
        log.warning(
            "token rotated: the new one works now, the previous one for the grace period",
            extra={"file": str(self.path), "key": self._key, "grace_seconds": self._grace},
        )
        if self._on_rotate is not None:
            self._on_rotate()
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Forever: ``poll`` the file every ``interval`` seconds (a background task)."""
        while True:
            await asyncio.sleep(interval)
            self.poll()


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the file is gone"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        return "the token is not text"
    return str(exc)
