"""The node's own endpoints, under ``/fleetop-node/v1/``, outside fleet's API so they never collide:

- ``GET  machines``                   every modelled machine, stopped ones included
- ``POST machines/<id>/stop|start``   take a machine out of the cluster or bring it back
- ``GET  journal/<unit>?n=N``         the last N lines of a unit's journal (``machineID=`` to choose)
- ``GET  journal/<unit>?offset=K``    the journal from byte K (``X-Fleetop-Offset`` says where to go on)

``<id>`` may be a full machine id, a unique prefix of one, or the machine's 1-based index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from fleetop.errors import NotFound
from fleetop.node import journal
from fleetop.node.wire import error_body, go_json

if TYPE_CHECKING:
    from fleetop.node.engine import Engine

MAX_JOURNAL_BYTES = 4 * 1024 * 1024
OFFSET_HEADER = "X-Fleetop-Offset"


def _error(status: int, message: str = "") -> Response:
    return Response(error_body(status, message), status_code=status, media_type="application/json")


def tail_lines(data: bytes, count: int) -> bytes:
    """The last ``count`` lines of ``data`` (all of it when count <= 0)."""
    if count <= 0:
        return data
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


def _int_param(request: Request, name: str, default: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return None


async def _journal(engine: Engine, request: Request, unit: str) -> Response:
    lines = _int_param(request, "n", 10)
    offset = _int_param(request, "offset", -1)
    if lines is None or offset is None:
        return _error(400, "n and offset must be integers")
    machine = request.query_params.get("machineID") or None
    if machine is not None:
        machine = engine.resolve_machine(machine)
        if machine is None:
            return _error(404, "machine does not exist")
    try:
        data, end = journal.read_from(engine.journal_path(unit, machine), max(offset, 0), MAX_JOURNAL_BYTES)
    except (FileNotFoundError, NotFound):
        return _error(404, "no journal for this unit")
    if offset < 0:
        data = tail_lines(data, lines)
    return Response(data, media_type="text/plain", headers={OFFSET_HEADER: str(end)})


def _machines(engine: Engine) -> list[dict[str, Any]]:
    out = []
    for machine in engine.machines.values():
        view = engine.machine_view(machine.id).to_json()
        view["index"] = machine.index
        view["stopped"] = machine.id in engine.registry.stopped_machines
        out.append(view)
    return out


async def node_endpoint(engine: Engine, request: Request, rest: str) -> Response:
    """Dispatch ``/fleetop-node/v1/<rest>``."""
    parts = rest.split("/")
    method = request.method
    if parts == ["machines"]:
        if method != "GET":
            return _error(405, "only GET supported against this resource")
        return Response(go_json({"machines": _machines(engine)}), media_type="application/json")
    if len(parts) == 3 and parts[0] == "machines" and parts[2] in ("stop", "start"):
        if method != "POST":
            return _error(405, "only POST supported against this resource")
        machine_id = engine.resolve_machine(parts[1])
        if machine_id is None:
            return _error(404, "machine does not exist")
        if parts[2] == "stop":
            await engine.stop_machine(machine_id)
        else:
            await engine.start_machine(machine_id)
        return Response(status_code=204)
    if len(parts) == 2 and parts[0] == "journal" and parts[1]:
        if method != "GET":
            return _error(405, "only GET supported against this resource")
        return await _journal(engine, request, parts[1])
    return _error(404)
