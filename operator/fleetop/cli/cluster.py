"""``fleetop status``, ``fleetop get units|machines`` and ``fleetop events``: gathering from etcd and fleet.

The formatting is pure (``statusview.py``); this module does the I/O. A part that cannot be reached is
shown as unreachable with the reason — the status screen is most needed exactly when something is down.
``status`` gathers and prints through :mod:`fleetop.cli.reads` (which also runs it without typer):
etcd through :func:`open_reader` (no grpc), fleet over the standard library (the fleet client's
``plain`` sessions: no httpx); the fleet client and the gRPC client (``events --follow`` watches) are
imported by the functions that use them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleetop.cli.common import CliContext, cli_context, echo, open_store, run
from fleetop.cli.output import format_event_line, format_events
from fleetop.cli.reads import fleet_endpoint, gather, render_status, status_once
from fleetop.cli.statusview import Report, format_machines, format_units
from fleetop.keys import Kind
from fleetop.models import Event

if TYPE_CHECKING:
    from fleetop.etcd.model import Events, Snapshot
    from fleetop.fleet.model import Machine, Unit, UnitState


FleetFlag = Annotated[str | None, typer.Option("--fleet-endpoint", help="fleet API (FLEETCTL_ENDPOINT)")]


def status(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="text | json | yaml")] = "text",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh live")] = False,
    interval: Annotated[float, typer.Option("--interval", help="seconds between refreshes")] = 2.0,
    fleet_endpoint_flag: FleetFlag = None,
) -> None:
    """One screen: leader, etcd and fleet health, services, proxies, machines with their units."""
    cli = cli_context(ctx)
    if output not in ("text", "json", "yaml"):
        echo(f"error: --output must be text, json or yaml, not {output!r}\n")
        raise typer.Exit(1)

    def render(report: Report) -> str:
        return render_status(report, output)

    if not watch:
        status_once(cli, output, fleet_endpoint_flag)
        return
    _watch(cli, fleet_endpoint_flag, render, interval)


def _watch(cli: CliContext, fleet_flag: str | None, render: Any, interval: float) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    async def loop() -> None:
        with Live(Text("gathering..."), console=Console(), auto_refresh=False, screen=False) as live:
            while True:
                report = await gather(cli, fleet_flag)
                live.update(Text(render(report)), refresh=True)
                await asyncio.sleep(interval)

    run(loop)


async def fleet_listing(fleet_flag: str | None) -> tuple[list[Machine], list[Unit], list[UnitState]]:
    from fleetop.fleet.client import FleetClient

    async with FleetClient(fleet_endpoint(fleet_flag), plain=True) as fleet:
        machines, units, states = await asyncio.gather(
            fleet.list_machines(), fleet.list_units(), fleet.list_states()
        )
    return machines, units, states


def get_fleet_resource(resource: str, wide: bool, fleet_flag: str | None) -> None:
    machines, units, states = run(lambda: fleet_listing(fleet_flag))
    if resource == "units":
        echo(format_units(units, states, machines, wide))
    else:
        echo(format_machines(machines, states, wide))


def events(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option("--service", help="only this service or proxy")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")] = False,
) -> None:
    """Recent events (about the last hour), oldest first."""
    cli = cli_context(ctx)

    async def body() -> None:
        async with open_store(cli) as store:
            if not follow:
                echo(format_events(await store.events(service)))
                return
            # a service's and a proxy's events lie apart (/fleetop/events/<kind>/<name>/): follow both
            kinds: tuple[Kind, ...] = ("services", "proxies")
            prefixes = tuple(store.keys.events(kind, service) for kind in kinds) if service else ("",)
            stream = store.etcd.list_watch(store.keys.events())
            async with contextlib.aclosing(stream):
                async for update in stream:
                    for event in _new_events(update, prefixes):
                        echo(format_event_line(event))

    run(body)


def _new_events(update: Snapshot | Events, prefixes: tuple[str, ...] = ("",)) -> list[Event]:
    """Events in a list-watch update under one of ``prefixes``, oldest first; values that do not parse
    are skipped."""
    from fleetop.etcd.model import Snapshot

    values = (
        [kv.value for kv in update.items if kv.key.startswith(prefixes)]
        if isinstance(update, Snapshot)
        else [e.value for e in update.events if e.type == "put" and e.key.startswith(prefixes)]
    )
    parsed = []
    for value in values:
        try:
            parsed.append(Event.model_validate_json(value))
        except ValueError:
            continue
    return sorted(parsed, key=lambda e: e.time)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("events")(events)
