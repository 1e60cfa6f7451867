"""``get``, ``describe`` and ``status`` without typer: the verbs a person runs in a loop or a prompt.

typer and click cost about as much to import and to build an app as the whole read does, so
:func:`fleetop.cli.main.main` hands these verbs here first (:func:`run_read_verb`), as it answers
``--version`` itself. Only the plain forms are read here (:func:`parse_read_verb`); anything else
(``--help``, an option this module does not know, a bad value, ``status --watch``, ``get units``) goes
to the typer app, which prints its usual help and errors. Both ways run the same functions below, so
they print the same. The plain ``get`` table, ``status`` screen and ``describe`` first try to read
without the models (:mod:`fleetop.cli.light`, :mod:`fleetop.cli.lightdescribe`: specs the operator
judged at their revision), and read through them when that reader is unsure; the typer app always
reads through them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from typing import TYPE_CHECKING, cast

from fleetop.cli.common import CliContext, echo, open_reads, run
from fleetop.config import fleet_endpoints_from
from fleetop.errors import FleetopError, InputError
from fleetop.keys import Keys, Kind

if TYPE_CHECKING:
    from importlib.abc import Loader  # for the type only: importing importlib.abc costs 0.03 s

    from fleetop.cli.output import OutputFormat
    from fleetop.cli.statusview import Health, Report
    from fleetop.fleet.model import Machine, Unit, UnitState
    from fleetop.store import KeyReads, StoreReader

RESOURCE_ALIASES: dict[str, Kind] = {
    "service": "services",
    "services": "services",
    "svc": "services",
    "proxy": "proxies",
    "proxies": "proxies",
    "px": "proxies",
}
FLEET_RESOURCES = {"units": "units", "unit": "units", "machines": "machines", "machine": "machines"}
GET_OUTPUTS: dict[str, OutputFormat] = {"table": "table", "wide": "wide", "json": "json", "yaml": "yaml"}
STATUS_OUTPUTS = ("text", "json", "yaml")
GLOBAL_FLAGS = ("endpoints", "prefix", "cacert", "cert", "key", "user", "command_timeout")


def resource_kind(resource: str) -> Kind:
    try:
        return RESOURCE_ALIASES[resource.lower()]
    except KeyError:
        raise InputError(
            f"unknown resource type {resource!r} (use services or proxies)", where="RESOURCE"
        ) from None


def run_kind(resource: str) -> Kind:
    async def resolve() -> Kind:
        return resource_kind(resource)

    return run(resolve, event_loop=False)


def store_reader(reads: KeyReads, keys: Keys) -> StoreReader:
    from fleetop.store import StoreReader

    return StoreReader(reads, keys)


async def get_light(reads: KeyReads, keys: Keys, kind: Kind, name: str | None) -> str:
    """``get``'s table when the operator judged every spec shown at its revision (:mod:`.light`);
    :class:`~fleetop.cli.light.Unsure` otherwise."""
    from fleetop.cli import light
    from fleetop.cli.output import format_get

    if name is not None:
        kv = await reads.get(keys.desired(kind, name))
        status = await reads.get(keys.status(kind, name))
        kvs, status_kvs = [kv] if kv else [], [status] if status else []
    else:
        kvs, _ = await reads.list(keys.desired(kind))
        status_kvs, _ = await reads.list(keys.status(kind))
    statuses = light.read_statuses(kind, keys, status_kvs)
    entries = light.read_entries(kind, keys, kvs, statuses)
    if name is not None and len(entries) != 1:
        raise light.Unsure("not found")  # the store words that
    return format_get(entries, statuses, "table", single=name is not None)


def get_specs(
    cli: CliContext, resource: str, name: str | None, fmt: OutputFormat, *, light: bool = False
) -> None:
    """``fleetop get services|proxies [NAME] [-o FORMAT]``. ``light``: a table of judged specs is
    read without the models when it can be (:func:`get_light`)."""
    kind = run_kind(resource)

    async def body() -> str:
        from fleetop.cli.output import format_get

        async with open_reads(cli) as reads:
            keys = Keys()
            if light and fmt == "table":
                from fleetop.cli.light import Unsure

                with contextlib.suppress(Unsure):
                    return await get_light(reads, keys, kind, name)
            store = store_reader(reads, keys)
            if name is not None:
                entries = [await store.require(kind, name)]
                status = await store.status(kind, name)
                statuses = {name: status} if status else {}
            else:
                entries, _ = await store.list(kind)
                statuses = await store.statuses(kind)
        return format_get(entries, statuses, fmt, single=name is not None)

    echo(run(body, event_loop=False))


async def describe_light(reads: KeyReads, keys: Keys, kind: Kind, name: str) -> str:
    """``describe``'s output when the operator judged the spec at its revision and it is stored in the
    models' normal form (:mod:`.lightdescribe`); :class:`~fleetop.cli.light.Unsure` otherwise."""
    from fleetop.cli import lightdescribe
    from fleetop.cli.output import format_describe

    kv = await reads.get(keys.desired(kind, name))
    status_kv = await reads.get(keys.status(kind, name)) if kv is not None else None
    entry, status = lightdescribe.read_described(kind, keys, name, kv, status_kv)
    event_kvs, _ = await reads.list(keys.events(kind, name))
    events = lightdescribe.read_events(event_kvs, since_revision=entry.create_revision, limit=20)
    return format_describe(entry, status, events)


