"""``fleetop node``: run the embedded fleet-compatible engine, or talk to a running one.

``fleetop node --machines 3`` runs a node in the foreground. The subcommands reach a running node over
its socket (the endpoint it wrote in its state directory, or ``--endpoint``) through the node's own
endpoints, which are not part of fleet's API: ``machine stop|start ID`` and ``journal UNIT``.
The main CLI mounts this as ``app.add_typer(node_app, name="node")``; ``python -m fleetop.node.cli`` runs
it on its own.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetop.errors import FleetopError
from fleetop.http import HttpResponse, HttpSession, Timeouts
from fleetop.node.node_api import OFFSET_HEADER

node_app = typer.Typer(
    help="Run fleetop's embedded fleet-compatible engine, or control a running one.",
    invoke_without_command=True,
    no_args_is_help=False,
)
machine_app = typer.Typer(help="Stop or start one of a running node's machines.", no_args_is_help=True)
node_app.add_typer(machine_app, name="machine")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetop" / "node"


def node_endpoint(state_dir: Path, endpoint: str | None) -> str:
    """The running node's endpoint: ``--endpoint``, else the one it recorded, else its default socket."""
    if endpoint:
        return endpoint
    try:
        recorded = (state_dir / "endpoint").read_text().strip()
    except FileNotFoundError:
        recorded = ""
    return recorded or f"unix://{state_dir.absolute() / 'fleet.sock'}"


StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar="FLEETOP_NODE_STATE_DIR", help="The node's state directory."),
]
EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint", envvar="FLEETOP_NODE_ENDPOINT", help="The running node's endpoint."),
]


@node_app.callback()
def node(
    ctx: typer.Context,
    machines: Annotated[int, typer.Option("--machines", min=1, max=254, help="Machines to model.")] = 1,
    state_dir: StateDirOption = None,
    listen: Annotated[
        str | None,
        typer.Option(help="unix:///PATH (default: unix://<state-dir>/fleet.sock) or http://127.0.0.1:PORT."),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            help="Machine metadata; the i-th value is machine i's ('region=sfo1,disk=ssd'), "
            "or name machines by index ('1:region=a,2:region=b'). Repeatable.",
        ),
    ] = None,
    etcd_endpoints: Annotated[
        str | None,
        typer.Option(
            "--etcd-endpoints",
            envvar="ETCDCTL_ENDPOINTS",
            help="etcd endpoints published to units in /etc/etcd.environment (comma-separated).",
        ),
    ] = None,
    pace: Annotated[
        float | None,
        typer.Option(
            "--pace",
            min=0.0,
            max=60.0,
            help="Seconds the engine takes to notice a change, and each machine's agent after it, as "
            "fleet's do (default 1, or FLEETOP_NODE_PACE; 0: at once). fleetctl needs more than a "
            "request's round trip.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Run a node (when no subcommand is given)."""
    state_dir = state_dir or default_state_dir()
    ctx.obj = state_dir
    if ctx.invoked_subcommand is not None:
        return
    from fleetop.logfmt import basic_config
    from fleetop.node.server import NodeConfig, run_node

    basic_config(log_level.upper())
    try:
        config = NodeConfig(
            state_dir=state_dir,
            machines=machines,
            listen=listen,
            metadata=tuple(metadata or ()),
            etcd_endpoints=tuple(e.strip() for e in (etcd_endpoints or "").split(",") if e.strip()),
            **({} if pace is None else {"pace": pace}),
        )
        asyncio.run(run_node(config))
    except FleetopError as exc:
        typer.echo(f"fleetop node: {exc}", err=True)
        raise typer.Exit(1) from exc


async def _call(endpoint: str, method: str, path: str, params: dict[str, str] | None = None) -> HttpResponse:
    async with HttpSession(endpoint, timeouts=Timeouts.uniform(30.0)) as session:
        return await session.request(method, "/fleetop-node/v1/" + path, params=params)


def _run(endpoint: str, method: str, path: str, params: dict[str, str] | None = None) -> HttpResponse:
    try:
        resp = asyncio.run(_call(endpoint, method, path, params))
    except FleetopError as exc:
        typer.echo(f"fleetop node: {exc}", err=True)
        raise typer.Exit(1) from exc
    if resp.status >= 400:
        typer.echo(f"fleetop node: {method} {path}: HTTP {resp.status}: {resp.text.strip()}", err=True)
        raise typer.Exit(1)
    return resp


def _machine_action(ctx: typer.Context, machine: str, action: str, endpoint: str | None) -> None:
    target = node_endpoint(ctx.obj or default_state_dir(), endpoint)
    _run(target, "POST", f"machines/{machine}/{action}")
    typer.echo(f"Machine {machine} {'stopped' if action == 'stop' else 'started'}")


@machine_app.command("stop")
def machine_stop(
    ctx: typer.Context,
    machine: Annotated[str, typer.Argument(help="Machine id, unique id prefix, or 1-based index.")],
    endpoint: EndpointOption = None,
) -> None:
    """Take a machine out: its units are stopped and rescheduled elsewhere where possible."""
    _machine_action(ctx, machine, "stop", endpoint)


@machine_app.command("start")
def machine_start(
    ctx: typer.Context,
    machine: Annotated[str, typer.Argument(help="Machine id, unique id prefix, or 1-based index.")],
    endpoint: EndpointOption = None,
) -> None:
    """Bring a stopped machine back."""
    _machine_action(ctx, machine, "start", endpoint)


@node_app.command("journal")
def journal(
    ctx: typer.Context,
    unit: Annotated[str, typer.Argument(help="Unit name.")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show.")] = 10,
    machine: Annotated[str | None, typer.Option("--machine", help="Machine (for global units).")] = None,
    endpoint: EndpointOption = None,
) -> None:
    """Print a unit's journal, like ``fleetctl journal``."""
    target = node_endpoint(ctx.obj or default_state_dir(), endpoint)
    params = {"n": str(lines)}
    if machine:
        params["machineID"] = machine
    resp = _run(target, "GET", f"journal/{unit}", params)
    sys.stdout.buffer.write(resp.body)
    sys.stdout.flush()
    if not follow:
        return
    try:
        asyncio.run(_follow(target, unit, int(resp.header(OFFSET_HEADER) or 0), machine))
    except KeyboardInterrupt:
        return
    except FleetopError as exc:
        typer.echo(f"fleetop node: {exc}", err=True)
        raise typer.Exit(1) from exc


async def _follow(endpoint: str, unit: str, offset: int, machine: str | None) -> None:
    async with HttpSession(endpoint, timeouts=Timeouts.uniform(30.0)) as session:
        while True:
            params = {"offset": str(offset)}
            if machine:
                params["machineID"] = machine
            resp = await session.request("GET", f"/fleetop-node/v1/journal/{unit}", params=params)
            if resp.status == 200:
                sys.stdout.buffer.write(resp.body)
                sys.stdout.flush()
                offset = int(resp.header(OFFSET_HEADER) or offset)
            await asyncio.sleep(0.5)


if __name__ == "__main__":  # pragma: no cover - ``python -m fleetop.node.cli``
    node_app(prog_name="fleetop node")
