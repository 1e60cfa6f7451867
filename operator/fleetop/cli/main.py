"""``fleetop``: the entry point. Connection flags come before the verb, as with etcdctl and kubectl.

A CLI that takes a second to answer is not used in a loop or a prompt, and a sidekick started once per
instance pays its start-up on every machine. So nothing is imported here that a verb does not need:
:func:`main` reads the verb from argv first, answers ``--version`` at once, hands ``register`` to the
lean sidekick (standard library only, :mod:`fleetop.discovery.sidekick`), runs the plain forms of
``get``, ``describe`` and ``status`` without typer (:mod:`fleetop.cli.reads`), and otherwise builds the
typer app with only the commands of that verb's module (:data:`VERBS`). Help, an unknown verb and
``app`` (the module attribute, for tests) get every command.
"""

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

# gRPC's C core prints handshake noise on stderr unless told otherwise, before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

if TYPE_CHECKING:
    import typer

GLOBAL_VALUE_OPTIONS = (
    "--endpoints",
    "--prefix",
    "--cacert",
    "--cert",
    "--key",
    "--user",
    "--command-timeout",
)
"""The global options that take a value; they may come before the verb."""

_SPECS = ("apply", "get", "describe", "delete", "scale", "patch", "diff", "schema")
VERBS: dict[str, str] = {
    **dict.fromkeys(_SPECS, "specs"),
    "status": "cluster",
    "events": "cluster",
    "up": "stack",
    "down": "stack",
    "manifests": "manifests",
    "run": "run",
    "register": "register",
    "node": "node",
    "proxy-agent": "proxy-agent",
    "proxy-instance": "proxy-instance",
}
"""Each verb and the group of commands that serves it (:func:`_add_group`)."""
READ_VERBS = ("get", "describe", "status")
"""Verbs :mod:`fleetop.cli.reads` runs without typer when given in their plain forms."""


def _version(value: bool) -> None:
    if value:
        import typer

        from fleetop import __version__

        print(f"fleetop {__version__}")
        raise typer.Exit()


def _callback() -> Callable[..., None]:
    """The callback with typer's annotations, built when typer is imported (not before)."""
    from typing import Annotated

    import typer

    def main_callback(
        ctx: typer.Context,
        endpoints: Annotated[
            str | None, typer.Option(help="etcd endpoints, comma-separated (ETCDCTL_ENDPOINTS)")
        ] = None,
        prefix: Annotated[
            str | None, typer.Option(help="key root of this installation (FLEETOP_PREFIX)")
        ] = None,
        cacert: Annotated[str | None, typer.Option(help="CA bundle for etcd TLS (ETCDCTL_CACERT)")] = None,
        cert: Annotated[str | None, typer.Option(help="client certificate (ETCDCTL_CERT)")] = None,
        key: Annotated[str | None, typer.Option(help="client key (ETCDCTL_KEY)")] = None,
        user: Annotated[
            str | None,
            typer.Option(help="etcd user; the password comes from ETCDCTL_PASSWORD (ETCDCTL_USER)"),
        ] = None,
        command_timeout: Annotated[str | None, typer.Option(help="per-request timeout, e.g. 5s")] = None,
        version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
    ) -> None:
        """Global options shared by every command."""
        from fleetop.cli.common import CliContext

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

    return main_callback


def _register_stub() -> Callable[..., None]:
    """``register`` in the typer app (help, tests): the same lean sidekick that :func:`main` runs."""
    import typer

    def register(ctx: typer.Context) -> None:
        """Keep <root><prefix>/<instance> = host:port in etcd while the instance passes its check
        (``fleetop register --help`` for the flags)."""
        from fleetop.cli.common import cli_context
        from fleetop.discovery import sidekick

        code = sidekick.main(list(ctx.args), cli_context(ctx).flags)
        if code:
            raise typer.Exit(code)

    return register


def _add_group(app: "typer.Typer", group: str) -> None:
    """Import one group of commands and add it to ``app``."""
    if group in ("specs", "cluster", "stack", "manifests"):
        import importlib

        importlib.import_module(f"fleetop.cli.{group}").register(app)
    elif group == "run":
        from fleetop.controller.cli import run_command

        app.command("run")(run_command)
    elif group == "register":
        context = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
        app.command("register", context_settings=context)(_register_stub())
    elif group == "node":
        from fleetop.node.cli import node_app

        app.add_typer(node_app, name="node")
    elif group == "proxy-agent":
        from fleetop.proxy.cli import proxy_agent_command

        app.command("proxy-agent")(proxy_agent_command)
    elif group == "proxy-instance":
        from fleetop.proxy.bootstrap import proxy_instance_command

        app.command("proxy-instance", hidden=True)(proxy_instance_command)


def build_app(groups: Sequence[str] | None = None) -> "typer.Typer":
    """The typer app with the given groups of commands (every group when None)."""
    import typer

    app = typer.Typer(
        name="fleetop",
        help="Desired state in etcd, units in fleet, proxies in front: a reconciling operator for fleet.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_callback())
    for group in dict.fromkeys(VERBS.values()) if groups is None else groups:
        _add_group(app, group)
    return app


def split_verb(argv: Sequence[str]) -> tuple[dict[str, str], str | None, list[str]]:
    """argv after the program name → (global flags given before the verb, the verb, the rest).

    The verb is None when argv has none, or asks for help or the version first, or has an option
    this function does not know before the verb (typer then answers with all commands).
    """
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return flags, arg, list(argv[i + 1 :])
        name, eq, value = arg.partition("=")
        if name not in GLOBAL_VALUE_OPTIONS:
            return flags, None, []
        if not eq:
            if i + 1 >= len(argv):
                return flags, None, []
            value = argv[i + 1]
            i += 1
        flags[name[2:].replace("-", "_")] = value
        i += 1
    return flags, None, []


def main(argv: Sequence[str] | None = None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        from fleetop import __version__

        print(f"fleetop {__version__}")
        return 0
    flags, verb, rest = split_verb(args)
    if verb == "register":
        from fleetop.discovery import sidekick

        return sidekick.main(rest, flags)
    if verb in READ_VERBS:
        from fleetop.cli.reads import run_read_verb

        if run_read_verb(verb, flags, rest):
            return 0
    group = VERBS.get(verb) if verb else None
    build_app([group] if group else None)(args=args, prog_name="fleetop")
    return 0


def __getattr__(name: str) -> Any:
    """``app``: every command (tests invoke it with typer's runner)."""
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
