"""Events: what the operator did or could not do, kept for about an hour on a lease."""

from __future__ import annotations

from typing import Literal

from fleetop.models.status import ObservedModel


class Event(ObservedModel):
    kind: Literal["Service", "Proxy"] = "Service"
    name: str
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str
    time: str
    count: int = 1
