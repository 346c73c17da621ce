"""parse_duration / format_duration: the spellings people write in config files."""

from __future__ import annotations

import math

import pytest

from sidecar.core.durations import HINT, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("2h15m10s", 2 * 3600 + 15 * 60 + 10),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("0s", 0.0),
        ("0", 0.0),
        ("45", 45.0),
        ("2.5", 2.5),
        ("  30s  ", 30.0),
    ],
)
def test_parse_accepts_written_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("number", "seconds"), [(0, 0.0), (30, 30.0), (1.5, 1.5), (0.25, 0.25)])
def test_parse_accepts_plain_numbers_as_seconds(number: float, seconds: float) -> None:
    result = parse_duration(number)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize("value", [-1, -0.5, "-1", "-30s", "-1h30m", "-500ms"])
def test_parse_rejects_negative(value: object) -> None:
    with pytest.raises(ValueError, match="must not be negative") as info:
        parse_duration(value)
    assert HINT in str(info.value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_rejects_bools(value: bool) -> None:
    # bool is a subclass of int: without a check, `true` would silently mean 1 second
    with pytest.raises(ValueError, match="expected a duration") as info:
        parse_duration(value)
    assert HINT in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "30 s",
        "30x",
        "s",
        "1h30",
        "h1",
        "30s garbage",
        "1,5s",
        "--5",
        "-",
        "1h-30m",
        "30S",
    ],
)
def test_parse_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError, match="expected a duration") as info:
        parse_duration(value)
    message = str(info.value)
    for form in ("500ms", "30s", "15m", "1h", "1h30m", "number of seconds"):
        assert form in message


@pytest.mark.parametrize("value", [None, [30], {"s": 30}, b"30s"])
def test_parse_rejects_other_types(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration") as info:
        parse_duration(value)
    assert type(value).__name__ in str(info.value)


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, "inf", "-inf", "nan", "infinity", "1e400"]
)
def test_parse_rejects_non_finite(value: object) -> None:
    with pytest.raises(ValueError, match="finite") as info:
        parse_duration(value)
    assert HINT in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.05, "50ms"),
        (1, "1s"),
        (30, "30s"),
        (90, "1m30s"),
        (900, "15m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "1d"),
        (90061, "1d1h1m1s"),
        (1.5, "1.5s"),
    ],
)
def test_format_shortest_spelling(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "seconds",
    [
        *(0, 0.001, 0.05, 0.25, 0.5, 0.999, 1, 1.5, 2.25, 30, 59, 61, 90, 900, 3599, 3600),
        *(5400, 86399, 86400, 90061, 604800, 100.125, 12345.678, 1234567.5),
    ],
)
def test_format_round_trips(seconds: float) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("text", ["500ms", "30s", "15m", "1h", "1h30m", "1d", "1m30s"])
def test_parse_then_format_is_identity_for_canonical_spellings(text: str) -> None:
    assert format_duration(parse_duration(text)) == text