def describe(cli: CliContext, resource: str, name: str, *, light: bool = False) -> None:
    """``fleetop describe service|proxy NAME``. ``light``: a spec the operator judged is shown without
    the models when it can be (:func:`describe_light`)."""
    kind = run_kind(resource)

    async def body() -> str:
        from fleetop.cli.output import format_describe

        async with open_reads(cli) as reads:
            if light:
                from fleetop.cli.light import Unsure

                with contextlib.suppress(Unsure):
                    return await describe_light(reads, Keys(), kind, name)
            store = store_reader(reads, Keys())
            entry = await store.require(kind, name)
            status = await store.status(kind, name)
            # this spec's own events, not those of an earlier, deleted one of the same name
            events = await store.events(name, kind=kind, limit=20, since_revision=entry.create_revision)
        return format_describe(entry, status, events)

    echo(run(body, event_loop=False))


def fleet_endpoint(flag: str | None) -> str:
    """The validated endpoint list, comma-separated (ConfigError names a bad entry and its source)."""
    return ",".join(fleet_endpoints_from({"fleet_endpoint": flag}, os.environ))


async def gather_fleet(endpoint: str) -> tuple[Health, list[Machine], list[Unit], list[UnitState]]:
    """One look at fleet, failing over between the endpoints (each tried once, sequentially, so the
    client stays on the one that answered)."""
    import asyncio

    from fleetop.cli.statusview import Health
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


async def gather_leader(reads: KeyReads, keys: Keys, report: Report) -> None:
    leader = await reads.get(keys.leader())
    if leader is not None:
        try:
            report.leader = json.loads(leader.value)
        except json.JSONDecodeError:
            report.leader = {"identity": leader.value.decode("utf-8", "replace")}


async def gather_etcd_light(reads: KeyReads, keys: Keys, report: Report) -> None:
    """:func:`gather_etcd` when the operator judged every spec at its revision (:mod:`.light`);
    :class:`~fleetop.cli.light.Unsure` otherwise."""
    from fleetop.cli import light

    await gather_leader(reads, keys, report)
    kinds: tuple[Kind, ...] = ("services", "proxies")
    for kind in kinds:
        kvs, _ = await reads.list(keys.desired(kind))
        status_kvs, _ = await reads.list(keys.status(kind))
        statuses = light.read_statuses(kind, keys, status_kvs)
        entries = light.read_entries(kind, keys, kvs, statuses)
        if kind == "services":
            report.services, report.service_status = list(entries), dict(statuses)
        else:
            report.proxies, report.proxy_status = list(entries), dict(statuses)
    observed = await reads.get(keys.observed())
    report.observed = light.read_observation(observed.value) if observed is not None else None


async def gather_etcd(store: StoreReader, report: Report) -> None:
    from fleetop.models.observed import OperatorObservation

    await gather_leader(store.etcd, store.keys, report)
    services, _ = await store.list("services")
    report.services, report.service_status = list(services), dict(await store.statuses("services"))
    proxies, _ = await store.list("proxies")
    report.proxies, report.proxy_status = list(proxies), dict(await store.statuses("proxies"))
    observed = await store.etcd.get(store.keys.observed())
    if observed is not None:
        with contextlib.suppress(ValueError):
            report.observed = OperatorObservation.model_validate_json(observed.value)


async def gather(cli: CliContext, fleet_flag: str | None, *, light: bool = False) -> Report:
    """What ``status`` shows; ``light``: without the models when it can be (:func:`gather_etcd_light`)."""
    import asyncio

    from fleetop.cli.light import Unsure
    from fleetop.cli.statusview import Health, Report, now_utc

    settings = cli.settings()
    endpoint = fleet_endpoint(fleet_flag)
    fleet_task = asyncio.create_task(gather_fleet(endpoint))
    report = Report(now_utc(), Health(",".join(settings.endpoints), True), Health(endpoint, False))
    try:
        async with open_reads(cli) as reads:
            keys = Keys()
            try:
                if not light:
                    raise Unsure("asked for the models")
                await gather_etcd_light(reads, keys, report)
            except Unsure:
                await gather_etcd(store_reader(reads, keys), report)
    except FleetopError as exc:
        report.etcd = Health(",".join(settings.endpoints), False, str(exc))
        report.leader, report.services, report.proxies, report.observed = None, [], [], None
    report.fleet, report.machines, report.units, report.states = await fleet_task
    return report


