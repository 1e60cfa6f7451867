"""Crash loops end to end: real etcd, ``fleetop node --machines 3`` and ``fleetop run`` as processes.

The operator runs with ``--restart-backoff 1`` (1 s doubling to 30 s) so that several restarts fit in
a test; the planner tests check the default 10 s to 5 min. Nothing here asserts a duration: re-creations
are counted from the operator's events, and the only bounds are lower bounds (a restart can never come
before its back-off) and generous deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ophelpers import Node, Operator, events_of, owned_mains, running, status_of

from fleetop.etcd.client import Etcd
from fleetop.fleet.client import FleetClient
from fleetop.keys import Keys
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import Event, ServiceStatus
from fleetop.timefmt import parse_rfc3339
from waiting import eventually

PREFIX = f"/t/crashloop-{os.getpid()}"
KEYS = Keys()
BASE = 1.0
FAST_RESTART = "200ms"
"""A unit that cannot start: systemd's start limit (5 starts) fails it after 1 s, not the 5 s of the
default ``RestartSec=1``, so each crash-loop cycle costs the operator's back-off and little else."""


@pytest.fixture(scope="module")
def node_etcd(etcd_server: EtcdServer) -> str:
    """The node's machines point their units (sidekicks) at the test's etcd."""
    return etcd_server.endpoint


@pytest.fixture(scope="module")
def operator(
    node: Node, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    base = tmp_path_factory.mktemp("operator")
    backoff = ("--restart-backoff", str(BASE))
    child = Operator(base, "crashloop", etcd_server.endpoint, PREFIX, node.endpoint, extra_args=backoff)
    with running(child) as proc:
        yield proc


def count_of(events: list[Event], message: str) -> int:
    return sum(e.count for e in events if e.message == message)


async def remove(etcd: Etcd, fleet: FleetClient, name: str) -> None:
    await etcd.delete(KEYS.desired("services", name))

    async def gone() -> bool:
        return not [u for u in await fleet.list_units() if u.name.startswith((f"{name}@", f"{name}-"))]

    await eventually(gone, 60.0, f"{name}'s units to be destroyed")


def _degraded(status: ServiceStatus | None) -> tuple[str, str, str] | None:
    condition = status.condition("Degraded") if status is not None else None
    if condition is None or condition.status != "True":
        return None
    return condition.status, condition.reason, condition.message


async def test_a_command_that_cannot_start_backs_off_and_says_why(
    etcd: Etcd, fleet: FleetClient, operator: Operator
) -> None:
    name, unit = "crash", "crash@8101.service"
    unit_spec = {"execStart": "/nonexistent/bin %i", "restartSec": FAST_RESTART}
    body = {"replicas": 1, "ports": {"base": 8101}, "unit": unit_spec}
    await etcd.put(KEYS.desired("services", name), json.dumps(body).encode())

    async def degraded() -> tuple[str, str, str] | None:
        return _degraded(await status_of(etcd, name))

    try:
        _, reason, message = await eventually(degraded, 60.0, "Degraded=True for a missing binary", every=0.5)
    except AssertionError:
        print(operator.log_tail())
        raise
    assert reason == "FailedToStart"
    assert message.startswith(f"{unit} loaded/failed/failed on "), message

    created = f"Created {unit}"
    seen_at: list[float] = []
    delays: list[float] = []
    names: set[str] = set()

    async def four_restarts() -> bool:
        events = await events_of(etcd, name)
        while len(seen_at) < count_of(events, created):
            seen_at.append(time.monotonic())
        names.update(u.name for u in owned_mains(await fleet.list_units(), name))
        status = await status_of(etcd, name)
        for row in status.restarts if status is not None else []:
            delay = (parse_rfc3339(row.next_try) - parse_rfc3339(row.last_failure)).total_seconds()
            if row.phase == "failed" and (not delays or delays[-1] != delay):
                delays.append(delay)
        return len(seen_at) >= 5

    try:
        await eventually(four_restarts, 200.0, "four re-creations", every=0.25)
    except AssertionError:
        print(operator.log_tail())
        raise
    assert names == {unit}, "every re-creation keeps the instance number (and its port)"
    assert delays == sorted(set(delays)) and {4.0, 8.0} <= set(delays), delays
    assert all(d in (1.0, 2.0, 4.0, 8.0, 16.0, 30.0) for d in delays), delays
    gaps = [b - a for a, b in itertools.pairwise(seen_at)]
    # a re-creation never comes before its back-off (the poll adds up to 0.25 s either way)
    assert all(gap >= delay - 0.6 for gap, delay in zip(gaps[1:], (2.0, 4.0, 8.0), strict=False)), gaps
    events = await events_of(etcd, name)
    backoffs = [e for e in events if e.reason == "BackOff"]
    assert len(backoffs) == 1 and backoffs[0].type == "Warning" and backoffs[0].count >= 4, backoffs
    assert len([e for e in events if e.message == created]) == 1, "one event with a count, not a flood"
    status = await status_of(etcd, name)
    assert status is not None and status.restarts and status.restarts[0].restarts >= 4
    await remove(etcd, fleet, name)


def _main_script(base: Path) -> Path:
    """A main unit that records its PID and sleeps."""
    base.mkdir(parents=True, exist_ok=True)
    main = base / "main.py"
    main.write_text(
        "import os, sys, time\n"
        f"with open({str(base)!r} + '/main-' + sys.argv[1] + '.pids', 'a') as f:\n"
        "    f.write(str(os.getpid()) + '\\n')\n"
        "while True:\n"
        "    time.sleep(60)\n"
    )
    return main


def _children(root: int) -> dict[int, bytes]:
    """Descendants of ``root`` (by /proc's parent links): pid -> command line."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                parents[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                commands[int(entry)] = f.read()
        except (OSError, ValueError, IndexError):
            continue

    def under(pid: int) -> bool:
        for _ in range(32):
            pid = parents.get(pid, 0)
            if pid == root:
                return True
            if pid <= 1:
                return False
        return False

    return {pid: command for pid, command in commands.items() if under(pid)}


async def _crash_sidekicks(node: Node, service: str) -> None:
    """Kill every ``fleetop register`` of ``service`` that the test's node starts, as soon as it
    appears, so the sidekick crashes at every start and systemd's start limit fails it (a check
    that crashes it from inside takes a Python start-up per cycle: too slow for the limit on a
    loaded machine). Only the node's own descendants are touched, by PID."""
    assert node.proc is not None
    needle = f"--service\0{service}\0".encode()
    while True:
        for pid, command in _children(node.proc.pid).items():
            if b"register" in command and needle in command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.02)


