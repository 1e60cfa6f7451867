"""FleetClient's error paths, with fleet played by an injected ``httpx.MockTransport``.

Each handler answers with the wire shapes of fleet's API v1 (``reference/fleet/api-v1.md``): pages of
``{"units": [...], "nextPageToken": "..."}``, error entities ``{"error": {"code", "message"}}``, 201
and 204 without a body. Transport failures (refused, timed out, dropped) move a request to the next
endpoint; an HTTP answer of any status is fleet speaking and is never failed over; bodies that are
not what the API promises are errors naming the request; the leader's write guard runs before every
attempt of a write. The cases a real socket must show (a server that never answers, a unix socket
that does not exist) stay in ``test_client.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fleetop.errors import FleetAPIError, FleetUnavailable, NotLeader
from fleetop.fleet.client import API_PREFIX, FleetClient, RetryPolicy
from fleetop.fleet.units import UnitOption
from fleetop.http import HttpSession, Timeouts

A, B = "unix:///run/a/fleet.sock", "http://127.0.0.1:49153"
FAST = RetryPolicy(attempts=3, initial=0.001, maximum=0.002, jitter=0.0, total=5.0)
SLEEP = [UnitOption("Service", "ExecStart", "/bin/sleep 1000")]
Handler = Callable[[httpx.Request], httpx.Response]


def page(key: str, items: list[dict[str, Any]], token: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {key: items} if items else {}
    if token:
        body["nextPageToken"] = token
    return httpx.Response(200, json=body)


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": status, "message": message}})


def unit(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}],
        "desiredState": "launched",
        "currentState": "launched",
        "machineID": "m1",
    }


class Fleet:
    """A MockTransport per endpoint; ``seen`` lists (endpoint, method, path, query) of every request."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = handlers
        self.seen: list[tuple[str, str, str, dict[str, list[str]]]] = []

    def client(self, endpoints: str = A, **kwargs: Any) -> FleetClient:
        names = {A: "a", B: "b"}

        def session(endpoint: str) -> HttpSession:
            name = names[endpoint]

            def handle(request: httpx.Request) -> httpx.Response:
                query: dict[str, list[str]] = {}
                for key, value in request.url.params.multi_items():
                    query.setdefault(key, []).append(value)
                self.seen.append((name, request.method, request.url.path, query))
                return self.handlers[name](request)

            return HttpSession(
                endpoint, timeouts=Timeouts.uniform(1.0), transport=httpx.MockTransport(handle)
            )

        kwargs.setdefault("retry", FAST)
        return FleetClient(endpoints, session_factory=session, **kwargs)

    @property
    def paths(self) -> list[str]:
        return [f"{who} {method} {path}" for who, method, path, _ in self.seen]


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


