"""``fleetop manifests render``: unit files and example specs for a real fleet cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetop.cli.common import echo, run
from fleetop.cli.manifestrender import MANIFESTS_DIR, load_values, render, write

manifests_app = typer.Typer(
    help="Charts-like manifests for running fleetop on a real fleet cluster.", no_args_is_help=True
)


@manifests_app.command("render")
def render_command(
    values: Annotated[
        Path | None, typer.Option("--values", "-f", help="your values, merged over the defaults")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="write files here; print them when omitted")
    ] = None,
    source: Annotated[Path, typer.Option("--source", help="the manifests directory")] = MANIFESTS_DIR,
) -> None:
    """Render units/*.service and specs/*.yaml from values."""

    async def body() -> None:
        rendered = render(load_values(source, values), source)
        if out is None:
            for item in rendered:
                echo(f"# --- {item.path}\n{item.text}")
            return
        for path in write(rendered, out):
            echo(f"wrote {path}\n")

    run(body)


def register(app: typer.Typer) -> None:
    app.add_typer(manifests_app, name="manifests")
