"""fleetop node answers fleet's API v1 exactly as real fleet did on the wire (fleet-observed.md §4-7, 9,
11, 13). A real node runs in-process on a real unix socket; checks go through FleetClient, and through
raw requests (fleetop.http) where exact bytes and headers matter."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fleetop.errors import FleetAPIError
from fleetop.fleet.client import FleetClient, RetryPolicy
from fleetop.fleet.model import MetadataOp
from fleetop.fleet.units import UnitOption, unit_hash
from fleetop.http import HttpResponse, raw_request
from fleetop.node.server import NodeConfig, run_node
from waiting import eventually

SLEEP = [UnitOption("Service", "ExecStart", "/bin/sleep 1000")]
HELLO = [UnitOption("Unit", "Description", "hello"), *SLEEP]
METADATA = ("role=web,zone=a", "role=db,zone=b", "role=web,zone=b")

# One node for the module (starting one per test would dominate the run time); ``clean`` resets it.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Node:
    endpoint: str
    client: FleetClient
    state_dir: Path

    async def raw(
        self, method: str, path: str, body: Any = None, *, content_type: str | None = "application/json"
    ) -> HttpResponse:
        content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if content_type else {}
        return await raw_request(self.endpoint, method, path, content=content, headers=headers)

    async def put(self, name: str, body: Any, **kw: Any) -> HttpResponse:
        return await self.raw("PUT", f"/fleet/v1/units/{name}", body, **kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_node() -> AsyncIterator[Node]:
    base = Path(tempfile.mkdtemp(prefix="fn-"))
    config = NodeConfig(state_dir=base / "state", machines=3, metadata=METADATA, resync_interval=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(run_node(config, stop=stop, install_signal_handlers=False))
    retry = RetryPolicy(attempts=100, initial=0.02, maximum=0.1, jitter=0.0, total=20.0)
    client = FleetClient(config.listen_url, retry=retry)
    try:
        await client.list_machines()
        yield Node(config.listen_url, client, config.state_dir)
    finally:
        await client.aclose()
        stop.set()
        await asyncio.wait_for(task, 30)
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module")
async def node(shared_node: Node) -> AsyncIterator[Node]:
    """The shared node, emptied after each test: no units, no states, metadata as configured."""
    yield shared_node
    client = shared_node.client
    await asyncio.gather(*(client.destroy_unit(u.name) for u in await client.list_units()))
    ops = []
    for machine in await client.list_machines():
        index = int(machine.primary_ip.rsplit(".", 1)[1])
        expected = dict(item.split("=") for item in METADATA[index - 1].split(","))
        ops += [MetadataOp("add", machine.id, k, v) for k, v in expected.items()]
        ops += [MetadataOp("remove", machine.id, k) for k in machine.metadata if k not in expected]
    await client.patch_machine_metadata(ops)

    async def drained() -> bool:
        return not await client.list_states()

    await eventually(drained)


def error_json(code: int, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


# -- HTTP conventions and empty collections ----------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/fleet/v1/units", "/fleet/v1/state", "/v1-alpha/units", "/fleet/v1/state?unitName=x"]
)
async def test_empty_collections_are_empty_objects(node: Node, path: str) -> None:
    resp = await node.raw("GET", path)
    assert resp.status == 200
    assert resp.body == b"{}"
    assert resp.header("content-type") == "application/json"
    assert resp.header(
        "server",
    ).startswith("fleetd/")


async def test_unit_entity_exact_bytes_and_headers(node: Node) -> None:
    created = await node.put("hello.service", {"options": [o.to_json() for o in HELLO]})
    assert created.status == 201
    assert created.header("content-type") is None
    assert created.header("content-length") == "0"
    assert created.header("server").startswith("fleetd/")
    resp = await node.raw("GET", "/fleet/v1/units/hello.service")
    assert resp.body == (
        b'{"currentState":"inactive","desiredState":"inactive","name":"hello.service","options":['
        b'{"name":"Description","section":"Unit","value":"hello"},'
        b'{"name":"ExecStart","section":"Service","value":"/bin/sleep 1000"}]}'
    )
    listed = await node.raw("GET", "/fleet/v1/units")
    assert listed.body == b'{"units":[' + resp.body + b"]}"
    deleted = await node.raw("DELETE", "/fleet/v1/units/hello.service")
    assert (deleted.status, deleted.body, deleted.header("content-type")) == (204, b"", None)
    assert (await node.raw("GET", "/fleet/v1/units/hello.service")).body == error_json(
        404, "unit does not exist"
    )


async def test_options_come_back_regrouped_and_empty_values_lose_value(node: Node) -> None:
    sent = [
        UnitOption("Service", "ExecStart", "/bin/sleep 1000"),
        UnitOption("Unit", "Description", "x"),
        UnitOption("Service", "Restart", "always"),
        UnitOption("Service", "Environment", ""),
    ]
    assert await node.client.create_unit("rg.service", sent) == "created"
    unit = await node.client.get_unit("rg.service")
    assert unit is not None
    assert [o.name for o in unit.options] == ["ExecStart", "Restart", "Environment", "Description"]
    raw = json.loads((await node.raw("GET", "/fleet/v1/units/rg.service")).body)
    assert raw["options"][2] == {"name": "Environment", "section": "Service"}
    reordered = [sent[0], sent[2], sent[3], sent[1]]  # the stored order: same unit file
    assert await node.client.create_unit("rg.service", reordered, "loaded") == "updated"
    assert await node.client.create_unit("rg.service", reordered) == "unchanged"
    no_section = await node.put("ns.service", {"options": [{"name": "ExecStart", "value": "/bin/true"}]})
    assert no_section.status == 201
    body = json.loads((await node.raw("GET", "/fleet/v1/units/ns.service")).body)
    assert body["options"] == [{"name": "ExecStart", "value": "/bin/true"}]


# -- PUT status codes --------------------------------------------------------------------------------

OPTS = [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 1000"}]


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("new.service", {"desiredState": "launched"}, 409, "unit does not exist and options field empty"),
        (
            "new.service",
            {"options": [], "desiredState": "launched"},
            409,
            "unit does not exist and options field empty",
        ),
        ("new.service", {"options": OPTS, "desiredState": "running"}, 500, ""),
        (
            "mismatch.service",
            {"name": "other.service", "options": OPTS},
            400,
            'name in URL "mismatch.service" differs from unit name in request body "other.service"',
        ),
        ("nodot", {"options": OPTS}, 400, 'unit name must contain "."'),
        ("foo.bar", {"options": OPTS}, 400, 'invalid unit type: "bar"'),
        ("@foo.service", {"options": OPTS}, 400, 'unit name cannot start in "@"'),
        ("fo%20o.service", {"options": OPTS}, 400, "invalid character ' ' in unit name"),
        ("x@.mount", {"options": OPTS}, 400, 'invalid unit type for template: "mount"'),
        ("a" * 250 + ".service", {"options": OPTS}, 400, "unit name exceeds maximum length (256)"),
        ("dot.", {"options": OPTS}, 400, 'unit name cannot end in "."'),
        (
            "mc.service",
            {
                "options": [
                    *OPTS,
                    {"section": "X-Fleet", "name": "MachineID", "value": "abc"},
                    {"section": "X-Fleet", "name": "Conflicts", "value": "x*"},
                ]
            },
            400,
            "MachineID cannot be used with Conflicts",
        ),
        (
            "gp.service",
            {
                "options": [
                    *OPTS,
                    {"section": "X-Fleet", "name": "Global", "value": "true"},
                    {"section": "X-Fleet", "name": "MachineOf", "value": "x.service"},
                ]
            },
            400,
            "Global cannot be used with Peers",
        ),
        (
            "pc.service",
            {
                "options": [
                    *OPTS,
                    {"section": "X-Fleet", "name": "MachineOf", "value": "x.service"},
                    {"section": "X-Fleet", "name": "Conflicts", "value": "x.service"},
                ]
            },
            400,
            'unresolvable requirements: peer "x.service" matches conflict "x.service"',
        ),
        (
            "long.service",
            {"options": [{"section": "Service", "name": "ExecStart", "value": "/bin/echo " + "x" * 2100}]},
            400,
            "line too long (max 2048 bytes)",
        ),
        (
            "dec.service",
            {"desiredState": 1},
            400,
            "unable to decode body: json: cannot unmarshal number into Go struct field "
            "Unit.desiredState of type string",
        ),
        (
            "dec.service",
            {"options": {"a": 1}},
            400,
            "unable to decode body: json: cannot unmarshal object into Go struct field Unit.options of type "
            "[]*schema.UnitOption",
        ),
    ],
)
async def test_put_errors(node: Node, name: str, body: Any, status: int, message: str) -> None:
    resp = await node.put(name, body)
    assert resp.status == status
    assert resp.body == error_json(status, message)
    assert resp.header("content-type") == "application/json"
    listed = await node.raw("GET", "/fleet/v1/units")
    assert listed.body == b"{}"


async def test_put_malformed_json_and_content_types(node: Node) -> None:
    resp = await node.put("x.service", b'{"options": [')
    assert (resp.status, resp.body) == (400, error_json(400, "unable to decode body: unexpected EOF"))
    resp = await node.put("x.service", {"options": OPTS}, content_type="text/plain")
    assert (resp.status, resp.body) == (
        415,
        error_json(415, "only acceptable Content-Type is application/json"),
    )
    resp = await node.put("x.service", {"options": OPTS}, content_type=None)
    assert (resp.status, resp.body) == (415, error_json(415, "expected 1 Content-Type, got 0"))
    resp = await node.put("x.service", {"options": OPTS}, content_type="application/json; charset=utf-8")
    assert resp.status == 201


async def test_put_lifecycle_status_codes(node: Node) -> None:
    body = {
        "OPTIONS": [{"Section": "Service", "NAME": "ExecStart", "value": "/bin/sleep 1000"}],
        "DesiredState": "inactive",
        "currentState": "launched",
        "machineID": "f" * 32,
        "unknown": 1,
    }
    assert (await node.put("web%40x.service", body)).status == 201
    unit = await node.client.get_unit("web@x.service")
    assert unit is not None and unit.machine_id is None and unit.current_state == "inactive"
    resp = await node.put("web@x.service", {})
    assert (resp.status, resp.body) == (
        409,
        error_json(409, "must provide DesiredState to update existing unit"),
    )
    assert (await node.put("web@x.service", {"options": OPTS})).status == 409
    assert (await node.put("web@x.service", {"options": OPTS, "desiredState": "loaded"})).status == 204
    assert (await node.put("web@x.service", {"desiredState": "inactive"})).status == 204
    bogus = await node.put("web@x.service", {"desiredState": "bogus"})
    assert bogus.status == 400  # fleet stores it and poisons the unit; the node refuses cleanly
    replaced = {"options": [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 999"}]}
    assert (await node.put("web@x.service", replaced)).status == 201
    unit = await node.client.get_unit("web@x.service")
    assert unit is not None and unit.options[0].value == "/bin/sleep 999"
    assert unit.desired_state == "inactive"


async def test_templates(node: Node) -> None:
    assert (await node.put("tpl@.service", {"options": OPTS, "desiredState": "launched"})).status == 201
    unit = await node.client.get_unit("tpl@.service")
    assert unit is not None
    assert (unit.desired_state, unit.current_state, unit.machine_id) == ("launched", "inactive", None)
    for state in ("launched", "loaded"):
        resp = await node.put("tpl@.service", {"desiredState": state})
        assert (resp.status, resp.body) == (400, error_json(400, 'cannot activate template "tpl@.service"'))
    assert (await node.put("tpl@.service", {"desiredState": "inactive"})).status == 204
    resp = await node.put("tpl@1.service", {"desiredState": "launched"})
    assert (resp.status, resp.body) == (409, error_json(409, "unit does not exist and options field empty"))
    assert await node.client.get_unit("nope@.service") is None
    assert await node.client.list_states() == []


# -- routing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/fleet/v1/units", 405, "only GET supported against this resource"),
        (
            "PATCH",
            "/fleet/v1/units/a.service",
            405,
            "only GET, PUT and DELETE supported against this resource",
        ),
        ("POST", "/fleet/v1/state", 405, "only GET supported against this resource"),
        ("DELETE", "/fleet/v1/machines", 405, "only GET and PATCH supported against this resource"),
        ("GET", "/fleet/v1/units/nope.service", 404, "unit does not exist"),
        ("DELETE", "/fleet/v1/units/nope.service", 404, "unit does not exist"),
        ("GET", "/fleet/v1/machines/abc", 404, ""),
        ("GET", "/fleet/v1/units/", 404, ""),
        ("GET", "/fleet/v1/units/a/b", 404, ""),
        ("GET", "/fleet/v1/unknown", 404, ""),
        ("GET", "/fleet/v1/", 404, ""),
        ("GET", "/fleet/v2/units", 404, ""),
        ("GET", "/fleet/v1", 405, ""),
        ("GET", "/", 405, ""),
        ("GET", "/v1-alpha", 405, ""),
        ("POST", "/v1-alpha/units", 405, "only GET supported against this resource"),
    ],
)
async def test_routing_errors(node: Node, method: str, path: str, status: int, message: str) -> None:
    resp = await node.raw(method, path, content_type=None)
    assert (resp.status, resp.body) == (status, error_json(status, message))
    assert resp.header("content-type") == "application/json"
    assert resp.header("server").startswith("fleetd/")


async def test_head_is_405_without_body(node: Node) -> None:
    resp = await node.raw("HEAD", "/fleet/v1/units/a.service", content_type=None)
    assert (resp.status, resp.body) == (405, b"")
    assert resp.header("content-length") == "91"


async def test_discovery_document(node: Node) -> None:
    resp = await node.raw("GET", "/fleet/v1/discovery")
    reference = Path("/work/shared/reference/fleet/v1.json")
    if reference.exists():
        assert resp.body == reference.read_bytes()
    assert resp.header("content-type") == "application/json"
    document = await node.client.discovery()
    assert (document["rootUrl"], document["basePath"]) == ("$ENDPOINT/", "/fleet/v1/")
    assert (await node.raw("POST", "/fleet/v1/discovery")).status == 405
    assert (await node.raw("GET", "/v1-alpha/discovery")).body == resp.body


# -- pagination --------------------------------------------------------------------------------------


async def _create_many(node: Node, names: list[str]) -> None:
    await asyncio.gather(*(node.client.create_unit(n, SLEEP) for n in names))


async def test_151_units_are_paged_100_and_51(node: Node) -> None:
    await _create_many(node, ["hello.service"] + [f"p{i:03d}.service" for i in range(150)])
    first = json.loads((await node.raw("GET", "/fleet/v1/units?alt=json")).body)
    assert len(first["units"]) == 100
    assert first["nextPageToken"] == "ZAACAA=="
    assert first["units"][0]["name"] == "hello.service"
    assert first["units"][-1]["name"] == "p098.service"
    second = json.loads((await node.raw("GET", "/fleet/v1/units?nextPageToken=ZAACAA==")).body)
    assert len(second["units"]) == 51
    assert "nextPageToken" not in second
    assert (await node.raw("GET", "/fleet/v1/units?nextPageToken=ZAADAA==")).body == b"{}"
    calls = node.client.stats.calls["list_units"]
    units = await node.client.list_units()
    assert [u.name for u in units] == sorted(u.name for u in units) and len(units) == 151
    assert node.client.stats.calls["list_units"] - calls == 2


async def test_a_page_read_after_a_change_shows_it(node: Node) -> None:
    """The unit list is built once per change and pages are cut from it: every write shows at once."""
    await _create_many(node, [f"p{i:03d}.service" for i in range(150)])

    async def page_two() -> dict[str, dict[str, Any]]:
        body = json.loads((await node.raw("GET", "/fleet/v1/units?nextPageToken=ZAACAA==")).body)
        return {u["name"]: u for u in body["units"]}

    assert len(await page_two()) == 50
    await node.client.create_unit("z.service", SLEEP)
    assert "z.service" in await page_two()
    await node.client.set_desired_state("p120.service", "loaded")
    assert (await page_two())["p120.service"]["desiredState"] == "loaded"
    await node.client.destroy_unit("p149.service")
    assert "p149.service" not in await page_two()
    await node.client.create_unit("p130.service", HELLO)  # new content replaces the old
    assert (await page_two())["p130.service"]["options"][0]["value"] == "hello"


async def test_a_state_page_follows_every_change(node: Node) -> None:
    """/state's list is kept up to date from the agents' and the units' changes, not per page."""
    names = [f"s{i:03d}.service" for i in range(103)]
    await asyncio.gather(*(node.client.create_unit(n, SLEEP, "launched") for n in names))

    async def page_two() -> dict[str, str]:
        body = json.loads((await node.raw("GET", "/fleet/v1/state?nextPageToken=ZAACAA==")).body)
        return {s["name"]: s["systemdSubState"] for s in body.get("states", [])}

    def reads(expected: dict[str, str]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await page_two() == expected

        return check

    await eventually(reads(dict.fromkeys(names[100:], "running")))
    await node.client.set_desired_state("s101.service", "loaded")
    await eventually(reads({"s100.service": "running", "s101.service": "dead", "s102.service": "running"}))
    await node.client.destroy_unit("s102.service")
    await eventually(reads({"s100.service": "running", "s101.service": "dead"}))


async def test_exactly_100_units_give_a_token_then_an_empty_page(node: Node) -> None:
    await _create_many(node, [f"u{i:03d}.service" for i in range(100)])
    first = json.loads((await node.raw("GET", "/fleet/v1/units")).body)
    assert (len(first["units"]), first["nextPageToken"]) == (100, "ZAACAA==")
    assert (await node.raw("GET", "/fleet/v1/units?nextPageToken=ZAACAA==")).body == b"{}"
    calls = node.client.stats.calls["list_units"]
    assert len(await node.client.list_units()) == 100
    assert node.client.stats.calls["list_units"] - calls == 2


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("nextPageToken=garbage", "illegal base64 data at input byte 4"),
        ("nextPageToken=ZAACAA==&nextPageToken=ZAACAA==", "too many values for page token"),
        ("nextPageToken=CgACAA==", "token limit must be 100"),
        ("nextPageToken=ZAAAAA==", "token page must be greater than zero"),
        ("nextPageToken=", "EOF"),
    ],
)
@pytest.mark.parametrize("collection", ["units", "state", "machines"])
async def test_page_token_errors(node: Node, collection: str, query: str, message: str) -> None:
    resp = await node.raw("GET", f"/fleet/v1/{collection}?{query}")
    assert (resp.status, resp.body) == (400, error_json(400, message))


