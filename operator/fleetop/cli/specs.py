"""The declarative verbs: apply, get, describe, delete, scale, patch, diff, schema.

What only some of them use (reading documents, patches, waiting, the schemas) is imported by those, so
``get`` and ``describe`` do not pay for it; they and ``diff`` read through :func:`open_reader`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleetop.cli import reads
from fleetop.cli.common import cli_context, echo, open_reader, open_store, run
from fleetop.cli.output import OutputFormat, format_diff, spec_yaml
from fleetop.cli.reads import FLEET_RESOURCES, run_kind
from fleetop.errors import Conflict, InputError, NameTaken, NotFound, SpecInvalid
from fleetop.keys import KIND_NAMES
from fleetop.models.parse import encode_document, encode_spec, spec_document
from fleetop.store import Entry, Kind, Store, parse_stored

if TYPE_CHECKING:
    from fleetop.cli.documents import Document
    from fleetop.cli.patching import PatchType


class Output(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


class PatchKind(StrEnum):
    json = "json"
    merge = "merge"


def live_yaml(entry: Entry | None) -> str:
    if entry is None:
        return ""
    if entry.spec is not None:
        return spec_yaml(spec_document(entry.spec))
    return entry.raw.decode("utf-8", "replace") + "\n"


async def _apply_one(store: Store, document: Document, dry_run: bool) -> tuple[str, int]:
    """Apply one document: (what happened, the key's revision afterwards; 0 for a dry run)."""
    current = await store.get(document.kind, document.name)
    label = f"{KIND_NAMES[document.kind].lower()}/{document.name}"
    other: Kind = "proxies" if document.kind == "services" else "services"
    if current is None and await store.get(other, document.name) is not None:
        raise NameTaken(
            f"{KIND_NAMES[other].lower()} {document.name!r} exists: a service and a proxy cannot share a"
            f" name (both would run units named {document.name}@<n>.service)",
            where=document.where,
        )
    proposed = spec_yaml(spec_document(document.spec))
    if (
        current is not None
        and current.spec is not None
        and encode_spec(current.spec) == encode_spec(document.spec)
    ):
        return f"{label} unchanged\n", current.mod_revision
    if dry_run:
        diff = format_diff(store.keys.desired(document.kind, document.name), live_yaml(current), proposed)
        return diff + f"{label} {'configured' if current else 'created'} (dry run)\n", 0
    try:
        revision = await store.put(
            document.name, document.spec, prev_mod_revision=current.mod_revision if current else 0
        )
    except Conflict:
        raise Conflict(f"{label} changed while it was being applied") from None
    return f"{label} {'configured' if current else 'created'}\n", revision


def apply(
    ctx: typer.Context,
    filename: Annotated[str, typer.Option("--filename", "-f", help="JSON or YAML file, or - for stdin")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the diff, write nothing")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait until available; exit 1 on ProgressDeadlineExceeded")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds --wait waits at most")] = 600.0,
) -> None:
    """Create or update services and proxies from a file (kind: Service|Proxy, name, spec)."""
    cli = cli_context(ctx)
    documents = run_load(filename)

    async def body() -> None:
        async with open_store(cli) as store:
            targets = []
            for document in documents:
                text, revision = await _apply_one(store, document, dry_run)
                echo(text)
                targets.append((document.kind, document.name, revision))
            if wait and not dry_run:
                from rich.console import Console

                from fleetop.cli.wait import wait_for

                await wait_for(store, targets, timeout, Console(stderr=True))

    run(body)


def run_load(filename: str, *, error_code: int = 1) -> list[Document]:
    from fleetop.cli.documents import load_documents

    async def load() -> list[Document]:
        return load_documents(filename)

    return run(load, error_code=error_code)


def get(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(help="services | proxies | units | machines")],
    name: Annotated[str | None, typer.Argument(help="one name; all when omitted")] = None,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.table,
    fleet_endpoint: Annotated[
        str | None,
        typer.Option(
            "--fleet-endpoint",
            help="fleet API for units|machines, several comma-separated for failover (FLEETCTL_ENDPOINT)",
        ),
    ] = None,
) -> None:
    """List services or proxies with their status (like kubectl get), or fleet's units and machines
    (like fleetctl list-units / list-machines)."""
    cli = cli_context(ctx)
    if resource.lower() in FLEET_RESOURCES:
        from fleetop.cli.cluster import get_fleet_resource

        get_fleet_resource(FLEET_RESOURCES[resource.lower()], output == Output.wide, fleet_endpoint)
        return
    fmt: OutputFormat = output.value
    reads.get_specs(cli, resource, name, fmt)


