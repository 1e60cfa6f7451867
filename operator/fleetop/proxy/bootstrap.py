"""``fleetop proxy-instance``: give a managed proxy a valid config, then become the proxy.

nginx and HAProxy refuse to start without a valid config, and the agent that installs configs can
only reload a proxy that runs. So the proxy unit's ``ExecStart`` runs this command, which:

1. writes the first config that passes the proxy's own check, in this order: the config the operator
   publishes now (so a restarted proxy serves at once), the config already installed on this machine,
   and last a config with no routes (every request answers 404) rendered from the same runtime paths,
   which always passes;
2. replaces itself (``exec``) with nginx (``daemon off``) or HAProxy (master-worker, ``-db``) in the
   foreground, so the unit's main process is the proxy and the agent's reload signals reach it.

etcd being unreachable is not fatal: the proxy starts on what is on disk, and the agent catches up.
Mounted by the main CLI as a hidden command; the operator writes it into ``<proxy>@<n>.service``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from fleetop.config import settings_from
from fleetop.errors import ConfigError, FleetopError, RenderError
from fleetop.etcd.client import Etcd
from fleetop.filemodes import CONFIG_MODE, SHARED_DIR_MODE, make_dir
from fleetop.keys import Keys
from fleetop.logfmt import basic_config
from fleetop.models.base import check_name
from fleetop.models.proxy import parse_listen
from fleetop.models.status import PublishedConfig
from fleetop.proxy.apply import (
    command_argv,
    default_check,
    initial_config,
    prepare_runtime_dir,
    proxy_command,
    run_command,
)
from fleetop.proxy.policy import AgentPolicy, load_policy
from fleetop.proxy.published import PublishedFormatError, decode_published
from fleetop.proxy.render import RenderPaths

log = logging.getLogger(__name__)

Kind = Literal["nginx", "haproxy"]
EXIT_USAGE = 2
STAGED = ".fleetop-bootstrap"


async def fetch_published(
    proxy: str, endpoints: str | None, prefix: str | None, timeout: float
) -> bytes | None:
    """The published config's raw value, or None (absent, or etcd not reachable within ``timeout``)."""
    try:
        settings = settings_from({"endpoints": endpoints, "prefix": prefix}, os.environ)
        async with asyncio.timeout(timeout), await Etcd.connect(settings) as etcd:
            kv = await etcd.get(Keys().proxy_config(proxy))
    except (FleetopError, TimeoutError, OSError) as exc:
        log.warning("proxy %s: cannot read the published config (%s); starting without it", proxy, exc)
        return None
    return kv.value if kv is not None else None


def published_candidate(raw: bytes | None, kind: Kind) -> PublishedConfig | None:
    if raw is None:
        return None
    try:
        config = decode_published(raw)
    except PublishedFormatError as exc:
        log.warning("cannot use the published config: %s", exc)
        return None
    return config if config.kind == kind else None


async def passes_check(body: str, kind: Kind, config: Path, check: list[str] | str | None) -> bool:
    """Stage ``body`` beside ``config`` and run the proxy's check on it (the published command, else
    the kind's default)."""
    staged = config.parent / STAGED
    staged.write_text(body, encoding="utf-8")
    try:
        argv = command_argv(check if check is not None else default_check(kind, config.parent), staged)
        if not argv:
            return True
        status, output = await run_command(argv, timeout=30.0, cwd=config.parent)
    except FleetopError as exc:
        log.warning("cannot check a config: %s", exc)
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    if status != 0:
        log.warning("a candidate config fails its check: %s", output)
    return status == 0


async def choose_config(
    proxy: str,
    kind: Kind,
    listen: str,
    paths: RenderPaths,
    config: Path,
    published: bytes | None,
    policy: AgentPolicy | None = None,
) -> tuple[str, str]:
    """(body, where it came from): published, installed, or the empty placeholder. A published
    config whose check command this machine's policy does not allow is not even checked."""
    candidate = published_candidate(published, kind)
    allowed = policy or AgentPolicy()
    refused = allowed.command_problem(candidate.check_cmd, "checkCmd") if candidate else None
    if refused is not None:
        log.warning("proxy %s: not starting on the published config: %s", proxy, refused)
        candidate = None
    if candidate is not None and await passes_check(candidate.body, kind, config, candidate.check_cmd):
        return candidate.body, f"published generation {candidate.generation}"
    installed = _read(config)
    if installed and await passes_check(installed, kind, config, None):
        return installed, "installed"
    return initial_config(proxy, kind, listen, paths), "placeholder without routes"


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    return text if text.strip() else ""


def write_atomically(path: Path, body: str) -> None:
    temp = path.parent / f".{path.name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, CONFIG_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(fd, CONFIG_MODE)
        handle.write(body)
    os.replace(temp, path)


def _policy() -> AgentPolicy:
    """This machine's agent policy; a broken policy file allows only the built-in commands."""
    try:
        return load_policy()
    except ConfigError as exc:
        log.warning("%s: allowing only the built-in commands", exc)
        return AgentPolicy()


def proxy_instance_command(
    proxy: Annotated[str, typer.Option(help="Proxy name (/desired/proxies/<proxy>).")],
    kind: Annotated[str, typer.Option(help="nginx or haproxy.")],
    listen: Annotated[str, typer.Option(help="The spec's listen address, for the placeholder config.")],
    runtime_dir: Annotated[Path, typer.Option(help="The proxy's runtime directory (pid, logs, temp).")],
    config: Annotated[Path, typer.Option(help="Where the proxy reads its config (the agent installs it).")],
    endpoints: Annotated[str | None, typer.Option(help="etcd endpoints (ETCDCTL_ENDPOINTS).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Key root (default: FLEETOP_PREFIX or /).")] = None,
    etcd_timeout: Annotated[float, typer.Option(help="Seconds to wait for etcd before starting.")] = 5.0,
) -> None:
    """Write a valid config for a managed proxy instance, then exec nginx or HAProxy in the foreground."""
    basic_config("INFO", "%(levelname)s %(name)s: %(message)s")
    try:
        check_name(proxy, "--proxy")
        if kind not in ("nginx", "haproxy"):
            raise ValueError("--kind must be nginx or haproxy")
        address = parse_listen(listen)
        paths = RenderPaths(str(runtime_dir.absolute()))
    except (ValueError, RenderError, ConfigError) as exc:
        typer.echo(f"fleetop proxy-instance: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    proxy_kind: Kind = "nginx" if kind == "nginx" else "haproxy"
    policy = _policy()
    target = config.absolute()
    refused = policy.with_dirs([Path(paths.runtime_dir)]).path_problem(target, "--config")
    if refused is not None:  # the spec's configPath: the agent refuses it too and reports why
        target = Path(paths.runtime_dir) / f"{proxy_kind}.conf"
        log.error("proxy %s: %s (this machine's agent policy); using %s", proxy, refused, target)
    prepare_runtime_dir(paths)
    if not target.parent.is_dir():
        make_dir(target.parent, SHARED_DIR_MODE)
    published = asyncio.run(fetch_published(proxy, endpoints, prefix, etcd_timeout))
    body, source = asyncio.run(choose_config(proxy, proxy_kind, address, paths, target, published, policy))
    write_atomically(target, body)
    argv = proxy_command(proxy_kind, target, paths)
    log.info("proxy %s: starting %s on the %s config: %s", proxy, kind, source, " ".join(argv))
    sys.stderr.flush()
    os.chdir(target.parent)
    os.execv(argv[0], argv)