async def test_a_failing_sidekick_restarts_alone(
    etcd: Etcd, fleet: FleetClient, operator: Operator, node: Node, tmp_path: Path
) -> None:
    name, main_unit, side_unit = "lone", "lone@8201.service", "lone-discovery@8201.service"
    main = _main_script(tmp_path / "scripts")
    body = {
        "replicas": 1,
        "ports": {"base": 8201},
        "unit": {"execStart": f"{sys.executable} {main} %i"},
        "discovery": {"sidekick": True, "check": {"exec": "/bin/true"}},
    }
    crasher = asyncio.create_task(_crash_sidekicks(node, name))
    try:
        await etcd.put(KEYS.desired("services", name), json.dumps(body).encode())
        await _sidekick_restarts_alone(etcd, fleet, operator, tmp_path, (name, main_unit, side_unit))
    finally:
        crasher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await crasher
    await remove(etcd, fleet, name)


async def _sidekick_restarts_alone(
    etcd: Etcd, fleet: FleetClient, operator: Operator, tmp_path: Path, names: tuple[str, str, str]
) -> None:
    name, main_unit, side_unit = names
    restarted = f"Destroyed {side_unit} (failed: restarted alone after its back-off)"

    async def two_sidekick_restarts() -> bool:
        status = await status_of(etcd, name)
        records = status.restarts if status is not None else []
        again = any(r.unit == side_unit and r.restarts >= 2 for r in records)
        return again and count_of(await events_of(etcd, name), restarted) >= 2

    try:
        await eventually(two_sidekick_restarts, 200.0, "the sidekick to be restarted twice", every=0.5)
    except AssertionError:
        print(operator.log_tail(), await status_of(etcd, name), await events_of(etcd, name))
        raise
    pids = (tmp_path / "scripts" / "main-8201.pids").read_text().split()
    assert len(pids) == 1, f"the main unit was restarted: {pids}"
    os.kill(int(pids[0]), 0)  # still the same process
    events = await events_of(etcd, name)
    assert not [e for e in events if main_unit in e.message and e.reason == "Destroyed"], events
    assert count_of(events, f"Created {main_unit}") == 1
    assert [u.name for u in owned_mains(await fleet.list_units(), name)] == [main_unit]

    async def degraded_by_the_sidekick() -> tuple[str, str, str] | None:
        degraded = _degraded(await status_of(etcd, name))
        return degraded if degraded is not None and side_unit in degraded[2] else None

    # Degraded holds while the sidekick waits out its back-off and clears the moment it is created
    # again; the crasher fails it again, so the next back-off shows it (reading the status once right
    # after the second restart may fall in the short window in between).
    await eventually(degraded_by_the_sidekick, 60.0, "Degraded=True naming the sidekick", every=0.2)
    assert (tmp_path / "scripts" / "main-8201.pids").read_text().split() == pids, "the main unit ran on"
    status = await status_of(etcd, name)
    assert status is not None and all(r.unit == side_unit for r in status.restarts), status.restarts


