"""``fleetop run``: the operator as a command. The main CLI mounts it with
``app.command("run")(run_command)``; ``python -m fleetop.controller.cli`` runs it on its own.
The flags are parsed into :class:`~fleetop.controller.runtime.settings.OperatorSettings` and the
operator runs as :func:`fleetop.controller.operator.run_operator` wires it.

Connection flags may come before the verb (``fleetop --endpoints ... run``, the main CLI's global
options) or after it (``fleetop run --endpoints ...``); the latter win. Every flag has an environment
variable, so the operator runs unchanged as a fleet unit with an ``EnvironmentFile=``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated, Any

import typer

from fleetop.config import inherited_flags
from fleetop.errors import FleetopError

FLAGS = "Operator"


def run_command(
    ctx: typer.Context,
    endpoints: Annotated[
        str | None,
        typer.Option(help="etcd endpoints, comma-separated (ETCDCTL_ENDPOINTS)", rich_help_panel=FLAGS),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="key root of this installation (FLEETOP_PREFIX)", rich_help_panel=FLAGS)
    ] = None,
    fleet_endpoint: Annotated[
        str | None,
        typer.Option(
            help="fleet API: unix:///var/run/fleet.sock or http://host:port, several comma-separated"
            " for failover (FLEETCTL_ENDPOINT)"
        ),
    ] = None,
    lease_duration: Annotated[
        float | None,
        typer.Option(
            help="a dead leader is replaced within this many seconds; its etcd lease's TTL is this less the"
            " retry period (FLEETOP_LEASE_DURATION, default 15)"
        ),
    ] = None,
    renew_deadline: Annotated[
        float | None,
        typer.Option(help="a leader that cannot renew for this long steps down (FLEETOP_RENEW_DEADLINE, 10)"),
    ] = None,
    retry_period: Annotated[
        float | None,
        typer.Option(help="seconds between renewals and election attempts (FLEETOP_RETRY_PERIOD, 2)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="concurrent reconciles (FLEETOP_WORKERS, default 4)")
    ] = None,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            help="host:port of /healthz /readyz /metrics, or 'off' (FLEETOP_METRICS_ADDRESS, 127.0.0.1:9464)"
        ),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="human or json (FLEETOP_LOG_FORMAT, default human)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING (FLEETOP_LOG_LEVEL)")] = None,
    identity: Annotated[
        str | None, typer.Option(help="leader identity (FLEETOP_IDENTITY, default hostname-pid-random)")
    ] = None,
    resync_period: Annotated[
        float | None,
        typer.Option(
            help="seconds between full resyncs, a safety net: fleet polls and etcd watches already queue"
            " every change (FLEETOP_RESYNC_PERIOD, default 600)"
        ),
    ] = None,
    proxy_root: Annotated[
        str | None,
        typer.Option(
            help="directory of managed proxies' files, <root>/<proxy> on each machine"
            " (FLEETOP_PROXY_ROOT, default /var/lib/fleetop/proxies)"
        ),
    ] = None,
    fleetop_path: Annotated[
        str | None,
        typer.Option(
            help="absolute path of fleetop on every machine, run by the sidekicks and proxy units the"
            " operator writes (FLEETOP_PATH, default the fleetop running this command)"
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="fleet writes one pass of one service may make (FLEETOP_BATCH_SIZE, default 50)"),
    ] = None,
    max_instances_per_service: Annotated[
        int | None,
        typer.Option(
            help="instances one service may declare; more is refused (FLEETOP_MAX_INSTANCES_PER_SERVICE,"
            " default 1000)"
        ),
    ] = None,
    max_instances: Annotated[
        int | None,
        typer.Option(
            help="instances all services may declare together; the spec changed last is refused"
            " (FLEETOP_MAX_INSTANCES, default 5000)"
        ),
    ] = None,
    render_timeout: Annotated[
        float | None,
        typer.Option(help="seconds a custom proxy template may render (FLEETOP_RENDER_TIMEOUT, default 5)"),
    ] = None,
    render_max_bytes: Annotated[
        int | None,
        typer.Option(
            help="bytes a config rendered from a custom template may have"
            " (FLEETOP_RENDER_MAX_BYTES, default 8388608)"
        ),
    ] = None,
    restart_backoff: Annotated[
        float | None,
        typer.Option(
            help="first crash-loop back-off in seconds, doubling per restart to 30 times it"
            " (FLEETOP_RESTART_BACKOFF, default 10)"
        ),
    ] = None,
    sidekick_credentials: Annotated[
        str | None,
        typer.Option(
            help="environment file (mode 0600) with the ETCDCTL_* of the sidekicks the operator writes"
            " (FLEETOP_SIDEKICK_CREDENTIALS)"
        ),
    ] = None,
    agent_credentials: Annotated[
        str | None,
        typer.Option(help="the same for managed proxies' agents (FLEETOP_AGENT_CREDENTIALS)"),
    ] = None,
    proxy_credentials: Annotated[
        str | None,
        typer.Option(
            help="the same for managed proxy instances (FLEETOP_PROXY_CREDENTIALS, default the agents' file)"
        ),
    ] = None,
) -> None:
    """Run the operator: watch desired state in etcd and keep fleet there (leader-elected)."""
    from fleetop.controller.operator import run_operator
    from fleetop.controller.runtime.run import setup_logging
    from fleetop.controller.runtime.settings import OperatorSettings

    flags: dict[str, Any] = inherited_flags(ctx.find_root().obj)
    given = {
        "endpoints": endpoints,
        "prefix": prefix,
        "fleet_endpoint": fleet_endpoint,
        "lease_duration": lease_duration,
        "renew_deadline": renew_deadline,
        "retry_period": retry_period,
        "workers": workers,
        "metrics_address": metrics_address,
        "log_format": log_format,
        "log_level": log_level,
        "identity": identity,
        "resync_period": resync_period,
        "proxy_root": proxy_root,
        "fleetop_path": fleetop_path,
        "batch_size": batch_size,
        "max_instances_per_service": max_instances_per_service,
        "max_instances": max_instances,
        "render_timeout": render_timeout,
        "render_max_bytes": render_max_bytes,
        "restart_backoff": restart_backoff,
        "sidekick_credentials": sidekick_credentials,
        "agent_credentials": agent_credentials,
        "proxy_credentials": proxy_credentials,
    }
    flags.update({k: v for k, v in given.items() if v is not None})
    try:
        settings = OperatorSettings.from_flags(flags, os.environ)
    except FleetopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    setup_logging(settings.logging.format, settings.logging.level)
    try:
        asyncio.run(run_operator(settings))
    except FleetopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("run")(run_command)

    @app.callback()
    def _root() -> None:
        """fleetop operator"""

    app()


if __name__ == "__main__":
    main()