# -- transport failures: the next endpoint ------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "Connection refused"),
        (httpx.ConnectTimeout("connect timed out"), "timed out (ConnectTimeout)"),
        (httpx.ReadTimeout("read timed out"), "timed out (ReadTimeout)"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "disconnected"),
    ],
    ids=["refused", "connect-timeout", "read-timeout", "dropped"],
)
async def test_each_transport_failure_moves_to_the_next_endpoint(failure: Exception, said: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    fleet = Fleet(a=fail, b=lambda request: page("machines", [{"id": "m1", "primaryIP": "10.0.0.1"}]))
    async with fleet.client(f"{A},{B}") as client:
        assert [m.id for m in await client.list_machines()] == ["m1"]
        assert client.endpoint == B and client.stats.failovers == 1 and client.stats.retries == 0
        fleet.handlers["b"] = fail  # now both fail: one error naming each endpoint and why
        with pytest.raises(FleetUnavailable, match="no fleet endpoint answered") as info:
            await client.list_machines()
    assert str(info.value).count(said) == 2 and A in str(info.value) and B in str(info.value)
    assert set(client.unreachable) == {A, B}


# -- HTTP answers: never failed over -------------------------------------------------------------------


async def test_a_server_error_is_retried_on_the_same_endpoint_then_temporary() -> None:
    fleet = Fleet(a=lambda request: error(503, "registry unavailable"), b=refuse)
    async with fleet.client(f"{A},{B}") as client:
        with pytest.raises(FleetUnavailable, match="fleet answered 503: registry unavailable"):
            await client.list_units()
        assert fleet.paths == [f"a GET {API_PREFIX}/units"] * FAST.attempts
        assert client.stats.errors["server"] == FAST.attempts and client.stats.retries == FAST.attempts - 1
        assert client.endpoint == A and client.unreachable == {}


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
async def test_a_client_error_is_permanent_at_once(status: int) -> None:
    fleet = Fleet(a=lambda request: error(status, "no"), b=refuse)
    async with fleet.client(f"{A},{B}") as client:
        with pytest.raises(FleetAPIError) as info:
            await client.set_desired_state("web@1.service", "launched")
    assert info.value.code == status and info.value.message == "no"
    assert fleet.paths == [f"a PUT {API_PREFIX}/units/web@1.service"], "neither retried nor failed over"
    assert client.stats.errors["client"] == 1


async def test_error_bodies_that_are_not_error_entities_are_quoted_raw() -> None:
    fleet = Fleet(a=lambda request: httpx.Response(400, text="bad request\n"))
    async with fleet.client() as client:
        with pytest.raises(FleetAPIError, match="bad request"):
            await client.destroy_unit("web@1.service")


async def test_statuses_the_client_expects_are_answers_not_errors() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return error(404, "unit does not exist")
        if request.method == "DELETE":
            return error(404, "unit does not exist")
        sent = json.loads(request.content)
        if "options" not in sent:  # fleet's answer to a PUT of the same content without a state
            return error(409, "must provide DesiredState to update existing unit")
        return httpx.Response(201)

    fleet = Fleet(a=handle)
    async with fleet.client() as client:
        assert await client.get_unit("web@1.service") is None
        assert await client.destroy_unit("web@1.service") is False
        assert await client.create_unit("web@1.service", SLEEP, "launched") == "created"
    assert client.stats.errors["client"] == 0


# -- bodies that are not what the API promises ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"units": [', "GET /units: response is not JSON"),
        (b"<html>gateway</html>", "GET /units: response is not JSON"),
        (b'[{"name": "a.service"}]', "GET /units: expected a JSON object page"),
        (b'{"units": {"name": "a.service"}}', "GET /units: 'units' is not a list"),
    ],
    ids=["truncated", "html", "array", "units-object"],
)
async def test_malformed_pages_are_errors_naming_the_request(body: bytes, said: str) -> None:
    fleet = Fleet(a=lambda request: httpx.Response(200, content=body))
    async with fleet.client() as client:
        with pytest.raises(FleetUnavailable) as info:
            await client.list_units()
    assert said in str(info.value)


async def test_a_malformed_unit_is_an_error() -> None:
    fleet = Fleet(a=lambda request: httpx.Response(200, content=b"{"))
    async with fleet.client() as client:
        with pytest.raises(FleetUnavailable, match=r"GET /units/a\.service: response is not JSON"):
            await client.get_unit("a.service")
        fleet.handlers["a"] = lambda request: httpx.Response(200, json={"name": "a.service", "options": 7})
        with pytest.raises(ValueError, match=r"Unit\.options must be a JSON array"):
            await client.get_unit("a.service")


# -- pagination -----------------------------------------------------------------------------------------


