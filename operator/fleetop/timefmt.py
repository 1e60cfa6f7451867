"""Durations and timestamps as fleetop reads and writes them, each format in one place.

- spec durations: ``10``, ``"10s"``, ``"500ms"``, ``"1m"``, ``"2h"`` (specs, the ``register`` flags):
  :func:`parse_seconds`, :func:`flag_seconds`, :data:`DURATION_PATTERN` for JSON Schema;
- etcdctl durations, Go's syntax: ``"5s"``, ``"500ms"``, ``"1m30s"`` (the etcd connection flags):
  :func:`parse_go_duration`;
- RFC 3339 timestamps in UTC to the second, ``2024-05-01T12:00:00Z`` (status, events, agent
  reports): :func:`rfc3339` and :func:`parse_rfc3339`.

Standard library only: the sidekick and the models import it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fleetop.errors import InputError

DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|min|h)?\s*$"
"""A spec duration written as a string (the JSON Schema ``pattern``)."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(text: str) -> float:
    """A spec duration → seconds: ``"10"``, ``"2.5"``, ``"10s"``, ``"500ms"``, ``"1m"``, ``"2h"``
    (one number, one optional unit). ValueError names the text."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 10, '10s', '500ms', '1m')")
    return float(match.group(1)) * _UNITS[match.group(2)]


def flag_seconds(value: str, flag: str) -> float:
    """A positive spec duration given to ``flag``; :class:`InputError` naming the flag otherwise."""
    try:
        seconds = parse_seconds(value)
    except ValueError as exc:
        raise InputError(str(exc), where=flag) from None
    if seconds <= 0:
        raise InputError("must be positive", where=flag)
    return seconds


def parse_go_duration(text: str) -> float:
    """Seconds from ``"5"``, ``"2.5"``, ``"500ms"``, ``"1m30s"`` (Go's duration syntax, as etcdctl
    reads its flags; a bare number is seconds). ValueError names the text."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        parts = _GO_PART.findall(stripped)
        if not parts or "".join(n + u for n, u in parts) != stripped:
            raise ValueError(f"{text!r} is not a duration (e.g. 5s, 500ms, 1m)") from None
        return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def rfc3339(seconds: float) -> str:
    """``2024-05-01T12:00:00Z`` from a UNIX time (the fraction of a second is dropped)."""
    return datetime.fromtimestamp(int(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 timestamp (``Z`` or an offset; a fraction of a second is kept) → an aware datetime.
    ValueError for anything else, a time without its offset included."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return when
