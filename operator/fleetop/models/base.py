"""The strict base model and the small value types every spec shares.

pydantic's default mode accepts ``"500"`` for an int; specs are a public contract typed by hand into
``etcdctl put``, so coercion would hide mistakes. Everything here is strict, camelCase, and rejects
unknown fields.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

from fleetop.timefmt import DURATION_PATTERN, parse_seconds

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_RE = re.compile(NAME_PATTERN)
MAX_NAME = 63


class StrictModel(BaseModel):
    """Strict, camelCase, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=False,
    )


def parse_duration(value: Any) -> float:
    """``10``, ``2.5``, ``"10s"``, ``"500ms"``, ``"1m"`` → seconds. Booleans and negatives are refused."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '10s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_seconds(value)
    else:
        raise ValueError("a duration must be a number of seconds or a string like '10s'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds → the shortest exact string: ``10s``, ``500ms``, ``1.5s``."""
    if seconds and seconds < 1 and float(round(seconds * 1000)) == seconds * 1000:
        return f"{round(seconds * 1000)}ms"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or a string like '10s', '500ms', '1m'",
        }
    ),
]


def shown(value: str, limit: int = 80) -> str:
    """``value`` for an error message: at most ``limit`` characters (a hostile value can be huge)."""
    return value if len(value) <= limit else f"{value[: limit - 1]}… ({len(value)} characters)"


def duration_between(low: float, high: float, what: str) -> tuple[AfterValidator, WithJsonSchema]:
    """Metadata bounding a :data:`Duration` to ``low``..``high`` seconds, in its JSON Schema too:
    ``Annotated[Duration, *duration_between(1, 60, "interval")]``."""

    def check(seconds: float) -> float:
        if not low <= seconds <= high:
            raise ValueError(f"{what} must be between {format_duration(low)} and {format_duration(high)}")
        return seconds

    schema = WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": low, "maximum": high},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": (
                f"seconds, or a string like '10s', '500ms', '1m'; from {format_duration(low)}"
                f" to {format_duration(high)}"
            ),
        }
    )
    return AfterValidator(check), schema


def check_name(value: str, what: str = "name") -> str:
    """Names become unit names and config identifiers: ``[a-z0-9]([-a-z0-9]*[a-z0-9])?``, ≤ 63."""
    if not value or len(value) > MAX_NAME or not NAME_RE.match(value):
        raise ValueError(
            f"{what} {shown(value)!r} must be 1-63 lowercase letters, digits or '-', starting and ending"
            " with a letter or digit"
        )
    return value


def check_line(value: str, what: str) -> str:
    """A value that ends up on one line of a unit file or a config: no newlines or NULs."""
    if any(c in value for c in "\n\r\x00"):
        raise ValueError(f"{what} must not contain newlines or NUL characters")
    return value