async def test_pages_follow_the_token_until_it_is_missing() -> None:
    pages = {
        None: page("units", [unit("a.service"), unit("b.service")], "ZAACAA=="),
        "ZAACAA==": page("units", [unit("c.service")], "ZAADAA=="),
        "ZAADAA==": page("units", [unit("d.service")]),
    }
    fleet = Fleet(a=lambda request: pages[request.url.params.get("nextPageToken")])
    async with fleet.client() as client:
        assert [u.name for u in await client.list_units()] == [
            "a.service",
            "b.service",
            "c.service",
            "d.service",
        ]
    tokens = [query.get("nextPageToken") for _, _, _, query in fleet.seen]
    assert tokens == [None, ["ZAACAA=="], ["ZAADAA=="]], "one token per request, the one just received"
    assert all(query["alt"] == ["json"] for _, _, _, query in fleet.seen)


async def test_a_full_last_page_ends_on_fleets_empty_page() -> None:
    """fleet gives a token with a full last page; the page it leads to is ``{}``."""
    pages = {
        None: page("states", [{"name": "a.service", "machineID": "m1"}], "ZAACAA=="),
        "ZAACAA==": page("states", []),
    }
    fleet = Fleet(a=lambda request: pages[request.url.params.get("nextPageToken")])
    async with fleet.client() as client:
        states = await client.list_states(machine_id="m1", unit_name="a.service")
    assert [(s.name, s.machine_id) for s in states] == [("a.service", "m1")]
    assert len(fleet.seen) == 2
    for _, _, path, query in fleet.seen:  # the filters go along with every page
        assert (
            path == f"{API_PREFIX}/state"
            and query["machineID"] == ["m1"]
            and query["unitName"] == ["a.service"]
        )


async def test_a_page_failing_midway_fails_the_listing() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("nextPageToken"):
            return error(500, "etcd timed out")
        return page("machines", [{"id": "m1"}], "ZAACAA==")

    fleet = Fleet(a=handle)
    async with fleet.client() as client:
        with pytest.raises(FleetUnavailable, match="etcd timed out"):
            await client.list_machines()  # never half a cluster


# -- the write guard ------------------------------------------------------------------------------------


class Guard:
    """A write guard that allows ``allowed`` attempts, then raises NotLeader."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls > self.allowed:
            raise NotLeader("the lease may have lapsed")


@pytest.mark.parametrize("allowed", [0, 1, 2])
async def test_the_guard_runs_before_every_attempt_of_a_write(allowed: int) -> None:
    fleet = Fleet(a=lambda request: error(500, "try again"))
    guard = Guard(allowed)
    async with fleet.client(write_guard=guard) as client:
        with pytest.raises(NotLeader):
            await client.create_unit("web@1.service", SLEEP, "launched")
    assert guard.calls == allowed + 1
    assert len(fleet.seen) == allowed, "each attempt that went out was allowed just before it"


async def test_the_guard_runs_before_a_failover_too() -> None:
    fleet = Fleet(a=refuse, b=lambda request: httpx.Response(204))
    guard = Guard(1)
    async with fleet.client(f"{A},{B}", write_guard=guard) as client:
        with pytest.raises(NotLeader):
            await client.set_desired_state("web@1.service", "inactive")
    assert fleet.paths == [f"a PUT {API_PREFIX}/units/web@1.service"], "the failover was refused"


async def test_reads_do_not_ask_the_guard() -> None:
    fleet = Fleet(a=lambda request: page("machines", []))
    guard = Guard(0)
    async with fleet.client(write_guard=guard) as client:
        assert await client.list_machines() == []
        assert await client.list_units() == []
    assert guard.calls == 0


async def test_one_transport_under_every_endpoint() -> None:
    """``transport=`` puts one MockTransport under the default session of each endpoint."""
    hosts: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "fleet":  # the unix socket endpoint
            raise httpx.ConnectError("[Errno 2] No such file or directory", request=request)
        assert request.headers["user-agent"] == "fleetop"
        return page("machines", [{"id": "m2"}])

    async with FleetClient(f"{A},{B}", transport=httpx.MockTransport(handle), retry=FAST) as client:
        assert [m.id for m in await client.list_machines()] == ["m2"]
    assert hosts == ["fleet", "127.0.0.1"]
