"""Durations and timestamps: each format's one reader and writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleetop.errors import InputError
from fleetop.timefmt import flag_seconds, parse_go_duration, parse_rfc3339, parse_seconds, rfc3339


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("2.5", 2.5), ("10s", 10.0), (" 10 s ", 10.0), ("500ms", 0.5), ("1m", 60.0),
     ("2min", 120.0), ("2h", 7200.0), ("0", 0.0)],
)  # fmt: skip
def test_spec_durations(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1s", "1m30s", "1e3", ".5s", "10 sec", "5d"])
def test_spec_durations_refuse_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_seconds(text)


def test_flag_seconds_names_the_flag() -> None:
    assert flag_seconds("500ms", "--interval") == 0.5
    with pytest.raises(InputError, match=r"^--ttl: 'x' is not a duration"):
        flag_seconds("x", "--ttl")
    with pytest.raises(InputError, match=r"^--interval: must be positive"):
        flag_seconds("0s", "--interval")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5", 5.0), ("2.5", 2.5), (" 5s ", 5.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0),
     ("1.5h", 5400.0), (".5s", 0.5), ("250us", 250e-6), ("10ns", 10e-9)],
)  # fmt: skip
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 s", "1min", "1m 30s", "s", "5x"])
def test_go_durations_refuse_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1714564800, "2024-05-01T12:00:00Z"),
        (1714564800.999, "2024-05-01T12:00:00Z"),
    ],
)
def test_rfc3339_writes_utc_to_the_second(seconds: float, text: str) -> None:
    assert rfc3339(seconds) == text
    assert parse_rfc3339(text).timestamp() == int(seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.250Z", datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2024-05-01T12:00:00", "2024-13-01T00:00:00Z"])
def test_parse_rfc3339_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)
