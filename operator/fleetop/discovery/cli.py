"""The ``fleetop register`` command: flags and signals around :func:`run_register`.

Kept apart from the state machine so the loop stays testable with a plain ``asyncio.Event`` while
this module owns what only a process has: argv, the environment, SIGTERM/SIGINT and the exit code.
Bad input (address, durations, etcd settings) exits with status 2 before anything touches etcd; a
permanent etcd failure (e.g. permission denied) exits with 1 after cleaning up.

Runs standalone as ``python -m fleetop.discovery.cli`` and is mounted by the main CLI as
``fleetop register``, where the global ``--prefix`` before the verb is the installation root and this
command's ``--prefix`` the registration prefix (``--root`` sets the root when run standalone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Annotated

import typer

from fleetop.cli.common import cli_context
from fleetop.config import EtcdSettings, etcd_flags, settings_from
from fleetop.discovery.checks import HealthCheck
from fleetop.discovery.register import ETCD_RETRY, RegisterConfig, run_register
from fleetop.errors import ConfigError, FleetopError, InputError, TemporaryError
from fleetop.etcd.client import Etcd
from fleetop.timefmt import flag_seconds

log = logging.getLogger("fleetop.discovery.cli")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def register_command(
    ctx: typer.Context,
    service: Annotated[str, typer.Option(help="Service name (the key goes under /services/<service>/).")],
    instance: Annotated[str, typer.Option(help="Instance id, the last key segment (e.g. the port, 8001).")],
    address: Annotated[
        str,
        typer.Option(
            help="host:port to register: IPv4, [IPv6] or a DNS name, e.g. ${COREOS_PRIVATE_IPV4}:8001."
        ),
    ],
    http: Annotated[
        str | None,
        typer.Option("--http", metavar="PATH", help="Check with HTTP GET of PATH (2xx/3xx is healthy)."),
    ] = None,
    tcp: Annotated[bool, typer.Option("--tcp", help="Check that a TCP connection opens.")] = False,
    exec_: Annotated[
        str | None,
        typer.Option("--exec", metavar="CMD", help="Check by running CMD (no shell); exit 0 is healthy."),
    ] = None,
    interval: Annotated[str, typer.Option(help="Time between checks once healthy.")] = "10s",
    timeout: Annotated[str, typer.Option(help="Time limit of one check.")] = "2s",
    ttl: Annotated[str, typer.Option(help="Lease TTL: how long the key outlives a killed sidekick.")] = "30s",
    prefix: Annotated[
        str | None, typer.Option(help="Registration key prefix (default /services/<service>).")
    ] = None,
    endpoints: Annotated[
        str | None,
        typer.Option(help="etcd endpoints (default: ETCDCTL_ENDPOINTS, ETCD_ENDPOINT, 127.0.0.1:2379)."),
    ] = None,
    root: Annotated[
        str | None, typer.Option(help="Key root of the fleetop installation (default: FLEETOP_PREFIX or /).")
    ] = None,
) -> None:
    """Keep <root><prefix>/<instance> = host:port in etcd while the instance passes its check.

    etcd flags given before the verb (fleetop --endpoints E --prefix /root register ...) apply too.
    """
    _setup_logging()
    try:
        check_timeout = flag_seconds(timeout, "--timeout")
        check = HealthCheck.from_flags(http=http, tcp=tcp, exec_=exec_, timeout=check_timeout)
        config = RegisterConfig.build(
            service=service,
            instance=instance,
            address=address,
            prefix=prefix,
            check=check,
            interval=flag_seconds(interval, "--interval"),
            ttl=flag_seconds(ttl, "--ttl"),
        )
        settings = settings_from(etcd_flags(cli_context(ctx).flags, endpoints, root), os.environ)
    except (InputError, ConfigError) as exc:
        typer.echo(f"fleetop register: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        asyncio.run(serve(settings, config))
    except FleetopError as exc:
        typer.echo(f"fleetop register: {exc}", err=True)
        code = EXIT_USAGE if isinstance(exc, InputError | ConfigError) else EXIT_FAILURE
        raise typer.Exit(code) from None


async def serve(settings: EtcdSettings, config: RegisterConfig) -> None:
    """Connect (retrying while etcd is unreachable) and register until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        log.info("using %s", settings.describe())
        while not stop.is_set():
            try:
                async with await Etcd.connect(settings) as etcd:
                    await run_register(etcd, config, stop=stop)
                return
            except TemporaryError as exc:
                log.warning("etcd unavailable, retrying: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ETCD_RETRY)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        level = os.environ.get("FLEETOP_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(
            level=level if isinstance(logging.getLevelName(level), int) else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    for chatty in ("httpx", "httpcore"):  # one line per check otherwise
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("register")(register_command)


if __name__ == "__main__":
    app()
