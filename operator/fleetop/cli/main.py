"""``fleetop``: the entry point. Connection flags come before the verb, as with etcdctl and kubectl."""

from __future__ import annotations

import os

# gRPC's C core prints handshake noise on stderr unless told otherwise, before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from typing import Annotated

import typer

from fleetop import __version__
from fleetop.cli import cluster, manifests, specs, stack
from fleetop.cli.common import CliContext
from fleetop.controller.cli import run_command
from fleetop.discovery.cli import register_command
from fleetop.node.cli import node_app
from fleetop.proxy.bootstrap import proxy_instance_command
from fleetop.proxy.cli import proxy_agent_command

app = typer.Typer(
    name="fleetop",
    help="Desired state in etcd, units in fleet, proxies in front: a reconciling operator for fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"fleetop {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    endpoints: Annotated[
        str | None, typer.Option(help="etcd endpoints, comma-separated (ETCDCTL_ENDPOINTS)")
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="key root of this installation (FLEETOP_PREFIX)")] = None,
    cacert: Annotated[str | None, typer.Option(help="CA bundle for etcd TLS (ETCDCTL_CACERT)")] = None,
    cert: Annotated[str | None, typer.Option(help="client certificate (ETCDCTL_CERT)")] = None,
    key: Annotated[str | None, typer.Option(help="client key (ETCDCTL_KEY)")] = None,
    user: Annotated[
        str | None, typer.Option(help="etcd user; the password comes from ETCDCTL_PASSWORD (ETCDCTL_USER)")
    ] = None,
    command_timeout: Annotated[str | None, typer.Option(help="per-request timeout, e.g. 5s")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Global options shared by every command."""
    ctx.obj = CliContext(
        flags={
            "endpoints": endpoints,
            "prefix": prefix,
            "cacert": cacert,
            "cert": cert,
            "key": key,
            "user": user,
            "command_timeout": command_timeout,
        }
    )


specs.register(app)
cluster.register(app)
stack.register(app)
manifests.register(app)
app.command("run")(run_command)
app.command("register")(register_command)
app.add_typer(node_app, name="node")
app.command("proxy-agent")(proxy_agent_command)
app.command("proxy-instance", hidden=True)(proxy_instance_command)
app.command("register")(register_command)
app.add_typer(node_app, name="node")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
