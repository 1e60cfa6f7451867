"""``fleetop status``, ``fleetop get units|machines`` and ``fleetop events``: gathering from etcd and fleet.

The formatting is pure (``statusview.py``); this module does the I/O. A part that cannot be reached is
shown as unreachable with the reason — the status screen is most needed exactly when something is down.
``status`` reads etcd through :func:`open_reader` (no grpc) and fleet over the standard library
(the fleet client's ``plain`` sessions: no httpx); the fleet client and the gRPC client (``events
--follow`` watches) are imported by the functions that use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleetop.cli.common import CliContext, cli_context, echo, open_reader, open_store, run
from fleetop.cli.output import format_event_line, format_events
from fleetop.cli.statusview import (
    Health,
    Report,
    format_machines,
    format_status,
    format_status_data,
    format_units,
    now_utc,
)
from fleetop.config import fleet_endpoints_from
from fleetop.errors import FleetopError
from fleetop.models import Event
from fleetop.models.observed import OperatorObservation

if TYPE_CHECKING:
    from fleetop.etcd.model import Events, Snapshot
    from fleetop.fleet.model import Machine, Unit, UnitState
    from fleetop.store import StoreReader


def fleet_endpoint(flag: str | None) -> str:
    """The validated endpoint list, comma-separated (ConfigError names a bad entry and its source)."""
    return ",".join(fleet_endpoints_from({"fleet_endpoint": flag}, os.environ))


async def gather_fleet(endpoint: str) -> tuple[Health, list[Machine], list[Unit], list[UnitState]]:
    """One look at fleet, failing over between the endpoints (each tried once, sequentially, so the
    client stays on the one that answered)."""
    from fleetop.fleet.client import FleetClient, RetryPolicy
    from fleetop.http import Timeouts

    fleet = FleetClient(endpoint, retry=RetryPolicy.none(), timeouts=Timeouts.uniform(5.0), plain=True)
    async with fleet:
        try:
            machines = await fleet.list_machines()
            units, states = await asyncio.gather(fleet.list_units(), fleet.list_states())
        except FleetopError as exc:
            return Health(endpoint, False, str(exc), dict(fleet.unreachable)), [], [], []
    detail = f"{len(machines)} machines" + (f", through {fleet.endpoint}" if len(fleet.endpoints) > 1 else "")
    return Health(endpoint, True, detail), machines, units, states


async def gather_etcd(store: StoreReader, report: Report) -> None:
    leader = await store.etcd.get(store.keys.leader())
    if leader is not None:
        try:
            report.leader = json.loads(leader.value)
        except json.JSONDecodeError:
            report.leader = {"identity": leader.value.decode("utf-8", "replace")}
    report.services, _ = await store.list("services")
    report.service_status = await store.statuses("services")
    report.proxies, _ = await store.list("proxies")
    report.proxy_status = await store.statuses("proxies")
    observed = await store.etcd.get(store.keys.observed())
    if observed is not None:
        with contextlib.suppress(ValueError):
            report.observed = OperatorObservation.model_validate_json(observed.value)


async def gather(cli: CliContext, fleet_flag: str | None) -> Report:
    settings = cli.settings()
    endpoint = fleet_endpoint(fleet_flag)
    fleet_task = asyncio.create_task(gather_fleet(endpoint))
    report = Report(now_utc(), Health(",".join(settings.endpoints), True), Health(endpoint, False))
    try:
        async with open_reader(cli) as store:
            await gather_etcd(store, report)
    except FleetopError as exc:
        report.etcd = Health(",".join(settings.endpoints), False, str(exc))
        report.leader, report.services, report.proxies, report.observed = None, [], [], None
    report.fleet, report.machines, report.units, report.states = await fleet_task
    return report


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
        return format_status(report) if output == "text" else format_status_data(report, output)

    if not watch:
        report = run(lambda: gather(cli, fleet_endpoint_flag))
        echo(render(report))
        if not (report.etcd.healthy and report.fleet.healthy):
            raise typer.Exit(1)
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
            stream = store.etcd.list_watch(store.keys.events(service or ""))
            async with contextlib.aclosing(stream):
                async for update in stream:
                    for event in _new_events(update):
                        echo(format_event_line(event))

    run(body)


def _new_events(update: Snapshot | Events) -> list[Event]:
    """Events in a list-watch update, oldest first; values that do not parse are skipped."""
    from fleetop.etcd.model import Snapshot

    values = (
        [kv.value for kv in update.items]
        if isinstance(update, Snapshot)
        else [e.value for e in update.events if e.type == "put"]
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
