"""Durations as people write them: ``500ms``, ``30s``, ``15m``, ``1h30m`` or a number of seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)
HINT = "e.g. 500ms, 30s, 15m, 1h, 1h30m, or a number of seconds"


def parse_duration(value: object) -> float:
    """Seconds as a float; raises ValueError with a message fit for a config error."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({HINT}), got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError(f"expected a duration ({HINT}), got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration ({HINT})")
    if seconds < 0:
        raise ValueError(f"must not be negative (valid: 0 or more, {HINT}), got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    if not text.isascii():  # float() and \d take other scripts' digits; people write 0-9
        raise ValueError(f"expected a duration ({HINT}), got {text!r}")
    try:
        return float(text)  # before the sign is split off, so "--5" is not read as 5
    except ValueError:
        pass
    sign = 1.0
    if text.startswith("-"):
        sign, text = -1.0, text[1:]
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"expected a duration ({HINT}), got {text!r}")
    return sign * total


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.5 -> '500ms', 90 -> '1m30s', 3600 -> '1h'."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds!r}s"  # repr is exact and never exponential here (|x| < 2**52)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