def render_status(report: Report, output: str) -> str:
    from fleetop.cli.statusview import format_status, format_status_data

    return format_status(report) if output == "text" else format_status_data(report, output)


def status_once(cli: CliContext, output: str, fleet_flag: str | None, *, light: bool = False) -> None:
    """``fleetop status`` without ``--watch``: one screen; exit 1 when etcd or fleet is unreachable.
    ``light``: the text screen is read without the models when it can be (:func:`gather`)."""
    report = run(lambda: gather(cli, fleet_flag, light=light and output == "text"))
    echo(render_status(report, output))
    if not (report.etcd.healthy and report.fleet.healthy):
        raise SystemExit(1)


def parse_read_verb(verb: str, rest: Sequence[str]) -> tuple[list[str], dict[str, str]] | None:
    """(arguments, options) when ``rest`` is a plain form this module runs as typer would; None
    sends the command line to typer. Options take their value as the next word or after ``=``; each
    may be given once; ``--`` and every other word starting with ``-`` go to typer."""
    value_options = {
        "get": {"--output": "output", "-o": "output", "--fleet-endpoint": "fleet_endpoint"},
        "describe": {},
        "status": {"--output": "output", "-o": "output", "--fleet-endpoint": "fleet_endpoint"},
    }.get(verb)
    if value_options is None:
        return None
    args: list[str] = []
    options: dict[str, str] = {}
    words = list(rest)
    while words:
        word = words.pop(0)
        if not word.startswith("-") or word == "-":
            args.append(word)
            continue
        name, eq, value = word.partition("=")
        option = value_options.get(name)
        if option is None or option in options or (eq and name == "-o"):
            return None
        if not eq:
            if not words:
                return None
            value = words.pop(0)
        options[option] = value
    if verb == "get":
        valid = len(args) in (1, 2) and options.get("output", "table") in GET_OUTPUTS
        valid = valid and args[0].lower() not in FLEET_RESOURCES
    elif verb == "describe":
        valid = len(args) == 2
    else:
        valid = not args and options.get("output", "text") in STATUS_OUTPUTS
    return (args, options) if valid else None


PLUGIN_LOADER = "pydantic.plugin._loader"
"""The module pydantic asks for its plugins when it builds a model's validator (``get_plugins``)."""


class _NoPlugins:
    """Finds and loads :data:`PLUGIN_LOADER` as a module whose ``get_plugins()`` gives no plugin."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        return ModuleSpec(name, cast("Loader", self)) if name == PLUGIN_LOADER else None

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = "Stand-in for pydantic's plugin loader while every plugin is disabled."
        module.get_plugins = tuple  # type: ignore[attr-defined]


def skip_plugin_loader() -> None:
    """With every pydantic plugin disabled, answer pydantic's plugin question without its loader.

    The loader imports ``importlib.metadata`` (and through it ``email``, ``zipfile``, ``csv``) at its
    top, even when ``PYDANTIC_DISABLE_PLUGINS`` makes it return no plugin: 0.02-0.03 s of CPU, a
    sixth of a ``get`` that validates specs. Only when that variable disables every plugin, a finder
    gives pydantic, if it asks, a stand-in whose ``get_plugins()`` answers what pydantic's answers
    then: no plugin. pydantic takes nothing else from that module (a test reads its source to hold
    it to that)."""
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in ("__all__", "1", "true"):
        return
    if PLUGIN_LOADER not in sys.modules and not any(isinstance(f, _NoPlugins) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPlugins())


def run_read_verb(verb: str, flags: dict[str, str], rest: Sequence[str]) -> bool:
    """Run ``get``, ``describe`` or ``status`` when ``rest`` is a plain form (:func:`parse_read_verb`):
    True when done (exit status 0; errors raise SystemExit), False to leave it to typer."""
    parsed = parse_read_verb(verb, rest)
    if parsed is None:
        return False
    args, options = parsed
    # A spec no operator judged yet is validated with the models. pydantic looks for plugins (entry
    # points of every installed distribution) when it builds its first model, about 0.01 s of CPU, and
    # imports its loader even when told not to (:func:`skip_plugin_loader`); a read verb has no use
    # for a plugin. Set by the user, the variable is left as it is.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    skip_plugin_loader()
    cli = CliContext(flags={flag: flags.get(flag) for flag in GLOBAL_FLAGS})
    if verb == "get":
        name = args[1] if len(args) == 2 else None
        get_specs(cli, args[0], name, GET_OUTPUTS[options.get("output", "table")], light=True)
    elif verb == "describe":
        describe(cli, args[0], args[1], light=True)
    else:
        status_once(cli, options.get("output", "text"), options.get("fleet_endpoint"), light=True)
    return True