# -- machines ----------------------------------------------------------------------------------------


async def test_machines_and_metadata_patch(node: Node) -> None:
    machines = await node.client.list_machines()
    assert [m.id for m in machines] == sorted(m.id for m in machines)
    assert sorted(m.primary_ip for m in machines) == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    by_ip = {m.primary_ip: m for m in machines}
    m1 = by_ip["127.0.1.1"]
    assert dict(m1.metadata) == {"role": "web", "zone": "a"}
    raw = json.loads((await node.raw("GET", "/fleet/v1/machines")).body)
    assert list(raw["machines"][0]) == ["id", "metadata", "primaryIP"]
    await node.client.patch_machine_metadata(
        [
            MetadataOp("add", m1.id, "role", "db"),
            MetadataOp("add", m1.id, "disk", "ssd"),
            MetadataOp("remove", m1.id, "zone"),
            MetadataOp("remove", "0" * 32, "zone"),
        ]
    )
    m1 = next(m for m in await node.client.list_machines() if m.id == m1.id)
    assert dict(m1.metadata) == {"disk": "ssd", "role": "db"}
    upper = [{"op": "replace", "path": f"/{m1.id}/metadata/disk", "Value": {"value": "hdd"}}]
    resp = await node.raw("PATCH", "/fleet/v1/machines", upper, content_type="text/plain")
    assert (resp.status, resp.body, resp.header("content-type")) == (204, b"", "application/json")
    await node.client.patch_machine_metadata([MetadataOp("remove", m1.id, k) for k in ("disk", "role")])
    raw = json.loads((await node.raw("GET", "/fleet/v1/machines")).body)
    assert {"id": m1.id, "primaryIP": "127.0.1.1"} in raw["machines"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            [{"op": "add", "path": "/m/metadata/k", "value": "v"}],
            "json: cannot unmarshal string into Go struct field machineMetadataOp.Value of type "
            'struct { Value string "json:\\"value\\"" }',
        ),
        (
            [{"op": "move", "path": "/m/metadata/k", "value": {"value": "v"}}],
            "invalid op: expect add, remove, or replace",
        ),
        ([{"op": "add", "path": "/m/meta/k", "value": {"value": "v"}}], "machine metadata path invalid"),
        ([{"op": "add", "path": "/m/metadata/k!", "value": {"value": "v"}}], "machine metadata path invalid"),
        ([{"op": "add", "path": "/m/metadata/k"}], "invalid value: add and replace require a value"),
        (
            [{"op": "replace", "path": "/m/metadata/k", "value": {"value": ""}}],
            "invalid value: add and replace require a value",
        ),
        ({"op": "add"}, "json: cannot unmarshal object into Go value of type []api.machineMetadataOp"),
        (b"", "EOF"),
    ],
)
async def test_patch_errors(node: Node, body: Any, message: str) -> None:
    resp = await node.raw("PATCH", "/fleet/v1/machines", body)
    assert (resp.status, resp.body) == (400, error_json(400, message))