def describe(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(help="service | proxy")],
    name: Annotated[str, typer.Argument()],
) -> None:
    """Show a spec, its conditions, its units and backends, and recent events."""
    reads.describe(cli_context(ctx), resource, name)


def delete(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(help="service | proxy")],
    names: Annotated[list[str], typer.Argument()],
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found")] = False,
) -> None:
    """Delete specs; the operator then removes what it ran for them."""
    cli = cli_context(ctx)
    kind = run_kind(resource)

    async def body() -> None:
        async with open_store(cli) as store:
            missing = []
            for name in names:
                if await store.delete(kind, name):
                    echo(f'{KIND_NAMES[kind].lower()} "{name}" deleted\n')
                elif not ignore_not_found:
                    missing.append(name)
            if missing:
                raise NotFound(f'{kind} "{", ".join(missing)}" not found')

    run(body)


async def _modify(store: Store, kind: Kind, name: str, change: Any) -> bool:
    """Read the stored document, change it, validate, and write it back with compare-and-swap."""
    entry = await store.require(kind, name)
    try:
        document = json.loads(entry.raw)
    except json.JSONDecodeError:
        raise SpecInvalid(
            [("$", "stored value is not JSON; fix it with apply")], where=f"key {entry.key}"
        ) from None
    if not isinstance(document, dict):
        raise SpecInvalid(
            [("$", "stored value is not an object; fix it with apply")], where=f"key {entry.key}"
        )
    changed = change(document)
    if changed == document:
        return False
    parse_stored(kind, name, encode_document(changed), where=f"key {entry.key} after the change")
    await store.put_raw(kind, name, changed, prev_mod_revision=entry.mod_revision)
    return True


def scale(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(help="service")],
    name: Annotated[str, typer.Argument()],
    replicas: Annotated[int, typer.Option("--replicas", min=0, help="the new replica count")],
) -> None:
    """Set a service's replica count, changing nothing else."""
    cli = cli_context(ctx)
    kind = run_kind(resource)

    async def body() -> None:
        if kind != "services":
            raise InputError("only services can be scaled this way; patch a proxy's replicas", where=resource)
        async with open_store(cli) as store:
            await _modify(store, kind, name, lambda doc: {**doc, "replicas": replicas})
        echo(f"service/{name} scaled\n")

    run(body)


def patch(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(help="service | proxy")],
    name: Annotated[str, typer.Argument()],
    patch_text: Annotated[str, typer.Option("--patch", "-p", help="the patch, as JSON")],
    patch_type: Annotated[PatchKind, typer.Option("--type")] = PatchKind.merge,
) -> None:
    """Patch a stored spec: --type merge (RFC 7386) or --type json (RFC 6902)."""
    from fleetop.cli.patching import apply_patch

    cli = cli_context(ctx)
    kind = run_kind(resource)
    ptype: PatchType = patch_type.value

    async def body() -> None:
        async with open_store(cli) as store:
            changed = await _modify(store, kind, name, lambda doc: apply_patch(doc, patch_text, ptype))
        label = f"{KIND_NAMES[kind].lower()}/{name}"
        echo(f"{label} patched\n" if changed else f"{label} patched (no change)\n")

    run(body)


def diff(
    ctx: typer.Context,
    filename: Annotated[str, typer.Option("--filename", "-f", help="JSON or YAML file, or - for stdin")],
) -> None:
    """Show what apply would change. Exit 0: no change, 1: changes, 2: error."""
    cli = cli_context(ctx)
    documents = run_load(filename, error_code=2)

    async def body() -> bool:
        changed = False
        async with open_reader(cli) as store:
            for document in documents:
                current = await store.get(document.kind, document.name)
                key = store.keys.desired(document.kind, document.name)
                text = format_diff(key, live_yaml(current), spec_yaml(spec_document(document.spec)))
                if text:
                    changed = True
                    echo(text)
        return changed

    if run(body, error_code=2):
        raise typer.Exit(1)


def schema(
    write: Annotated[bool, typer.Option("--write", help="write crds/*.schema.json")] = False,
    directory: Annotated[Path, typer.Option("--dir", help="where to write")] = Path("crds"),
) -> None:
    """Print the JSON Schemas of the specs and status, or write them to crds/."""
    from fleetop.schemas import schema_documents, write_schemas

    if write:
        for path in write_schemas(directory):
            echo(f"wrote {path}\n")
        return
    echo(json.dumps(schema_documents(), indent=2) + "\n")


def register(app: typer.Typer) -> None:
    for command in (apply, get, describe, delete, scale, patch, diff, schema):
        app.command(command.__name__)(command)
