"""The ``fleetop proxy-agent`` command: flags, signals and exit codes around :class:`ProxyAgent`.

The agent loop stays free of argv and process concerns; this module owns them. Bad flags or etcd
settings exit with status 2 before anything touches etcd; a permanent failure (etcd permission
denied) exits with 1. SIGTERM and SIGINT stop the agent cleanly: its status key is revoked with its
lease and the proxy keeps serving the last applied config.

What the machine allows a published config to run and write is its own choice, never the spec's: the
policy file (``--policy``, ``FLEETOP_AGENT_POLICY``, ``/etc/fleetop/proxy-agent.yaml``) and the
``--allow-config-dir`` directories of the agent's own unit (:mod:`fleetop.proxy.policy`). A policy file
that is named but missing or malformed exits with status 2.

Mounted by the main CLI as ``app.command("proxy-agent")(proxy_agent_command)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer

from fleetop.config import EtcdSettings, settings_from
from fleetop.errors import ConfigError, FleetopError, InputError, TemporaryError
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.logfmt import basic_config
from fleetop.models.base import check_line, check_name
from fleetop.proxy.agent import AgentSettings, ProxyAgent
from fleetop.proxy.policy import DEFAULT_POLICY_FILE, POLICY_ENV, AgentPolicy, load_policy
from fleetop.proxy.render import default_runtime_dir

log = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2
ETCD_RETRY = 2.0


def default_machine_id() -> str:
    """fleet's machine id (``/etc/machine-id``), else the host name."""
    with contextlib.suppress(OSError):
        text = Path("/etc/machine-id").read_text().strip()
        if text:
            return text
    return socket.gethostname()


def _settings(
    proxy: str,
    machine: str | None,
    config_path: Path | None,
    runtime_dir: Path | None,
    timeout: float,
    policy: AgentPolicy | None = None,
    *,
    follow: bool = True,
) -> AgentSettings:
    try:
        check_name(proxy, "--proxy")
        machine_id = machine or default_machine_id()
        check_line(machine_id, "--machine")
        if not machine_id or "/" in machine_id:
            raise ValueError("--machine must be a non-empty id without '/'")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if timeout <= 0:
        raise InputError("--timeout must be positive")
    return AgentSettings(
        proxy=proxy,
        machine=machine_id,
        runtime_dir=(runtime_dir or Path(default_runtime_dir(proxy))).absolute(),
        config_path=config_path.absolute() if config_path else None,
        timeout=timeout,
        policy=policy or AgentPolicy(),
        follow=follow,
    )


def machine_policy(policy_file: Path | None, allow_dirs: list[Path] | None) -> AgentPolicy:
    """This machine's policy file plus the ``--allow-config-dir`` directories of the agent's own
    unit (a unit the operator writes never has them). Raises ConfigError."""
    for directory in allow_dirs or []:
        if not directory.is_absolute():
            raise ConfigError(f"--allow-config-dir {directory} must be an absolute path")
    return load_policy(policy_file).with_dirs(allow_dirs or [])


def proxy_agent_command(
    proxy: Annotated[str, typer.Option(help="Proxy name: follows /fleetop/proxies/<proxy>/config.")],
    machine: Annotated[
        str | None,
        typer.Option(help="Machine id for the status key (default: /etc/machine-id, else hostname)."),
    ] = None,
    config_path: Annotated[
        Path | None, typer.Option(help="Where to install the config (default: the published configPath).")
    ] = None,
    runtime_dir: Annotated[
        Path | None,
        typer.Option(help="Directory for the config when no path is given (default /var/lib/...)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds allowed for the check and the reload.")] = 30.0,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="This machine's agent policy: allowed check/reload commands and config directories"
            f" (default: {POLICY_ENV}, else {DEFAULT_POLICY_FILE}, which may be absent)."
        ),
    ] = None,
    allow_config_dir: Annotated[
        list[Path] | None,
        typer.Option(help="Also allow configs under this directory (repeatable; the machine's own unit)."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            help="HAProxy: follow the backends' registrations one etcd commit before the operator"
            " publishes them (--no-follow: apply the operator's configs only)."
        ),
    ] = True,
    endpoints: Annotated[
        str | None,
        typer.Option(help="etcd endpoints (default: ETCDCTL_ENDPOINTS, ETCD_ENDPOINT, 127.0.0.1:2379)."),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Key root of the fleetop installation (default: FLEETOP_PREFIX or /).")
    ] = None,
) -> None:
    """Apply the proxy config the operator publishes (stage, check, rename, reload) and report status."""
    _setup_logging()
    try:
        agent_settings = _settings(
            proxy,
            machine,
            config_path,
            runtime_dir,
            timeout,
            machine_policy(policy, allow_config_dir),
            follow=follow,
        )
        etcd_settings = settings_from({"endpoints": endpoints, "prefix": prefix}, os.environ)
    except (InputError, ConfigError) as exc:
        typer.echo(f"fleetop proxy-agent: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        asyncio.run(serve(etcd_settings, agent_settings))
    except FleetopError as exc:
        typer.echo(f"fleetop proxy-agent: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None


async def serve(settings: EtcdSettings, agent: AgentSettings) -> None:
    """Connect (retrying while etcd is unreachable) and run the agent until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    log.info("proxy %s on machine %s, using %s", agent.proxy, agent.machine, settings.describe())
    try:
        while True:
            try:
                async with await Etcd.connect(settings) as etcd:
                    gc.freeze()  # the start-up heap out of the collector's full passes (tens of ms)
                    await ProxyAgent(etcd, Keys(), agent).run()
                return
            except TemporaryError as exc:
                log.warning("etcd unavailable, retrying: %s", exc)
                await asyncio.sleep(ETCD_RETRY)
    except asyncio.CancelledError:
        log.info("stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _setup_logging() -> None:
    basic_config(os.environ.get("FLEETOP_LOG_LEVEL", "INFO").upper())


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("proxy-agent")(proxy_agent_command)


if __name__ == "__main__":
    app()