async def test_patch_empty_list(node: Node) -> None:
    assert (await node.raw("PATCH", "/fleet/v1/machines", [])).status == 204


# -- state, scheduling, global units -----------------------------------------------------------------


async def test_a_unit_kept_off_every_machine_is_placed_once_its_conflict_goes(node: Node) -> None:
    """A global unit conflicting with a plain one keeps it unscheduled; deleting the global unit
    (the cluster is plain again) places it: the pass after that is a full one."""
    blocker = [*SLEEP, UnitOption("X-Fleet", "Global", "true"), UnitOption("X-Fleet", "Conflicts", "b*")]
    await node.client.create_unit("a.service", blocker, "launched")
    await node.client.create_unit("b.service", SLEEP, "launched")

    async def blocked() -> bool:
        return len(await node.client.list_states(unit_name="a.service")) == 3

    await eventually(blocked)
    unit = await node.client.get_unit("b.service")
    assert unit is not None and unit.machine_id is None
    await node.client.destroy_unit("a.service")

    async def placed() -> Any:
        unit = await node.client.get_unit("b.service")
        return unit is not None and unit.machine_id

    await eventually(placed)


async def test_launched_unit_state_and_hash(node: Node) -> None:
    await node.client.create_unit("hello.service", HELLO, "launched")

    async def running() -> Any:
        states = await node.client.list_states(unit_name="hello.service")
        return states if states and states[0].sub_state == "running" else None

    (state,) = await eventually(running)
    assert (state.load_state, state.active_state, state.sub_state) == ("loaded", "active", "running")
    assert state.hash == unit_hash(HELLO) == "0920127507448386dca811da7f5ad48d5f3e2efa"
    unit = await node.client.get_unit("hello.service")
    assert unit is not None and unit.current_state == "launched" and unit.machine_id == state.machine_id
    raw = json.loads((await node.raw("GET", f"/fleet/v1/state?machineID={state.machine_id}")).body)
    assert list(raw["states"][0]) == [
        "hash",
        "machineID",
        "name",
        "systemdActiveState",
        "systemdLoadState",
        "systemdSubState",
    ]
    assert await node.client.list_states(machine_id="f" * 32) == []
    assert await node.client.list_states(machine_id=state.machine_id, unit_name="other.service") == []
    single = json.loads((await node.raw("GET", "/fleet/v1/state/hello.service")).body)
    assert single == raw["states"][0]
    await node.client.set_desired_state("hello.service", "loaded")

    async def stopped() -> Any:
        unit = await node.client.get_unit("hello.service")
        states = await node.client.list_states(unit_name="hello.service")
        ok = unit and unit.current_state == "loaded" and states and states[0].active_state != "active"
        return (unit, states[0]) if ok else None

    unit, state = await eventually(stopped)
    assert unit.machine_id == state.machine_id
    await node.client.set_desired_state("hello.service", "inactive")

    async def unloaded() -> Any:
        unit = await node.client.get_unit("hello.service")
        return unit if unit and unit.current_state == "inactive" else None

    unit = await eventually(unloaded)
    assert unit.machine_id is None
    # As on fleet (§8), the machine goes first and the state a little later, when the agent unloads.

    async def no_states() -> bool:
        return await node.client.list_states() == []

    await eventually(no_states, what="the unit's state to go")
    assert (await node.raw("GET", "/fleet/v1/state/hello.service")).status == 404
    assert await node.client.destroy_unit("hello.service") is True
    assert await node.client.destroy_unit("hello.service") is False


