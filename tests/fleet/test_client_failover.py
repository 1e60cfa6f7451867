"""FleetClient over several endpoints: failover on transport failures only, stickiness, clear errors.

Each endpoint's session gets an injected httpx transport (``MockTransport``) whose handler plays one
fleet machine: answering like fleetd, refusing connections, or timing out. The handlers record which
endpoint each request reached, so the tests see exactly where requests went.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fleetop.config import fleet_endpoints_from, parse_fleet_endpoints
from fleetop.errors import ConfigError, FleetAPIError, FleetUnavailable
from fleetop.fleet.client import FleetClient, RetryPolicy
from fleetop.http import HttpSession, Timeouts

A, B, C = "unix:///run/a/fleet.sock", "http://127.0.0.1:49153", "http://127.0.0.2:49153"
FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.02, jitter=0.0, total=5.0)
MACHINES = b'{"machines":[{"id":"m1","primaryIP":"10.0.0.1"}]}'
Behaviour = Callable[[httpx.Request], httpx.Response]


def answer(status: int = 200, body: bytes = MACHINES) -> Behaviour:
    return lambda request: httpx.Response(status, content=body, headers={"Content-Type": "application/json"})


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


class Machines:
    """One behaviour per endpoint, changeable between calls; ``hits`` lists the endpoints reached."""

    def __init__(self, **behaviours: Behaviour) -> None:
        self.behaviours = {key: value for key, value in behaviours.items()}
        self.hits: list[str] = []

    def session(self, endpoint: str) -> HttpSession:
        name = {A: "a", B: "b", C: "c"}[endpoint]

        def handle(request: httpx.Request) -> httpx.Response:
            self.hits.append(name)
            return self.behaviours[name](request)

        return HttpSession(endpoint, timeouts=Timeouts.uniform(1.0), transport=httpx.MockTransport(handle))

    def client(self, endpoints: str, retry: RetryPolicy = FAST) -> FleetClient:
        return FleetClient(endpoints, retry=retry, session_factory=self.session)


async def test_a_dead_first_endpoint_fails_over_and_sticks() -> None:
    fleet = Machines(a=refuse, b=answer())
    async with fleet.client(f"{A},{B}") as client:
        assert client.endpoint == A
        assert [m.id for m in await client.list_machines()] == ["m1"]
        assert client.endpoint == B
        await client.list_machines()
        await client.list_machines()
    assert fleet.hits == ["a", "b", "b", "b"]
    assert client.stats.failovers == 1 and client.stats.retries == 0
    assert client.unreachable == {}


async def test_a_timeout_fails_over_and_the_client_comes_back_when_the_other_dies() -> None:
    fleet = Machines(a=answer(), b=time_out)
    async with fleet.client(f"{B},{A}") as client:
        await client.list_machines()
        assert client.endpoint == A
        fleet.behaviours.update(a=refuse, b=answer())
        await client.list_machines()
        assert client.endpoint == B
    assert fleet.hits == ["b", "a", "a", "b"]
    assert client.stats.failovers == 2


@pytest.mark.parametrize(("status", "error"), [(500, FleetUnavailable), (404, FleetAPIError)])
async def test_an_http_error_answer_is_not_a_reason_to_fail_over(status: int, error: type[Exception]) -> None:
    body = b'{"error":{"code":%d,"message":"boom"}}' % status
    fleet = Machines(a=answer(status, body), b=answer())
    async with fleet.client(f"{A},{B}", retry=RetryPolicy(attempts=2, initial=0.01, jitter=0.0)) as client:
        with pytest.raises(error, match="boom"):
            await client.list_machines()
        assert client.endpoint == A
    assert "b" not in fleet.hits
    assert client.stats.failovers == 0


async def test_no_endpoint_answering_names_each_one_and_why() -> None:
    fleet = Machines(a=refuse, b=time_out, c=refuse)
    async with fleet.client(f"{A},{B},{C}") as client:
        with pytest.raises(FleetUnavailable) as info:
            await client.list_units()
        message = str(info.value)
        assert A in message and B in message and C in message
        assert "Connection refused" in message and "timed out" in message
        assert set(client.unreachable) == {A, B, C}
        assert client.stats.calls["list_units"] == FAST.attempts
        assert fleet.hits == ["a", "b", "c"] * FAST.attempts
        fleet.behaviours["c"] = answer(body=b'{"units":[]}')
        assert await client.list_units() == []
        assert client.endpoint == C and client.unreachable == {}


async def test_writes_fail_over_too() -> None:
    seen: list[tuple[str, bytes]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.content))
        return httpx.Response(204)

    fleet = Machines(a=refuse, b=record)
    async with fleet.client(f"{A},{B}") as client:
        await client.set_desired_state("web@1.service", "inactive")
    assert seen == [("PUT", b'{"desiredState":"inactive","name":"web@1.service"}\n')]


def test_endpoint_lists_are_validated_naming_the_bad_one() -> None:
    assert parse_fleet_endpoints(f" {A} ,{B}/,{A}", "x") == (A, B)
    assert fleet_endpoints_from({}, {}) == ("unix:///var/run/fleet.sock",)
    assert fleet_endpoints_from({}, {"FLEETCTL_ENDPOINT": f"{A},{B}"}) == (A, B)
    assert fleet_endpoints_from({"fleet_endpoint": B}, {"FLEETCTL_ENDPOINT": A}) == (B,)
    with pytest.raises(ConfigError, match=r"FLEETCTL_ENDPOINT: '127\.0\.0\.1:4001' is not a fleet endpoint"):
        fleet_endpoints_from({}, {"FLEETCTL_ENDPOINT": f"{A},127.0.0.1:4001"})
    with pytest.raises(ConfigError, match="--fleet-endpoint: 'ftp://x'"):
        fleet_endpoints_from({"fleet_endpoint": f"{B},ftp://x"}, {})
    with pytest.raises(ConfigError, match=r"entry 2 .* is empty"):
        parse_fleet_endpoints(f"{A},,{B}", "--fleet-endpoint")
    with pytest.raises(ConfigError, match="http://h:99999"):
        parse_fleet_endpoints("http://h:99999", "--fleet-endpoint")
    with pytest.raises(ConfigError, match="socket path is empty"):
        FleetClient("unix://")
