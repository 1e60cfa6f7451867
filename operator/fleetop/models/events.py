"""Events: what the operator did or could not do, kept for about an hour on a lease."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from fleetop.models.status import ObservedModel


class Event(ObservedModel):
    kind: Literal["Service", "Proxy"] = "Service"
    name: str
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str
    time: str
    count: int = 1

    @field_validator("name", "message")
    @classmethod
    def _text(cls, value: str) -> str:
        """A name read from a key that is not UTF-8 (etcd keys are bytes) is shown with U+FFFD, so the
        event about it can still be written as JSON."""
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate outside the escaped-byte range
            raw = value.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace")