async def test_global_unit_quirks(node: Node) -> None:
    options = [
        *SLEEP,
        UnitOption("X-Fleet", "Global", "true"),
        UnitOption("X-Fleet", "MachineMetadata", "role=web"),
    ]
    await node.client.create_unit("glob.service", options, "launched")

    async def two_states() -> Any:
        states = await node.client.list_states(unit_name="glob.service")
        return states if len(states) == 2 else None

    states = await eventually(two_states)
    machines = {m.id: m for m in await node.client.list_machines()}
    assert {machines[s.machine_id].metadata["role"] for s in states} == {"web"}
    single = json.loads((await node.raw("GET", "/fleet/v1/units/glob.service")).body)
    assert "currentState" not in single and "machineID" not in single
    listed = json.loads((await node.raw("GET", "/fleet/v1/units")).body)["units"][0]
    assert listed["currentState"] == "inactive" and "machineID" not in listed
    unit = await node.client.get_unit("glob.service")
    assert unit is not None and unit.current_state is None and not unit.scheduled


async def test_conflicts_spread_and_leave_the_fourth_unscheduled(node: Node) -> None:
    options = [*SLEEP, UnitOption("X-Fleet", "Conflicts", "web@*.service")]
    for port in (8001, 8002, 8003, 8004):
        await node.client.create_unit(f"web@{port}.service", options, "loaded")

    async def three_loaded() -> Any:
        units = [u for u in await node.client.list_units() if u.current_state == "loaded"]
        return units if len(units) == 3 else None

    loaded = await eventually(three_loaded)
    assert len({u.machine_id for u in loaded}) == 3
    fourth = await node.client.get_unit("web@8004.service")
    assert fourth is not None
    assert (fourth.desired_state, fourth.current_state, fourth.machine_id) == ("loaded", "inactive", None)
    assert len(await node.client.list_states()) == 3


