"""FleetClient behaviour: retries of temporary failures, 4xx as FleetAPIError, local validation; the same
with httpx's sessions and with the standard library's (``plain``, what ``fleetop status`` uses).

Most checks run against a real ``fleetop node``. Three of fleet's failure modes that the node does not
reproduce (a 500 answer, a connection dropped without a status line, an endpoint that never answers)
are played by a tiny raw socket server that answers exactly like fleet did.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fleetop.errors import ConfigError, FleetAPIError, FleetUnavailable, InputError, TemporaryError
from fleetop.fleet.client import FleetClient, RetryPolicy
from fleetop.fleet.model import MetadataOp, Unit
from fleetop.fleet.units import UnitOption
from fleetop.http import http_check, parse_endpoint
from fleetop.node.server import NodeConfig, run_node

SLEEP = [UnitOption("Service", "ExecStart", "/bin/sleep 1000")]
FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05, jitter=0.0, total=5.0)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="fc-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_node(state_dir: Path) -> AsyncIterator[str]:
    config = NodeConfig(state_dir=state_dir, machines=1, resync_interval=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(run_node(config, stop=stop, install_signal_handlers=False))
    try:
        yield config.listen_url
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_fleet(path: Path, handler: Handler) -> AsyncIterator[list[int]]:
    """A unix-socket server that reads one request and lets ``handler`` answer (or not)."""
    hits: list[int] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        hits.append(1)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        yield hits
    finally:
        server.close()
        await server.wait_closed()
        if handlers:  # each ends when its client hangs up: wait_closed() does not wait for them
            await asyncio.wait(handlers, timeout=10)


async def answer_500(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b'{"error":{"code":500,"message":""}}'
    writer.write(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nServer: fleetd/1.0.0\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()


async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """fleet's nil-pointer panic on GET /state/<name>: the connection closes without a status line."""


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads on, answering nothing, until the client gives up and hangs up."""
    await reader.read()


async def test_retries_until_a_late_node_answers(short_dir: Path) -> None:
    state = short_dir / "state"
    endpoint = f"unix://{state.absolute() / 'fleet.sock'}"
    patient = RetryPolicy(attempts=200, initial=0.02, maximum=0.1, jitter=0.01, total=30.0)
    async with FleetClient(endpoint, retry=patient) as client:
        listing = asyncio.create_task(client.list_machines())
        await asyncio.sleep(0.3)
        assert not listing.done()
        async with running_node(state):
            machines = await asyncio.wait_for(listing, 30)
        assert len(machines) == 1
        assert client.stats.retries > 0
        assert client.stats.errors["unavailable"] > 0


PLAIN = pytest.mark.parametrize("plain", [False, True], ids=["httpx", "plain"])


@PLAIN
async def test_no_socket_gives_fleet_unavailable_after_bounded_retries(short_dir: Path, plain: bool) -> None:
    async with FleetClient(f"unix://{short_dir}/nothing.sock", retry=FAST, plain=plain) as client:
        with pytest.raises(
            FleetUnavailable, match=r"^GET /fleet/v1/units: \[Errno 2\] No such file or directory$"
        ) as info:
            await client.list_units()
        assert isinstance(info.value, TemporaryError)
        assert isinstance(info.value.__cause__, Exception)
        assert client.stats.calls["list_units"] == 3
        assert client.stats.retries == 2


@PLAIN
@pytest.mark.parametrize(("handler", "attempts"), [(answer_500, 3), (drop, 3)])
async def test_server_errors_and_dropped_connections_are_temporary(
    short_dir: Path, handler: Handler, attempts: int, plain: bool
) -> None:
    sock = short_dir / "f.sock"
    async with (
        fake_fleet(sock, handler) as hits,
        FleetClient(f"unix://{sock}", retry=FAST, plain=plain) as client,
    ):
        with pytest.raises(FleetUnavailable):
            await client.get_unit("x.service")
        assert len(hits) == attempts


@PLAIN
async def test_timeouts_are_temporary(short_dir: Path, plain: bool) -> None:
    from fleetop.http import Timeouts

    sock = short_dir / "f.sock"
    timeouts = Timeouts.uniform(0.2)
    async with (
        fake_fleet(sock, never_answer),
        FleetClient(f"unix://{sock}", retry=RetryPolicy.none(), timeouts=timeouts, plain=plain) as client,
    ):
        with pytest.raises(FleetUnavailable, match=r"timed out \(ReadTimeout\)"):
            await client.list_machines()


@PLAIN
async def test_permanent_errors_and_local_validation(short_dir: Path, plain: bool) -> None:
    async with (
        running_node(short_dir / "state") as endpoint,
        FleetClient(endpoint, retry=FAST, plain=plain) as client,
    ):
        await client.list_machines()  # (a plain session's first try may come before the node listens)
        before, retries = sum(client.stats.calls.values()), client.stats.retries
        with pytest.raises(InputError, match="invalid desiredState 'running'"):
            await client.create_unit("a.service", SLEEP, "running")
        with pytest.raises(InputError, match="invalid desiredState 'bogus'"):
            await client.set_desired_state("a.service", "bogus")
        with pytest.raises(InputError, match="invalid character '/' in unit name"):
            await client.get_unit("../units")
        with pytest.raises(InputError, match="line too long"):
            await client.create_unit("a.service", [UnitOption("Service", "ExecStart", "x" * 3000)])
        with pytest.raises(InputError):
            await client.patch_machine_metadata([MetadataOp("add", "m", "k", "")])
        assert sum(client.stats.calls.values()) == before

        xfleet = [*SLEEP, UnitOption("X-Fleet", "MachineID", "a"), UnitOption("X-Fleet", "Conflicts", "b*")]
        with pytest.raises(FleetAPIError) as info:
            await client.create_unit("bad.service", xfleet)
        assert (info.value.code, info.value.message) == (400, "MachineID cannot be used with Conflicts")
        assert client.stats.retries == retries and client.stats.errors["client"] == 1

        assert await client.create_unit("a.service", SLEEP) == "created"
        assert await client.create_unit("a.service", SLEEP) == "unchanged"
        assert await client.create_unit("a.service", SLEEP, "inactive") == "updated"
        assert await client.get_unit("nope.service") is None
        assert await client.destroy_unit("nope.service") is False
        unit = await client.get_unit("web@x.service") or Unit("none")
        assert unit.name == "none"
        assert await client.create_unit("web@x.service", SLEEP) == "created"  # '@' goes out as %40
        assert [u.name for u in await client.list_units()] == ["a.service", "web@x.service"]


async def test_plain_sessions_read_what_httpx_reads(short_dir: Path) -> None:
    async with running_node(short_dir / "state") as endpoint:
        async with FleetClient(endpoint) as client:
            for n in range(3):
                await client.create_unit(f"web@{n}.service", SLEEP, "launched")
            await asyncio.sleep(1.0)  # the node's agent reports states
            seen = [await client.list_machines(), await client.list_units(), await client.list_states()]
        async with FleetClient(endpoint, plain=True) as plain:
            assert [await plain.list_machines(), await plain.list_units(), await plain.list_states()] == seen
        assert len(seen[1]) == 3 and seen[2]


def test_endpoints() -> None:
    assert parse_endpoint("unix:///var/run/fleet.sock").socket_path == "/var/run/fleet.sock"
    assert parse_endpoint("http://127.0.0.1:49153,http://other:1").base_url == "http://127.0.0.1:49153"
    with pytest.raises(ConfigError):
        parse_endpoint("ftp://x")


async def test_http_check(short_dir: Path) -> None:
    ok, detail = await http_check("http://127.0.0.1:9/", 1.0)
    assert not ok and detail
    ok, detail = await http_check("not a url", 1.0)
    assert not ok
    listen = "http://127.0.0.1:0"
    config = NodeConfig(state_dir=short_dir / "state", machines=1, listen=listen)
    stop = asyncio.Event()
    task = asyncio.create_task(run_node(config, stop=stop, install_signal_handlers=False))
    try:
        endpoint_file = config.state_dir / "endpoint"
        for _ in range(200):
            if endpoint_file.exists():
                break
            await asyncio.sleep(0.05)
        url = endpoint_file.read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        assert await http_check(url + "/fleet/v1/units", 5.0) == (True, "HTTP 200")
        assert await http_check(url + "/fleet/v1/nope", 5.0) == (False, "HTTP 404")
        async with FleetClient(url) as client, FleetClient(url, plain=True) as plain:
            assert len(await client.list_machines()) == 1
            assert await plain.list_machines() == await client.list_machines()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_unchanged_pages_are_not_parsed_again(short_dir: Path) -> None:
    """A quiet cluster polled again: the same (immutable) objects come back for unchanged pages, new
    ones where the page changed, and the result is always what fleet holds now."""
    async with running_node(short_dir / "state") as endpoint, FleetClient(endpoint) as client:
        for n in range(150):  # two pages of units (fleet serves 100 per page)
            await client.create_unit(f"p{n:03d}.service", SLEEP, "inactive")
        first = await client.list_units()
        second = await client.list_units()
        names = [f"p{n:03d}.service" for n in range(150)]
        assert [u.name for u in first] == [u.name for u in second] == names
        assert all(a is b for a, b in zip(first, second, strict=True))

        await client.set_desired_state("p120.service", "loaded")  # on the second page only
        third = await client.list_units()
        assert all(a is b for a, b in zip(first[:100], third[:100], strict=True))
        assert third[120].desired_state == "loaded" and third[120] is not first[120]
        assert third[0] is first[0] and third[149] is not first[149]  # the whole page was read anew


async def answer_machines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b'{"machines":[{"id":"m1","primaryIP":"10.0.0.1"}]}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    writer.write(head + body)
    await writer.drain()


async def test_plain_requests_never_wait_for_the_default_thread_pool(short_dir: Path) -> None:
    """The operator's sessions run their requests in threads of their own: a default pool held by
    something slow (a render, a DNS lookup) does not hold up fleet."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    held = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(held)
    busy = loop.run_in_executor(None, release.wait, 60)
    sock = short_dir / "fleet.sock"
    try:
        async with fake_fleet(sock, answer_machines), FleetClient(f"unix://{sock}", plain=True) as client:
            machines = await asyncio.wait_for(client.list_machines(), 30)
            assert [m.id for m in machines] == ["m1"]
            assert not busy.done()
    finally:
        release.set()
        await busy
