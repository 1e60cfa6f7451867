"""fleetctl's own waits against ``fleetop node``: the request sequences of ``fleetctl start`` and
``fleetctl restart`` (v1.0.0, fleet-observed.md §12 and §14), replayed on the wire with fleetctl's
wait conditions transcribed from coreos/fleet ``fleetctl/fleetctl.go`` and ``fleetctl/restart.go``.

Real fleetctl is a Go program and cannot be built here, so ``Fleetctl`` below is a transcription, not a
double of anything the node does: every request it sends is one fleetctl sends, with the same query,
headers and body, and it decides when to stop waiting exactly as the Go functions named in its
comments do (including their flaws, which are what the node must not trip: see
``docs/fleet-observed-notes.md``). A node runs in-process with three machines and its default pace
(fleet's; the rest of the suite runs nodes faster).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fleetop.http import HttpSession, Timeouts
from fleetop.node.engine import PACE
from fleetop.node.server import NodeConfig, run_node
from waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEFAULT_SLEEP_TIME = 0.5
"""fleetctl's ``defaultSleepTime`` (500 ms) between two polls of one unit."""
HANG = 60.0
"""fleetctl waits for ever (``--block-attempts`` 0); a wait that lasts this long is a hang."""
API = "/fleet/v1"


def sleeper(marker: int) -> list[dict[str, str]]:
    """A unit's options as fleetctl sends them; the argument makes its process findable in /proc."""
    return [
        {"section": "Unit", "name": "Description", "value": "fleetctl wait"},
        {"section": "Service", "name": "ExecStart", "value": f"/bin/sleep {marker}"},
    ]


