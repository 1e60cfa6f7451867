"""Pure formatting for the CLI: every ``format_*`` returns text, the commands print it.

Keeping formatting pure makes the output testable without etcd, and keeps tables, JSON and YAML
consistent across ``get``, ``describe`` and ``status``.
"""

from __future__ import annotations

import difflib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

if TYPE_CHECKING:  # judged specs are shown without the models (cli/light.py, cli/lightdescribe.py)
    from fleetop.cli import light, lightdescribe
    from fleetop.models import Event, ProxySpec, ProxyStatus, ServiceSpec, ServiceStatus
    from fleetop.store import Entry, StatusEntry

    AnyEntry: TypeAlias = Entry | light.Entry
    AnyStatusEntry: TypeAlias = StatusEntry | light.StatusEntry[light.ServiceStatus | light.ProxyStatus]
    AnyEvent: TypeAlias = Event | lightdescribe.Event

OutputFormat = Literal["table", "wide", "json", "yaml"]


def render_table(columns: Sequence[str], rows: Iterable[Sequence[str]], *, width: int = 200) -> str:
    """A borderless, kubectl-looking table as plain text: columns two spaces apart, each as wide as
    its widest cell, trailing blanks cut. :func:`plain_table` writes the tables that fit within
    ``width`` and hold plain text (nearly all of them) without importing rich; rich lays out the rest
    (folding cells to fit, reading its markup), and its layout is the reference the plain one is
    tested against."""
    rows = [list(row) for row in rows]
    plain = plain_table(columns, rows, width=width)
    return plain if plain is not None else rich_table(columns, rows, width=width)


