"""``/fleetop/observed``: the leading operator's account of how fresh its view is.

A status is written only when it changes, so its age says nothing about whether it is still true. This
record does: when the operator last saw fleet and through which endpoint, or since when fleet has not
answered and which endpoints were tried. The leader writes it only when that changes (``heartbeat`` 0),
so it is current while its writer holds the leader key; a record with a ``heartbeat`` > 0 is rewritten
that often and judged by its age instead. ``fleetop status`` reads it.
"""

from __future__ import annotations

from pydantic import Field

from fleetop.models.status import ObservedModel


class FleetObservation(ObservedModel):
    endpoints: list[str] = Field(default_factory=list)
    """Every endpoint the operator was given, in order."""
    endpoint: str = ""
    """The one that answered last."""
    reachable: bool = True
    last_seen: str = ""
    """RFC 3339: when the last poll that fleet answered began ("" if never)."""
    lost_since: str = ""
    """RFC 3339: when fleet stopped answering ("" while it answers)."""
    error: str = ""
    tried: list[str] = Field(default_factory=list)
    """While lost: the endpoints tried without an answer."""


class OperatorObservation(ObservedModel):
    identity: str = ""
    time: str = ""
    """RFC 3339: when the leader wrote this record."""
    heartbeat: float = 0.0
    """Seconds between rewrites while nothing changes: a record much older than this has no writer."""
    fleet: FleetObservation = Field(default_factory=FleetObservation)
