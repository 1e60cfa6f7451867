"""fleet's HTTP API v1, served by ``fleetop node`` so that clients cannot tell it from fleetd.

Routing is done by hand rather than with Starlette's router because fleet's answers for odd paths and
methods are part of the contract (``fleet-observed.md`` §6): ``/fleet/v1`` and ``/`` are 405, a trailing
slash or an extra segment is 404, every error is a JSON error entity, and 201/204 carry no
Content-Type (except PATCH's 204). Every response says ``Server: fleetd/<version>``. The same handlers
answer under ``/v1-alpha``. Node-only endpoints (machine stop/start, journals) live under
``/fleetop-node/v1`` so they never collide with fleet's API.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fleetop.fleet.model import Unit, is_desired_state
from fleetop.fleet.units import UnitOption, check_option_values, parse_unit_name, unit_hash
from fleetop.node.engine import Engine
from fleetop.node.node_api import node_endpoint
from fleetop.node.registry import StoredUnit
from fleetop.node.scheduler import go_quote, validate_requirements
from fleetop.node.wire import (
    WireError,
    decode_metadata_ops,
    decode_unit_body,
    error_body,
    go_decode,
    go_json,
    page_body,
    page_from_query,
    paginate,
)

log = logging.getLogger(__name__)
FLEET_VERSION = "1.0.0"
SERVER_HEADER = f"fleetd/{FLEET_VERSION}"
PREFIXES = ("/fleet/v1", "/v1-alpha")
NODE_PREFIX = "/fleetop-node/v1/"
JSON = "application/json"
_METADATA_PATH = re.compile(r"/([^/]+)/metadata/([A-Za-z0-9_.-]+)")
_ONLY_GET = "only GET supported against this resource"


def json_response(status: int, body: Any) -> Response:
    return Response(go_json(body), status_code=status, media_type=JSON)


def error(status: int, message: str = "") -> Response:
    return Response(error_body(status, message), status_code=status, media_type=JSON)


def discovery_document() -> bytes:
    """fleet's ``schema/v1.json``, shipped unchanged with the package."""
    return resources.files("fleetop.node").joinpath("discovery-v1.json").read_bytes()


