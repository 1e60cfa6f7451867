"""The leader's heartbeat of what it can see, ``/fleetop/observed`` (see :mod:`fleetop.models.observed`).

Written only while leading and fenced on the leader key like every status write, and only when what it
says changes (fleet lost or found again, another endpoint, a new leader): a quiet cluster costs etcd no
write. Readers know the record is current while its writer holds the leader key (``heartbeat`` 0 says
so); with a ``heartbeat`` > 0 the record is also rewritten that often, and readers judge it by its age.
Building the record is a pure function of the fleet informer's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fleetop.controller.runtime.informers import FleetInformer, FleetLoss
from fleetop.errors import FleetopError, NotLeader
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.models.observed import FleetObservation, OperatorObservation
from fleetop.timefmt import rfc3339

log = logging.getLogger(__name__)

HEARTBEAT = 0.0
"""Seconds between rewrites of an unchanged record; 0: never (current while its writer leads)."""
CHECK_EVERY = 0.5
"""Seconds between looks at the informer: how late a loss or a recovery is recorded at most."""


def observation(
    identity: str,
    endpoints: tuple[str, ...],
    endpoint: str,
    seen_at: float | None,
    loss: FleetLoss | None,
    now: float,
    heartbeat: float = HEARTBEAT,
) -> OperatorObservation:
    """The record for one moment (pure)."""
    fleet = FleetObservation(
        endpoints=list(endpoints),
        endpoint=endpoint,
        reachable=loss is None,
        last_seen=rfc3339(seen_at) if seen_at is not None else "",
        lost_since=rfc3339(loss.since) if loss is not None else "",
        error=loss.error if loss is not None else "",
        tried=list(loss.endpoints) if loss is not None else [],
    )
    return OperatorObservation(identity=identity, time=rfc3339(now), heartbeat=heartbeat, fleet=fleet)


class ObservationWriter:
    """Keeps ``/fleetop/observed`` current while this process leads. ``run()`` until cancelled."""

    def __init__(
        self,
        etcd: Etcd,
        keys: Keys,
        fleet: FleetInformer,
        identity: str,
        fence: Callable[[], tuple[str, bytes]],
        *,
        heartbeat: float = HEARTBEAT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.etcd = etcd
        self.key = keys.observed()
        self.fleet = fleet
        self.identity = identity
        self.fence = fence
        self.heartbeat = heartbeat
        self.clock = clock

    def _record(self) -> OperatorObservation:
        client = self.fleet.client
        return observation(
            self.identity,
            client.endpoints,
            client.endpoint,
            self.fleet.seen_at,
            self.fleet.loss,
            self.clock(),
            self.heartbeat,
        )

    async def run(self) -> None:
        written: tuple[object, ...] | None = None
        last = float("-inf")
        while True:
            loss = self.fleet.loss
            # what the record says, told without building it (that is done only to write it)
            state = (
                loss is None,
                loss.since if loss is not None else None,
                self.fleet.client.endpoint,
                self.fleet.seen_at is not None,
            )
            if state != written or (self.heartbeat > 0 and time.monotonic() - last >= self.heartbeat):
                try:
                    body = self._record().model_dump_json(by_alias=True).encode()
                    await self.etcd.put(self.key, body, fence=self.fence())
                    written, last = state, time.monotonic()
                except NotLeader:
                    return
                except FleetopError as exc:
                    log.debug("writing %s: %s", self.key, exc)
            await asyncio.sleep(CHECK_EVERY)
