"""``fleetop apply --wait``: follow status until what was applied is available, with a live line.

``progress`` is pure (status in, verdict and line out) so the decision is tested without etcd; the loop
only reads status and redraws the line.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.text import Text

from fleetop.errors import FleetopError
from fleetop.models import ProxyStatus, ServiceStatus
from fleetop.store import Kind, Store


@dataclass(frozen=True)
class Progress:
    done: bool
    failed: str | None
    line: str


def progress(kind: Kind, name: str, revision: int, status: ServiceStatus | ProxyStatus | None) -> Progress:
    """Where ``name`` stands against the spec written at ``revision``."""
    label = f"{'service' if kind == 'services' else 'proxy'}/{name}"
    if status is None or status.observed_generation < revision:
        return Progress(False, None, f"{label}: waiting for the operator to observe revision {revision}")
    invalid = status.condition("Invalid")
    if invalid is not None and invalid.status == "True":
        return Progress(True, f"{label}: invalid: {invalid.message}", f"{label}: invalid")
    progressing = status.condition("Progressing")
    if (
        progressing is not None
        and progressing.status == "False"
        and progressing.reason in ("ProgressDeadlineExceeded", "RolledBack")
    ):
        return Progress(True, f"{label}: {progressing.reason}: {progressing.message}", f"{label}: stalled")
    available = status.condition("Available")
    if isinstance(status, ServiceStatus):
        r = status.replicas
        line = f"{label}: {r.ready}/{r.desired} ready, {r.updated} updated, {r.running} running"
        rolled = (
            progressing is None
            or progressing.status != "True"
            or progressing.reason == "NewReplicaSetAvailable"
        )
        done = available is not None and available.status == "True" and r.updated >= r.desired and rolled
        return Progress(done, None, line)
    line = f"{label}: {status.agents.on_newest}/{status.agents.total} agents on the newest config"
    if status.last_error:
        line += f" ({status.last_error.splitlines()[0]})"
    return Progress(available is not None and available.status == "True", None, line)


async def wait_for(
    store: Store, targets: list[tuple[Kind, str, int]], timeout: float, console: Console
) -> None:
    """Wait until every target is done; raise FleetopError naming the first that failed or timed out."""
    deadline = time.monotonic() + timeout
    with Live(Text(""), console=console, auto_refresh=False, transient=False) as live:
        while True:
            lines, pending = [], []
            for kind, name, revision in targets:
                entry = await store.status(kind, name)
                state = progress(kind, name, revision, entry.status if entry else None)
                if state.failed:
                    live.update(Text(state.line), refresh=True)
                    raise FleetopError(state.failed)
                lines.append(("✓ " if state.done else "… ") + state.line)
                if not state.done:
                    pending.append(name)
            live.update(Text("\n".join(lines)), refresh=True)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise FleetopError(f"timed out after {timeout:.0f} s waiting for {', '.join(pending)}")
            await asyncio.sleep(0.5)