def pids_of(argv: str) -> set[int]:
    """PIDs of the processes whose command line is exactly ``argv``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ")
            except OSError:
                continue
            if cmdline.decode(errors="replace") == argv:
                found.add(int(entry.name))
    return found


@dataclass
class Fleetctl:
    """fleetctl's HTTP client and wait loops, request for request."""

    session: HttpSession
    out: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    machine_states: dict[str, dict[str, Any]] | None = None
    """``machineStates``, fleetctl's process-wide machine cache (nil until first used)."""

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        # google-api-go-client: ?alt=json on every call, its User-Agent, compact JSON plus a newline.
        headers = {"User-Agent": "google-api-go-client/0.5"}
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode() + b"\n"
            headers["Content-Type"] = "application/json"
        self.requests.append(f"{method} {path}")
        self.sent_at.append(time.monotonic())
        resp = await self.session.request(
            method, API + path, params=[("alt", "json")], content=content, headers=headers
        )
        return resp.status, (json.loads(resp.body) if resp.body else None)

    # -- client/api.go over schema/ (the HTTP client) ------------------------------------------------

    async def unit(self, name: str) -> dict[str, Any] | None:
        """``cAPI.Unit``: GET /units/<name>; 404 is "no such unit", not an error."""
        status, body = await self.call("GET", f"/units/{name.replace('@', '%40')}")
        if status == 404:
            return None
        assert status == 200, (status, body)
        return dict(body)

    async def units(self) -> list[dict[str, Any]]:
        """``cAPI.Units``: GET /units, following nextPageToken."""
        status, body = await self.call("GET", "/units")
        assert status == 200 and "nextPageToken" not in body, (status, body)
        return list(body.get("units", []))

    async def create_unit(self, name: str, options: list[dict[str, str]]) -> None:
        """``cAPI.CreateUnit``: PUT with name and options and no desiredState (201)."""
        status, body = await self.call("PUT", f"/units/{name}", {"name": name, "options": options})
        assert status == 201, (status, body)

    async def set_unit_target_state(self, name: str, state: str) -> None:
        """``cAPI.SetUnitTargetState``: PUT {"desiredState", "name"} (204)."""
        status, body = await self.call("PUT", f"/units/{name}", {"desiredState": state, "name": name})
        assert status == 204, (status, body)

    async def machines(self) -> list[dict[str, Any]]:
        status, body = await self.call("GET", "/machines")
        assert status == 200, (status, body)
        return list(body.get("machines", []))

    async def unit_state(self, name: str) -> dict[str, Any]:
        """``cAPI.UnitState``: GET /state/<name> (real fleet drops the connection when there is none)."""
        status, body = await self.call("GET", f"/state/{name}")
        assert status == 200, (status, body)
        return dict(body)

    # -- fleetctl/fleetctl.go ----------------------------------------------------------------------

    async def cached_machine_state(self, machine_id: str) -> dict[str, Any] | None:
        """``cachedMachineState``: the map is made *before* the machines are fetched, so a goroutine
        arriving meanwhile reads the empty map and prints its line without ``on <machine>``."""
        if self.machine_states is None:
            self.machine_states = {}
            for machine in await self.machines():
                self.machine_states[machine["id"]] = machine
        return self.machine_states.get(machine_id)

    async def assert_unit_state(self, name: str, js: str) -> bool:
        """``assertUnitState``: one GET; true when currentState (desiredState for a global unit, not
        used here) equals ``js``, and then print ``Unit <name> <currentState>[ on <machine>]``."""
        unit = await self.unit(name)
        if unit is None or unit.get("currentState", "") != js:
            return False
        msg = f"Unit {name} {unit.get('currentState', '')}"
        if unit.get("machineID"):
            machine = await self.cached_machine_state(unit["machineID"])
            if machine is not None:
                msg += f" on {machine['id'][:8]}.../{machine['primaryIP']}"
        self.out.append(msg)
        return True

    async def check_unit_state(self, name: str, js: str) -> None:
        """``checkUnitState`` with maxAttempts 0: assert, else sleep ``defaultSleepTime``, for ever."""
        while not await self.assert_unit_state(name, js):
            await asyncio.sleep(DEFAULT_SLEEP_TIME)

    async def wait_for_unit_states(self, names: list[str], js: str) -> None:
        """``waitForUnitStates`` via ``tryWaitForUnitStates``: one goroutine per unit, all at once."""
        await asyncio.gather(*(self.check_unit_state(name, js) for name in names))

    async def lazy_create_units(self, names: list[str], options: list[dict[str, str]]) -> None:
        """``lazyCreateUnits`` (``checkUnitCreation``, ``createUnit``): create the missing units one by
        one, then wait for each new one to read ``inactive``."""
        created = []
        for name in names:
            if await self.unit(name) is not None:
                continue
            await self.create_unit(name, options)
            created.append(name)
        await self.wait_for_unit_states(created, "inactive")

    async def set_target_state_of_units(self, names: list[str], state: str) -> list[str]:
        """``setTargetStateOfUnits`` (``lazyStartUnits``): GET, skip units already at ``state``, PUT."""
        triggered = []
        for name in names:
            unit = await self.unit(name)
            assert unit is not None, f"unable to find unit {name}"
            if unit["desiredState"] == state:
                continue
            await self.set_unit_target_state(name, state)
            triggered.append(name)
        return triggered

    # -- fleetctl/start.go, fleetctl/restart.go ----------------------------------------------------

    async def start(self, names: list[str], options: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
        """``runStartUnit``: create, set launched, wait for launched, then read each unit's state."""
        await self.lazy_create_units(names, options)
        starting = await self.set_target_state_of_units(names, "launched")
        await self.wait_for_unit_states(starting, "launched")
        return {name: await self.unit_state(name) for name in starting}

    async def restart(self, name: str) -> None:
        """``runRestartUnit`` for one non-global unit that is launched."""
        units = {u["name"]: u for u in await self.units()}  # findUnits
        await self.lazy_create_units([name], [])  # exists: nothing created
        assert units[name]["currentState"] == "launched", units[name]
        await self.set_unit_state_and_wait(name, "loaded")
        await self.set_unit_state_and_wait(name, "launched")
        self.out.append(f"Unit({name}) was restarted.")

    async def set_unit_state_and_wait(self, name: str, target: str) -> None:
        """``setUnitStateAndWait``: set ``target``, then ``tryWaitForUnitStates(..., JobStateLaunched,
        ...)``: it waits for **launched** whatever the target. After setting ``loaded`` it returns only
        if its first GET still reads ``launched``; if the agent has already stopped the unit, it waits
        for a ``launched`` that never comes (desired is ``loaded``), and the unit stays stopped."""
        await self.set_unit_target_state(name, target)
        await self.wait_for_unit_states([name], "launched")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def endpoint() -> AsyncIterator[str]:
    base = Path(tempfile.mkdtemp(prefix="fw-"))
    config = NodeConfig(state_dir=base / "state", machines=3, pace=PACE)  # the default, fleet's pace
    stop = asyncio.Event()
    task = asyncio.create_task(run_node(config, stop=stop, install_signal_handlers=False))
    try:
        await eventually(lambda: Path(config.listen_url[len("unix://") :]).exists(), 20, "the node's socket")
        yield config.listen_url
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module")
async def fleetctl(endpoint: str) -> AsyncIterator[Fleetctl]:
    async with HttpSession(endpoint, timeouts=Timeouts.uniform(10.0)) as session:
        yield Fleetctl(session)
        for unit in await Fleetctl(session).units():
            await session.request("DELETE", f"{API}/units/{unit['name']}")


async def test_start_follows_fleetctls_wire_sequence_and_ends_running(fleetctl: Fleetctl) -> None:
    name = "ctl.service"
    states = await asyncio.wait_for(fleetctl.start([name], sleeper(random.randint(10**6, 10**7))), HANG)

    polls = fleetctl.requests.count(f"GET /units/{name}") - 3
    assert fleetctl.requests == [
        f"GET /units/{name}",  # 404
        f"PUT /units/{name}",  # options, no desiredState: 201
        f"GET /units/{name}",  # inactive
        f"GET /units/{name}",  # setTargetStateOfUnits
        f"PUT /units/{name}",  # desiredState launched: 204
        *[f"GET /units/{name}"] * polls,  # until launched
        "GET /machines",
        f"GET /state/{name}",
    ]
    assert polls >= 2, "the node reported launched before fleetctl's first poll"
    assert fleetctl.out[0] == f"Unit {name} inactive"
    assert fleetctl.out[1].startswith(f"Unit {name} launched on ")
    assert states[name]["systemdLoadState"] == "loaded"
    assert states[name]["systemdActiveState"] == "active"


async def test_restart_returns_and_leaves_the_unit_running(fleetctl: Fleetctl) -> None:
    name = "restartme.service"
    argv = f"/bin/sleep {random.randint(10**6, 10**7)}"
    await asyncio.wait_for(fleetctl.start([name], sleeper(int(argv.split()[1]))), HANG)
    before = await eventually(lambda: pids_of(argv), 20, "the unit's process")
    fleetctl.out.clear()
    first = len(fleetctl.requests)

    try:
        await asyncio.wait_for(fleetctl.restart(name), HANG)
    except TimeoutError:
        unit = await fleetctl.unit(name)
        pytest.fail(f"fleetctl restart would hang: {unit}")
    sent = zip(fleetctl.sent_at[first:], fleetctl.requests[first:], strict=True)
    puts = [at for at, request in sent if request.startswith("PUT")]
    loaded_for = puts[1] - puts[0]  # how long the unit's desired state was ``loaded``

    # As against real fleet: both waits read launched at their first poll, because the agent had not
    # noticed ``loaded`` before ``launched`` was set again.
    launched = [line for line in fleetctl.out if line.startswith(f"Unit {name} launched on ")]
    assert len(launched) == 2, fleetctl.out
    assert fleetctl.out[-1] == f"Unit({name}) was restarted."
    unit = await fleetctl.unit(name)
    assert unit is not None and (unit["desiredState"], unit["currentState"]) == ("launched", "launched")

    async def running() -> bool:
        state = await fleetctl.unit_state(name)
        return state["systemdActiveState"] == "active" and bool(pids_of(argv))

    await eventually(running, 20, "the unit running after the restart")
    if loaded_for < PACE:
        # As on real fleet, the same process: no agent noticed a ``loaded`` that lasted less than its
        # pace (a node that stops the unit at once restarts it, and then a slower client hangs).
        assert pids_of(argv) == before, f"the unit was stopped although loaded for {loaded_for:.3f} s"


async def test_concurrent_starts_are_scheduled_before_they_are_launched(fleetctl: Fleetctl) -> None:
    names = [f"multi{i}.service" for i in range(1, 4)]
    seen: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
    done = asyncio.Event()

    async def observe() -> None:
        """What an attentive client sees of each unit, far more often than fleetctl polls."""
        while not done.is_set():
            for name in names:
                unit = await fleetctl.unit(name)
                if unit is not None:
                    seen[name].append((unit.get("machineID", ""), unit.get("currentState", "")))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(observe())
    try:
        states = await asyncio.wait_for(fleetctl.start(names, sleeper(random.randint(10**6, 10**7))), HANG)
    finally:
        done.set()
        await watcher

    machines = {m["id"] for m in await fleetctl.machines()}
    for name in names:
        history = [step for i, step in enumerate(seen[name]) if i == 0 or seen[name][i - 1] != step]
        assert history[0] == ("", "inactive"), (name, history)
        first_launched = next(i for i, (_, state) in enumerate(history) if state == "launched")
        scheduled = [m for m, state in history[:first_launched] if m and state == "inactive"]
        assert scheduled, f"{name} was launched without first being seen scheduled: {history}"
        assert all(m in machines for m, _ in history[first_launched:]), (name, history)
        assert states[name]["systemdActiveState"] == "active"
    launched = [line for line in fleetctl.out if " launched" in line]
    assert sorted(line.split()[1] for line in launched) == names
    # Each line names its machine: one per machine, and the machines' agents launch them more than a
    # fleetctl poll apart, so no two goroutines first read launched in the same poll round, where
    # ``cachedMachineState``'s race would drop all machines but one (docs/fleet-observed-notes.md).
    assert len({state["machineID"] for state in states.values()}) == len(names), states
    assert all(" on " in line for line in launched), fleetctl.out
