"""``fleetop node`` as users run it: a subprocess with 3 machines running real processes, driven through
FleetClient and the ``fleetop node`` CLI, stopped with SIGTERM and SIGKILL and started again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fleetop.fleet.client import FleetClient, RetryPolicy
from fleetop.fleet.model import UnitState
from fleetop.fleet.units import UnitOption
from fleetop.node.cli import node_app
from waiting import eventually

PATIENT = RetryPolicy(attempts=400, initial=0.02, maximum=0.1, jitter=0.0, total=30.0)


WAIT = 45.0  # units start and stop on a loaded machine


def marker_processes(marker: str) -> dict[int, str]:
    """PIDs (and command lines) of the processes whose command line contains ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found[int(entry.name)] = cmdline
    return found


class NodeProcess:
    """A ``python -m fleetop.node.cli`` child. Only this process and the unit processes it started
    (found by the test's unique marker) are ever signalled, by PID."""

    def __init__(self, state_dir: Path, marker: str) -> None:
        self.state_dir = state_dir
        self.marker = marker
        self.endpoint = f"unix://{state_dir / 'fleet.sock'}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "fleetop.node.cli",
            "--machines",
            "3",
            "--state-dir",
            str(self.state_dir),
        ]
        args += ["--metadata", "1:role=web,2:role=db,3:role=web", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while self.proc.poll() is None:
            assert asyncio.get_running_loop().time() < deadline, "node did not exit"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, sig)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in marker_processes(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def node_proc() -> Iterator[NodeProcess]:
    base = Path(tempfile.mkdtemp(prefix="fi-"))
    node = NodeProcess(base / "state", f"1000.{random.randrange(10**8):08d}")
    try:
        yield node
    finally:
        node.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def started(node: NodeProcess) -> AsyncIterator[FleetClient]:
    node.start()
    async with FleetClient(node.endpoint, retry=PATIENT) as client:
        await client.list_machines()
        yield client


def sleeper(marker: str, *xfleet: tuple[str, str]) -> list[UnitOption]:
    options = [UnitOption("Service", "ExecStart", f"/bin/sleep {marker}")]
    return options + [UnitOption("X-Fleet", name, value) for name, value in xfleet]


async def running_states(client: FleetClient, names: set[str]) -> dict[str, UnitState] | None:
    states = {s.name: s for s in await client.list_states() if s.name in names}
    ok = len(states) == len(names) and all(
        (s.load_state, s.active_state, s.sub_state) == ("loaded", "active", "running")
        for s in states.values()
    )
    return states if ok else None


def cli(*args: str) -> Any:
    """Run the ``fleetop node`` sub-app the way the main CLI mounts it."""
    app = typer.Typer()
    app.add_typer(node_app, name="node")
    return CliRunner().invoke(app, ["node", *args])


async def test_units_run_spread_and_move_when_a_machine_stops(node_proc: NodeProcess) -> None:
    marker = node_proc.marker
    names = {"a.service", "b.service", "c.service", "a-side.service"}
    async with started(node_proc) as client:
        for name in ("a.service", "b.service", "c.service"):
            await client.create_unit(name, sleeper(marker), "launched")
        await client.create_unit("a-side.service", sleeper(marker, ("MachineOf", "a.service")), "launched")
        echo = [
            UnitOption("Service", "ExecStart", f"/bin/sh -c 'echo hello-journal; exec /bin/sleep {marker}'")
        ]
        await client.create_unit("echo.service", echo, "launched")
        names.add("echo.service")
        states = await eventually(lambda: running_states(client, names), WAIT)
        assert len({states[n].machine_id for n in ("a.service", "b.service", "c.service")}) == 3
        assert states["a-side.service"].machine_id == states["a.service"].machine_id
        assert len(marker_processes(marker)) >= 5
        for name in names:
            unit = await client.get_unit(name)
            assert unit is not None and unit.current_state == "launched"
            assert unit.machine_id == states[name].machine_id

        lost = states["a.service"].machine_id
        result = await asyncio.to_thread(
            cli, "--state-dir", str(node_proc.state_dir), "machine", "stop", lost[:12]
        )
        assert result.exit_code == 0, result.output
        assert lost not in {m.id for m in await client.list_machines()}

        async def moved() -> dict[str, UnitState] | None:
            now = await running_states(client, names)
            return now if now and now["a.service"].machine_id != lost else None

        states = await eventually(moved, WAIT)
        assert states["a-side.service"].machine_id == states["a.service"].machine_id
        assert lost not in {s.machine_id for s in await client.list_states()}

        result = await asyncio.to_thread(
            cli, "--state-dir", str(node_proc.state_dir), "machine", "start", lost
        )
        assert result.exit_code == 0, result.output
        assert lost in {m.id for m in await client.list_machines()}

        async def journal_has_line() -> Any:
            out = await asyncio.to_thread(
                cli, "--state-dir", str(node_proc.state_dir), "journal", "echo.service"
            )
            return out if "hello-journal" in out.output else None

        await eventually(journal_has_line, WAIT)
        bad = await asyncio.to_thread(cli, "--state-dir", str(node_proc.state_dir), "machine", "stop", "zzz")
        assert bad.exit_code == 1
    node_proc.signal(signal.SIGTERM)
    assert await node_proc.wait_exit() == 0
    assert await eventually(lambda: _none_left(marker), timeout=15)


async def _none_left(marker: str) -> bool:
    return not marker_processes(marker)


async def test_restarts_bring_units_back_and_sigkill_leaves_no_orphans(node_proc: NodeProcess) -> None:
    marker = node_proc.marker
    names = {"one.service", "two.service"}
    async with started(node_proc) as client:
        for name in sorted(names):
            await client.create_unit(name, sleeper(marker), "launched")
        await client.create_unit("idle.service", sleeper(marker), "loaded")
        before = await eventually(lambda: running_states(client, names), WAIT)
    first_pids = set(marker_processes(marker))
    assert len(first_pids) == 2

    node_proc.signal(signal.SIGTERM)
    assert await node_proc.wait_exit() == 0
    assert await eventually(lambda: _none_left(marker), timeout=15)

    async with started(node_proc) as client:
        after = await eventually(lambda: running_states(client, names), WAIT)
        assert {n: s.machine_id for n, s in after.items()} == {n: s.machine_id for n, s in before.items()}
        idle = await client.get_unit("idle.service")
        assert idle is not None and idle.desired_state == "loaded"
    second_pids = set(marker_processes(marker))
    assert len(second_pids) == 2 and not second_pids & first_pids

    node_proc.signal(signal.SIGKILL)
    await node_proc.wait_exit()
    assert set(marker_processes(marker)) == second_pids  # orphaned by the kill

    async with started(node_proc) as client:
        await eventually(lambda: running_states(client, names), WAIT)
        third_pids = set(marker_processes(marker))
        assert len(third_pids) == 2 and not third_pids & second_pids
    node_proc.signal(signal.SIGTERM)
    assert await node_proc.wait_exit() == 0
    assert await eventually(lambda: _none_left(marker), timeout=15)