async def test_client_maps_4xx_to_fleet_api_error(node: Node) -> None:
    with pytest.raises(FleetAPIError) as info:
        await node.client.set_desired_state("missing.service", "launched")
    assert (info.value.code, info.value.message) == (409, "unit does not exist and options field empty")


async def test_replacing_a_launched_units_content_relaunches_it_on_the_same_machine(node: Node) -> None:
    await node.client.create_unit("swap.service", SLEEP, "launched")

    async def running_with(hash_: str) -> Any:
        states = await node.client.list_states(unit_name="swap.service")
        ok = states and states[0].hash == hash_ and states[0].sub_state == "running"
        return states[0] if ok else None

    old = await eventually(lambda: running_with(unit_hash(SLEEP)))
    new_options = [UnitOption("Service", "ExecStart", "/bin/sleep 999")]
    assert await node.client.create_unit("swap.service", new_options) == "created"
    new = await eventually(lambda: running_with(unit_hash(new_options)))
    assert new.machine_id == old.machine_id
    unit = await node.client.get_unit("swap.service")
    assert unit is not None
    assert (unit.desired_state, unit.current_state, unit.machine_id) == (
        "launched",
        "launched",
        old.machine_id,
    )


async def test_metrics_text(node: Node) -> None:
    resp = await node.raw("GET", "/metrics", content_type=None)
    assert resp.status == 200
    assert "fleetop_node_machines 3" in resp.text


async def test_files_and_socket_are_private(node: Node) -> None:
    await node.client.create_unit("p.service", SLEEP)
    assert node.state_dir.stat().st_mode & 0o777 == 0o700
    assert (node.state_dir / "registry.json").stat().st_mode & 0o777 == 0o600
    assert (node.state_dir / "fleet.sock").stat().st_mode & 0o777 == 0o660
    env = (node.state_dir / "machines" / "2" / "etc" / "environment").read_text()
    assert env == "COREOS_PRIVATE_IPV4=127.0.1.2\nCOREOS_PUBLIC_IPV4=127.0.1.2\n"
    etcd_env = (node.state_dir / "machines" / "2" / "etc" / "etcd.environment").read_text()
    assert etcd_env.startswith("ETCD_ENDPOINT=")


@pytest.mark.parametrize("collection", ["units", "state", "machines"])
async def test_v1_alpha_serves_the_same_handlers(node: Node, collection: str) -> None:
    fleet = await node.raw("GET", f"/fleet/v1/{collection}")
    alpha = await node.raw("GET", f"/v1-alpha/{collection}")
    assert (alpha.status, alpha.body) == (fleet.status, fleet.body)