async def test_auto_rollback_returns_to_the_last_available_template(
    etcd: Etcd, fleet: FleetClient, operator: Operator
) -> None:
    name = "undo"
    good = {"replicas": 1, "ports": {"base": 8301}, "unit": {"execStart": "/bin/sleep 1000"}}
    await etcd.put(KEYS.desired("services", name), json.dumps(good).encode())

    async def available() -> ServiceStatus | None:
        status = await status_of(etcd, name)
        progressing = status.condition("Progressing") if status is not None else None
        done = progressing is not None and progressing.reason == "NewReplicaSetAvailable"
        return status if done else None

    first = await eventually(available, 60.0, f"{name} to be fully available", every=0.5)
    bad = {
        **good,
        "unit": {"execStart": "/nonexistent/bin %i", "restartSec": FAST_RESTART},
        "rollout": {"progressDeadlineSeconds": 5, "autoRollback": True},
    }
    written = json.dumps(bad).encode()
    await etcd.put(KEYS.desired("services", name), written)

    async def rolled_back() -> ServiceStatus | None:
        status = await status_of(etcd, name)
        progressing = status.condition("Progressing") if status is not None else None
        return status if progressing is not None and progressing.reason == "RolledBack" else None

    try:
        status = await eventually(rolled_back, 120.0, "the rollout to be rolled back", every=0.5)
    except AssertionError:
        print(operator.log_tail(), await status_of(etcd, name))
        raise
    assert status.template == first.template
    assert status.rollback is not None and status.rollback.to_template == first.template
    stored = await etcd.get(KEYS.desired("services", name))
    assert stored is not None and stored.value == written, "the spec in etcd stays as written"
    events = await events_of(etcd, name)
    assert [e.type for e in events if e.reason == "RolledBack"] == ["Warning"]

    async def only_the_old_template_runs() -> bool:
        mains = owned_mains(await fleet.list_units(), name)
        return [u.name for u in mains] == ["undo@8301.service"] and all(
            f"Template={first.template}" in " ".join(f"{o.name}={o.value}" for o in u.options) for u in mains
        )

    await eventually(only_the_old_template_runs, 60.0, "only the old template's unit", every=0.5)
    assert count_of(events, "Created undo@8301.service") == 1, "the available instance was never replaced"
    await remove(etcd, fleet, name)