class FleetAPI:
    """The ASGI endpoint behind every path; dispatches like fleet's ``http.ServeMux``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = engine.registry
        self._discovery = discovery_document()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.dispatch(request)
        except Exception:
            log.exception("node API: %s %s failed", request.method, request.url.path)
            response = error(500)
        response.headers["Server"] = SERVER_HEADER
        if request.method == "HEAD":
            length = response.headers.get("content-length", "0")
            response = Response(b"", status_code=response.status_code, headers=dict(response.headers))
            response.headers["content-length"] = length
        await response(scope, receive, send)

    async def dispatch(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if path == "/":
            return error(405)
        if path.startswith(NODE_PREFIX):
            return await node_endpoint(self.engine, request, path[len(NODE_PREFIX) :])
        if path == "/metrics":
            return self.metrics() if method == "GET" else error(405, _ONLY_GET)
        for prefix in PREFIXES:
            if path == prefix:
                return error(405)
            if path.startswith(prefix + "/"):
                return await self.fleet_resource(request, path[len(prefix) + 1 :])
        return error(404)

    async def fleet_resource(self, request: Request, rest: str) -> Response:
        method = request.method
        collection, _, item = rest.partition("/")
        has_item = "/" in rest
        if collection == "units":
            if not has_item:
                return self.list_units(request) if method == "GET" else error(405, _ONLY_GET)
            if not item or "/" in item:
                return error(404)
            return await self.unit_item(request, item)
        if collection == "state":
            if not has_item:
                return self.list_states(request) if method == "GET" else error(405, _ONLY_GET)
            if not item or "/" in item:
                return error(404)
            return self.get_state(item) if method == "GET" else error(405, _ONLY_GET)
        if collection == "machines" and not has_item:
            if method == "GET":
                return self.list_machines(request)
            if method == "PATCH":
                return await self.patch_machines(request)
            return error(405, "only GET and PATCH supported against this resource")
        if collection == "discovery" and not has_item:
            if method != "GET":
                return error(405, _ONLY_GET)
            return Response(self._discovery, media_type=JSON)
        return error(404)

    # -- units -------------------------------------------------------------------------------------

    def unit_entity(self, unit: StoredUnit, *, listed: bool) -> Unit:
        """A stored unit as fleet shows it. Global units: currentState ``inactive`` in the list,
        neither currentState nor machineID on their own (fleet-observed §5)."""
        if self.engine.is_global(unit):
            return Unit(unit.name, unit.options, unit.desired_state, "inactive" if listed else None)
        return Unit(
            unit.name,
            unit.options,
            unit.desired_state,
            self.engine.current_state(unit.name),
            self.engine.placement(unit.name),
        )

    def list_units(self, request: Request) -> Response:
        try:
            page = page_from_query(request.query_params.getlist("nextPageToken"))
        except WireError as exc:
            return error(400, str(exc))
        units, token = paginate(self.registry.sorted_units(), page)
        items = [self.unit_entity(u, listed=True).to_json() for u in units]
        return json_response(200, page_body("units", items, token))

    async def unit_item(self, request: Request, name: str) -> Response:
        method = request.method
        if method == "GET":
            unit = self.registry.get(name)
            if unit is None:
                return error(404, "unit does not exist")
            return json_response(200, self.unit_entity(unit, listed=False).to_json())
        if method == "DELETE":
            if not await self.registry.delete_unit(name):
                return error(404, "unit does not exist")
            self.engine.notify(name)
            return Response(status_code=204)
        if method == "PUT":
            return await self.put_unit(request, name)
        return error(405, "only GET, PUT and DELETE supported against this resource")

    async def put_unit(self, request: Request, url_name: str) -> Response:
        content_types = request.headers.getlist("content-type")
        if len(content_types) != 1:
            return error(415, f"expected 1 Content-Type, got {len(content_types)}")
        if content_types[0].split(";")[0].strip().lower() != JSON:
            return error(415, "only acceptable Content-Type is application/json")
        try:
            body = decode_unit_body(go_decode(await request.body()))
        except WireError as exc:
            return error(400, f"unable to decode body: {exc}")
        name = body.name or url_name
        if name != url_name:
            return error(
                400,
                f"name in URL {go_quote(url_name)} differs from unit name in request body {go_quote(name)}",
            )
        try:
            parsed = parse_unit_name(name)
        except ValueError as exc:
            return error(400, str(exc))
        existing = self.registry.get(name)
        if existing is None or (body.options and unit_hash(body.options) != existing.hash):
            return await self.create_unit(name, body.options, body.desired_state, existing)
        if not body.desired_state:
            return error(409, "must provide DesiredState to update existing unit")
        if parsed.is_template and body.desired_state != "inactive":
            return error(400, f"cannot activate template {go_quote(name)}")
        if not is_desired_state(body.desired_state):
            return error(400, f"invalid desiredState {go_quote(body.desired_state)}")
        if body.desired_state != existing.desired_state:
            await self.registry.set_desired_state(name, body.desired_state)
            self.engine.notify(name)
        return Response(status_code=204)

    async def create_unit(
        self, name: str, options: tuple[UnitOption, ...], desired: str, existing: StoredUnit | None
    ) -> Response:
        """Create a unit, or re-create it with new content (keeping its desired state if none given)."""
        if existing is None and not options:
            return error(409, "unit does not exist and options field empty")
        try:
            check_option_values(options)
            validate_requirements(name, options)
        except ValueError as exc:
            return error(400, str(exc))
        state = desired or (existing.desired_state if existing else "inactive")
        if not is_desired_state(state):
            return error(500)
        await self.registry.put_unit(StoredUnit(name, tuple(options), state))
        self.engine.notify(name)
        return Response(b"", status_code=201)

    # -- state and machines ------------------------------------------------------------------------

    def list_states(self, request: Request) -> Response:
        query = request.query_params
        try:
            page = page_from_query(query.getlist("nextPageToken"))
        except WireError as exc:
            return error(400, str(exc))
        machine_id, unit_name = query.get("machineID", ""), query.get("unitName", "")
        states = [
            s
            for s in self.engine.states()
            if (not machine_id or s.machine_id == machine_id) and (not unit_name or s.name == unit_name)
        ]
        chosen, token = paginate(states, page)
        return json_response(200, page_body("states", [s.to_json() for s in chosen], token))

    def get_state(self, name: str) -> Response:
        """The undocumented single-state read; fleet panics when there is none, this answers 404."""
        for state in self.engine.states():
            if state.name == name:
                return json_response(200, state.to_json())
        return error(404, "unit state does not exist")

    def list_machines(self, request: Request) -> Response:
        try:
            page = page_from_query(request.query_params.getlist("nextPageToken"))
        except WireError as exc:
            return error(400, str(exc))
        machines = [m.to_json() for m in self.engine.live_machines()]
        items, token = paginate(machines, page)
        return json_response(200, page_body("machines", items, token))

    async def patch_machines(self, request: Request) -> Response:
        try:
            ops = decode_metadata_ops(go_decode(await request.body()))
        except WireError as exc:
            return error(400, str(exc))
        edits: list[tuple[str, str, str | None]] = []
        for op in ops:
            if op.op not in ("add", "remove", "replace"):
                return error(400, "invalid op: expect add, remove, or replace")
            match = _METADATA_PATH.fullmatch(op.path)
            if match is None:
                return error(400, "machine metadata path invalid")
            if op.op != "remove" and not op.value:
                return error(400, "invalid value: add and replace require a value")
            edits.append((match[1], match[2], None if op.op == "remove" else op.value))
        if edits:
            self.registry.apply_metadata_ops(edits)
            self.engine.notify()
        return Response(status_code=204, headers={"Content-Type": JSON})

    def metrics(self) -> Response:
        units = self.registry.sorted_units()
        lines = [
            "# HELP fleetop_node_units Units in the node's registry, by desired state.",
            "# TYPE fleetop_node_units gauge",
            *(
                f'fleetop_node_units{{desired_state="{s}"}} {sum(u.desired_state == s for u in units)}'
                for s in ("inactive", "loaded", "launched")
            ),
            "# HELP fleetop_node_machines Live machines.",
            "# TYPE fleetop_node_machines gauge",
            f"fleetop_node_machines {len(self.engine.live_machine_ids())}",
            "# HELP fleetop_node_unit_states Unit states reported by the node's agents.",
            "# TYPE fleetop_node_unit_states gauge",
            f"fleetop_node_unit_states {len(self.engine.states())}",
            "# HELP fleetop_node_reconcile_passes_total Passes of the engine (scheduling) run.",
            "# TYPE fleetop_node_reconcile_passes_total counter",
            f"fleetop_node_reconcile_passes_total {self.engine.passes}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def create_app(engine: Engine) -> Starlette:
    """The node's ASGI app: one catch-all route, so fleet's own 404/405 rules apply everywhere."""
    return Starlette(routes=[Route("/{path:path}", FleetAPI(engine))])