def rich_table(columns: Sequence[str], rows: Iterable[Sequence[str]], *, width: int = 200) -> str:
    """The table laid out by rich (cells folded to fit ``width``, markup read): the reference layout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=width, no_color=True, highlight=False, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


_PLAIN_CELL = re.compile(r"[ -Z\\-~\n→…]*")
"""What :func:`plain_table` lays out as rich would: printable ASCII but ``[`` (rich's markup), a few
one-column arrows and dots, and line breaks between non-empty lines."""
_EMOJI_CODE = re.compile(r":(\S*?)(?:(?:\-)(emoji|text))?:")
"""rich's pattern of an emoji code (``:smile:``), which it replaces when the name is one it knows."""
_DIGIT_EMOJI = frozenset({"100", "1234"})
"""The emoji names of digits alone; a time's ``:00:`` is none."""


def _plain_cell(text: str) -> bool:
    if not _PLAIN_CELL.fullmatch(text):
        return False
    lines = text.split("\n")
    for line in lines:
        if line != line.strip(" ") or "  " in line or (not line and len(lines) > 1):
            return False  # blanks rich wraps away; rich's lines drop a trailing empty one
    return all(
        match.group(1).isdigit() and match.group(1) not in _DIGIT_EMOJI and not match.group(2)
        for match in _EMOJI_CODE.finditer(text)
    )


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, width: int = 200) -> str | None:
    """The table :func:`render_table` prints, laid out here; None when rich must lay it out: a cell
    that is not plain text (:data:`_PLAIN_CELL`, emoji codes, runs of blanks) or a table wider than
    ``width``."""
    cells = [list(columns), *(list(row) for row in rows)]
    if any(len(row) != len(columns) or not all(_plain_cell(c) for c in row) for row in cells):
        return None
    if any("\n" in column for column in columns):
        return None  # rich aligns a header's lines to the bottom
    widths = [max(len(line) for row in cells for line in row[i].split("\n")) for i in range(len(columns))]
    if sum(widths) + 2 * (len(widths) - 1) > width:
        return None
    out = []
    for row in cells:
        parts = [cell.split("\n") for cell in row]
        for n in range(max(len(p) for p in parts)):
            line = "  ".join(
                (p[n] if n < len(p) else "").ljust(w) for p, w in zip(parts, widths, strict=True)
            )
            out.append(line.rstrip())
    return "\n".join(out) + "\n"


def to_yaml(data: Any) -> str:
    import yaml  # only the YAML outputs and ``describe`` pay for it

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def entry_object(entry: Entry, status: StatusEntry | None) -> dict[str, Any]:
    """The document ``get -o json|yaml`` prints; ``apply -f`` takes it back (metadata/status ignored)."""
    from fleetop.keys import KIND_NAMES
    from fleetop.models.parse import spec_document

    obj: dict[str, Any] = {"kind": KIND_NAMES[entry.kind], "name": entry.name}
    obj["metadata"] = {
        "key": entry.key,
        "createRevision": entry.create_revision,
        "modRevision": entry.mod_revision,
    }
    if entry.spec is not None:
        obj["spec"] = spec_document(entry.spec)
    else:
        assert entry.error is not None
        obj["metadata"]["invalid"] = entry.error.all_messages()
        obj["metadata"]["raw"] = entry.raw.decode("utf-8", "replace")
    if status is not None and status.status is not None:
        obj["status"] = status.status.model_dump(mode="json", by_alias=True)
    return obj


def serialize(objects: list[dict[str, Any]], fmt: OutputFormat, *, single: bool) -> str:
    data: Any = objects[0] if single and len(objects) == 1 else {"kind": "List", "items": objects}
    return to_json(data) if fmt == "json" else to_yaml(data)


def _service_state(entry: AnyEntry, status: ServiceStatus | light.ServiceStatus | None) -> str:
    if entry.error is not None:
        return f"Invalid: {entry.error.path}: {entry.error.message}"
    if status is None:
        return "Pending"
    if status.observed_generation != entry.mod_revision:
        return "Pending"
    lost = next((c for c in status.conditions if c.status == "Unknown" and c.reason != "Paused"), None)
    if lost is not None:  # the operator cannot see what it judges from (fleet unreachable)
        return f"Unknown: {lost.reason}"
    for kind in ("Invalid", "Degraded"):
        cond = status.condition(kind)
        if cond is not None and cond.status == "True":
            return f"{kind}: {cond.reason}"
    progressing = status.condition("Progressing")
    if progressing is not None and progressing.status == "False":
        return f"Stalled: {progressing.reason}"
    available = status.condition("Available")
    if available is not None and available.status == "True":
        return "Available"
    return "Progressing"


def service_rows(
    entries: Sequence[AnyEntry], statuses: Mapping[str, AnyStatusEntry], wide: bool
) -> list[list[str]]:
    """The rows of ``get services``: ``entries`` and ``statuses`` are the services' own."""
    rows: list[list[str]] = []
    for entry in entries:
        st = statuses.get(entry.name)
        status = cast("ServiceStatus | light.ServiceStatus | None", st.status if st is not None else None)
        spec = cast("ServiceSpec | light.ServiceSpec | None", entry.spec)
        desired = str(spec.replicas) if spec else "-"
        counts = status.replicas if status else None
        row = [
            entry.name,
            desired,
            f"{counts.ready}/{counts.desired}" if counts else "-",
            str(counts.updated) if counts else "-",
            str(counts.running) if counts else "-",
            _service_state(entry, status),
        ]
        if wide:
            row += _service_wide(cast("ServiceSpec | None", spec), entry)
        rows.append(row)
    return rows


def _service_wide(spec: ServiceSpec | None, entry: AnyEntry) -> list[str]:
    if spec is None:
        return ["-", "-", "-", str(entry.mod_revision)]
    placement = []
    if spec.placement.spread:
        placement.append("spread")
    if spec.placement.global_:
        placement.append("global")
    placement += [f"{k}={'|'.join(v)}" for k, v in spec.placement.machine_metadata.items()]
    if spec.placement.machine_of:
        placement.append(f"machineOf={spec.placement.machine_of}")
    discovery = spec.registration_prefix(entry.name) + (" (sidekick)" if spec.discovery.sidekick else "")
    ports = f"{spec.ports.base}-{spec.ports.base + max(spec.replicas, 1) - 1}" if spec.ports else "-"
    return [ports, ",".join(placement) or "-", discovery, str(entry.mod_revision)]


SERVICE_COLUMNS = ["NAME", "DESIRED", "READY", "UP-TO-DATE", "RUNNING", "STATUS"]
SERVICE_WIDE = ["PORTS", "PLACEMENT", "DISCOVERY", "REVISION"]
PROXY_COLUMNS = ["NAME", "KIND", "LISTEN", "ROUTES", "BACKENDS", "AGENTS", "STATUS"]
PROXY_WIDE = ["MANAGED", "REPLICAS", "CONFIG", "REVISION"]


def _proxy_state(entry: AnyEntry, status: ProxyStatus | light.ProxyStatus | None) -> str:
    if entry.error is not None:
        return f"Invalid: {entry.error.path}: {entry.error.message}"
    if status is None:
        return "Pending"
    if status.last_error:
        return f"Error: {status.last_error.splitlines()[0][:60]}"
    if status.agents.total and status.agents.on_newest == status.agents.total:
        return "Applied"
    return "Publishing" if status.config_hash else "Pending"


def proxy_rows(
    entries: Sequence[AnyEntry], statuses: Mapping[str, AnyStatusEntry], wide: bool
) -> list[list[str]]:
    """The rows of ``get proxies``: ``entries`` and ``statuses`` are the proxies' own."""
    rows: list[list[str]] = []
    for entry in entries:
        st = statuses.get(entry.name)
        status = cast("ProxyStatus | light.ProxyStatus | None", st.status if st is not None else None)
        spec = cast("ProxySpec | None", entry.spec)
        row = [
            entry.name,
            spec.kind if spec else "-",
            str(spec.listen) if spec else "-",
            ",".join(_route_text(r.service, r.host, r.path) for r in spec.routes) if spec else "-",
            str(sum(status.backends.values())) if status else "-",
            f"{status.agents.on_newest}/{status.agents.total}" if status else "-",
            _proxy_state(entry, status),
        ]
        if wide:
            row += [
                str(spec.managed).lower() if spec else "-",
                str(spec.replicas) if spec else "-",
                status.config_hash[:12] if status and status.config_hash else "-",
                str(entry.mod_revision),
            ]
        rows.append(row)
    return rows


def _route_text(service: str, host: str | None, path: str | None) -> str:
    return f"{host or '*'}{path or '/'}→{service}"


def format_get(
    entries: Sequence[AnyEntry], statuses: Mapping[str, AnyStatusEntry], fmt: OutputFormat, *, single: bool
) -> str:
    """``get``'s output; JSON and YAML take the models' entries (:mod:`fleetop.store`)."""
    if fmt in ("json", "yaml"):
        objects = [
            entry_object(cast("Entry", e), cast("StatusEntry | None", statuses.get(e.name))) for e in entries
        ]
        return serialize(objects, fmt, single=single)
    if not entries:
        return "No resources found.\n"
    wide = fmt == "wide"
    if entries[0].kind == "services":
        columns = SERVICE_COLUMNS + (SERVICE_WIDE if wide else [])
        return render_table(columns, service_rows(entries, statuses, wide))
    columns = PROXY_COLUMNS + (PROXY_WIDE if wide else [])
    return render_table(columns, proxy_rows(entries, statuses, wide))


def format_diff(key: str, live: str, proposed: str) -> str:
    """A unified diff of two YAML texts, empty when equal."""
    lines = difflib.unified_diff(
        live.splitlines(keepends=True),
        proposed.splitlines(keepends=True),
        fromfile=f"live{key}",
        tofile=f"file{key}",
    )
    return "".join(lines)


def spec_yaml(document: dict[str, Any] | None) -> str:
    return "" if document is None else to_yaml(document)


def format_events(events: Sequence[AnyEvent]) -> str:
    if not events:
        return "Events: <none>\n"
    rows = [
        [
            e.type,
            e.reason,
            f"{e.kind.lower()}/{e.name}",
            e.time,
            f"x{e.count}" if e.count > 1 else "",
            e.message,
        ]
        for e in events
    ]
    return render_table(["TYPE", "REASON", "OBJECT", "TIME", "", "MESSAGE"], rows)


def _count(event: Event) -> str:
    return f"x{event.count}" if event.count > 1 else ""


def format_event_line(event: Event) -> str:
    """One event as ``events --follow`` prints it as it arrives (fixed columns, no header)."""
    obj = f"{event.kind.lower()}/{event.name}"
    return f"{event.type:<8} {event.reason:<22} {obj:<24} {event.time}  {_count(event):<4} {event.message}\n"


def format_conditions(conditions: Sequence[Any]) -> str:
    if not conditions:
        return "Conditions: <none>\n"
    rows = [[c.type, c.status, c.reason, c.last_transition_time, c.message] for c in conditions]
    return render_table(["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], rows)


def _field(label: str, value: object) -> str:
    return f"{label + ':':<22}{value}\n"


def format_describe(
    entry: Entry | lightdescribe.Entry,
    status: StatusEntry | lightdescribe.StatusEntry | None,
    events: Sequence[AnyEvent],
) -> str:
    """``fleetop describe service|proxy NAME``: spec, conditions, units, backends, recent events. The
    entry, status and events are the models' (:mod:`fleetop.store`) or, for a spec the operator judged
    and stored in the normal form, the light reader's (:mod:`fleetop.cli.lightdescribe`)."""
    from fleetop.keys import KIND_NAMES

    out = [_field("Name", entry.name), _field("Kind", KIND_NAMES[entry.kind]), _field("Key", entry.key)]
    out.append(_field("Revision", entry.mod_revision))
    if entry.error is not None:
        out.append("Invalid spec:\n")
        out += [f"  {line}\n" for line in entry.error.all_messages()]
        out.append(f"Raw value:\n  {entry.raw.decode('utf-8', 'replace')}\n")
    else:
        out.append("Spec:\n")
        out += [f"  {line}\n" for line in spec_yaml(_spec_document(entry)).splitlines()]
    out.append(_describe_status(entry.kind, status, entry.mod_revision))
    out.append(format_events(events))
    return "".join(out)


def _spec_document(entry: Entry | lightdescribe.Entry) -> dict[str, Any]:
    """The spec as the models normalise it: the light entry holds it as stored (the operator vouched
    that it is the normal form)."""
    from fleetop.cli.lightdescribe import Entry as JudgedEntry

    if isinstance(entry, JudgedEntry):
        return entry.document
    from fleetop.models.parse import spec_document

    assert entry.spec is not None
    return spec_document(entry.spec)


def _describe_status(kind: str, status: StatusEntry | lightdescribe.StatusEntry | None, revision: int) -> str:
    if status is None:
        return "Status:               <none> (the operator has not reported on this yet)\n"
    if status.status is None:
        return f"Status:               unreadable: {status.error}\n"
    st = status.status
    out = [
        _field(
            "Observed revision",
            f"{st.observed_generation}"
            + ("" if st.observed_generation == revision else f" (spec is at {revision})"),
        )
    ]
    if kind == "services":
        service = cast("ServiceStatus | lightdescribe.ServiceStatus", st)
        r = service.replicas
        out.append(
            _field(
                "Replicas",
                f"{r.desired} desired | {r.launched} launched | {r.running} running | "
                f"{r.ready} ready | {r.updated} updated",
            )
        )
        if service.template:
            out.append(_field("Template", service.template))
    else:
        proxy = cast("ProxyStatus | lightdescribe.ProxyStatus", st)
        out.append(_field("Config", f"{proxy.config_hash[:12] or '-'} (generation {proxy.generation})"))
        out.append(_field("Agents", f"{proxy.agents.on_newest}/{proxy.agents.total} on the newest config"))
        out.append(
            _field("Backends", ", ".join(f"{k}={v}" for k, v in sorted(proxy.backends.items())) or "-")
        )
        if proxy.skipped_registrations:
            out.append(_field("Skipped", f"{proxy.skipped_registrations} registration(s) (see the events)"))
    if st.last_error:
        out.append(_field("Last error", st.last_error))
    out.append(format_conditions(st.conditions))
    if st.units:
        rows = [
            [
                u.name,
                u.machine or "-",
                u.desired_state,
                u.current_state or "-",
                f"{u.load_state or '-'}/{u.active_state or '-'}/{u.sub_state or '-'}",
                "yes" if u.ready else "no",
                "yes" if u.registered else "no",
                str(u.restarts),
            ]
            for u in st.units
        ]
        headers = ["UNIT", "MACHINE", "DESIRED", "CURRENT", "SYSTEMD", "READY", "REGISTERED", "RESTARTS"]
        out.append(render_table(headers, rows))
    if kind == "services":
        service = cast("ServiceStatus | lightdescribe.ServiceStatus", st)
        if service.backends:
            out.append(render_table(["BACKEND", "ADDRESS"], [[b.key, b.address] for b in service.backends]))
        if service.invalid_registrations:
            out.append(_field("Invalid registrations", service.invalid_registrations))
    return "".join(out)
