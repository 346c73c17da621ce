"""The caller token: who may ask this sidecar for secrets.

Loaded from ``caller_token_file`` when it exists, else generated and written there (mode 0640),
so the application container can read it from a shared in-memory volume.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("sidecar.callers")

MIN_LENGTH = 16


class CallerTokenError(Exception):
    pass


def load_or_create(path: Path, mode: int = 0o640) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return _create(path, mode)
    except OSError as exc:
        raise CallerTokenError(
            f"caller_token_file {path}: cannot read it ({exc.strerror}); fix its permissions "
            "or point caller_token_file elsewhere"
        ) from None
    if len(token) < MIN_LENGTH:
        raise CallerTokenError(
            f"caller_token_file {path}: the token must be at least {MIN_LENGTH} characters; "
            "delete the file to have a random one generated"
        )
    log.info("token loaded", extra={"file": str(path)})
    return token


def _create(path: Path, mode: int) -> str:
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        # Another process created it between our read and our write: theirs wins.
        return load_or_create(path, mode)
    except OSError as exc:
        raise CallerTokenError(
            f"caller_token_file {path}: cannot create it ({exc.strerror}); make its directory "
            "writable or point caller_token_file elsewhere"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), mode)  # umask must not widen or narrow what we promise
        handle.write(token + "\n")
    log.info("token generated", extra={"file": str(path), "mode": f"{mode:04o}"})
    return token


class CallerCheck:
    """Constant-time comparison of a presented token against the expected one."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def __call__(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._expected)
