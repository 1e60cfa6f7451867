"""The unit supervisor with real processes: states as systemd reports them, process groups, journals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetop.fleet.units import UnitOption
from fleetop.node import journal
from fleetop.node import supervisor as supervisor_module
from fleetop.node.supervisor import MachineContext, RuntimeState, Supervisor

M1 = "1" * 32
M2 = "2" * 32
DEADLINE = 15.0


def svc(*pairs: tuple[str, str]) -> list[UnitOption]:
    return [UnitOption("Service", name, value) for name, value in pairs]


def machine(base: Path, mid: str = M1, n: int = 2) -> MachineContext:
    root = base / "machines" / mid
    (root / "etc").mkdir(parents=True, exist_ok=True)
    env = root / "etc" / "environment"
    env.write_text(f"COREOS_PRIVATE_IPV4=127.0.1.{n}\nCOREOS_PUBLIC_IPV4=127.0.1.{n}\n")
    return MachineContext(mid, f"m{n - 1}", f"127.0.1.{n}", root, {"/etc/environment": env})


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(tmp_path / "state")
    try:
        yield supervisor
    finally:
        await supervisor.shutdown()


async def wait_for(sup: Supervisor, unit: str, active: str, sub: str, mid: str = M1) -> RuntimeState:
    deadline = time.monotonic() + DEADLINE
    while True:
        state = sup.state(unit, mid)
        if state is not None and (state.active_state, state.sub_state) == (active, sub):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{unit}: wanted {active}/{sub}, have {state}")
        await asyncio.sleep(0.02)


async def wait_until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def live_members(pgid: int) -> list[int]:
    """Processes (not zombies) in process group ``pgid``, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                found.append(int(entry))
    return found


def recorded_groups(state_dir: Path) -> list[int]:
    return sorted(int(p.read_text().split()[0]) for p in (state_dir / "run").glob("*.pid"))


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---- running, failing, restarting ----------------------------------------------------------------


async def test_web_instance_answers_on_its_machine_address(sup: Supervisor, tmp_path: Path) -> None:
    m = machine(tmp_path, n=2)
    port = free_port("127.0.1.2")
    unit = f"web@{port}.service"
    options = svc(
        ("EnvironmentFile", "/etc/environment"),
        ("ExecStart", "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i"),
    )
    await sup.start(unit, options, m, "h1")
    state = await wait_for(sup, unit, "active", "running")
    assert (state.load_state, state.hash, state.machine_id) == ("loaded", "h1", M1)

    def get() -> int:
        with urllib.request.urlopen(f"http://127.0.1.2:{port}/", timeout=2) as response:
            return int(response.status)

    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            assert await asyncio.to_thread(get) == 200
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    path = sup.journal_path(unit, M1)
    await wait_until(lambda: any('"GET / HTTP/1.1" 200' in line for line in journal.tail(path, 50)), "log")
    assert any(" m1 fleetop-node[" in line and "Started" in line for line in journal.tail(path, 50))
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    await sup.stop(unit, M1)
    assert sup.state(unit, M1) == RuntimeState(unit, M1, "h1", "loaded", "inactive", "dead")


async def test_failing_exec_start_is_failed(sup: Supervisor, tmp_path: Path) -> None:
    await sup.start("fail.service", svc(("ExecStart", "/bin/sh -c 'exit 3'")), machine(tmp_path), "h")
    await wait_for(sup, "fail.service", "failed", "failed")
    text = sup.journal_path("fail.service", M1).read_text()
    assert "Main process exited, code=exited, status=3/" in text
    assert "Failed with result 'exit-code'." in text
    await sup.stop("fail.service", M1)  # a stop does not reset a failed unit
    assert sup.state("fail.service", M1).sub_state == "failed"  # type: ignore[union-attr]


async def test_restart_on_failure_until_start_limit(sup: Supervisor, tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    options = svc(
        ("ExecStart", f"/bin/sh -c 'echo start >> {counter}; exit 1'"),
        ("Restart", "on-failure"),
        ("RestartSec", "0.3"),  # seconds without a unit, as "1" is; shorter, so the two restarts cost 0.6 s
        ("StartLimitBurst", "3"),
        ("StartLimitIntervalSec", "30"),
    )
    seen: set[tuple[str, str]] = set()

    def record() -> None:
        state = sup.state("flaky.service", M1)
        if state is not None:
            seen.add((state.active_state, state.sub_state))

    sup.on_change = record
    await sup.start("flaky.service", options, machine(tmp_path), "h")
    await wait_for(sup, "flaky.service", "failed", "failed")
    assert counter.read_text().count("start") == 3
    assert ("activating", "auto-restart") in seen
    text = sup.journal_path("flaky.service", M1).read_text()
    assert "Scheduled restart job, restart counter is at 2." in text
    assert "Start request repeated too quickly." in text
    assert "Failed with result 'start-limit-hit'." in text


async def test_restart_always_alternates_running_and_auto_restart(sup: Supervisor, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    options = svc(
        ("ExecStart", f"/bin/sh -c 'echo run >> {counter}; sleep 0.3'"),
        ("Restart", "always"),
        ("RestartSec", "200ms"),
    )
    await sup.start("loop.service", options, machine(tmp_path), "h")
    await wait_for(sup, "loop.service", "activating", "auto-restart")
    await wait_for(sup, "loop.service", "active", "running")
    await wait_until(lambda: counter.exists() and counter.read_text().count("run") >= 2, "a restart")
    await sup.stop("loop.service", M1)
    assert sup.state("loop.service", M1).sub_state == "dead"  # type: ignore[union-attr]


async def test_dash_prefix_tolerates_failures(sup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    options = svc(
        ("ExecStartPre", "-/bin/false"),
        ("ExecStartPre", "-/nonexistent/binary"),
        ("ExecStart", f"/bin/sh -c 'touch {marker}; sleep 60'"),
        ("ExecStartPost", "-/bin/false"),
    )
    await sup.start("dash.service", options, machine(tmp_path), "h")
    await wait_for(sup, "dash.service", "active", "running")
    assert marker.exists()
    await sup.start("dashmain.service", svc(("ExecStart", "-/bin/false")), machine(tmp_path), "h")
    await wait_for(sup, "dashmain.service", "inactive", "dead")


async def test_failing_start_pre_fails_without_running_exec_start(sup: Supervisor, tmp_path: Path) -> None:
    marker, post = tmp_path / "ran", tmp_path / "post"
    options = svc(
        ("ExecStartPre", "/bin/true"),
        ("ExecStartPre", "/bin/false"),
        ("ExecStart", f"/bin/touch {marker}"),
        ("ExecStopPost", f"/bin/touch {post}"),
    )
    await sup.start("pre.service", options, machine(tmp_path), "h")
    await wait_for(sup, "pre.service", "failed", "failed")
    assert not marker.exists()
    assert post.exists()  # ExecStopPost= runs even when the start failed, as in systemd
    assert (
        "Control process exited, code=exited, status=1/FAILURE" in sup.journal_path("pre.service").read_text()
    )


# ---- stopping ------------------------------------------------------------------------------------


async def test_exec_stop_gets_mainpid_and_the_group_is_killed(sup: Supervisor, tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    options = svc(
        ("ExecStart", "/bin/sh -c 'sleep 1000 & sleep 1000'"),
        ("ExecStop", f"/bin/sh -c 'echo $MAINPID > {stopped}'"),
    )
    await sup.start("grp.service", options, machine(tmp_path), "h")
    await wait_for(sup, "grp.service", "active", "running")
    (pgid,) = recorded_groups(tmp_path / "state")
    await wait_until(lambda: len(live_members(pgid)) == 3, "sh and two sleeps")
    await sup.stop("grp.service", M1)
    assert sup.state("grp.service", M1).sub_state == "dead"  # type: ignore[union-attr]
    assert stopped.read_text().strip() == str(pgid)
    assert live_members(pgid) == []
    assert recorded_groups(tmp_path / "state") == []


async def test_sigterm_ignored_means_sigkill_after_timeout(sup: Supervisor, tmp_path: Path) -> None:
    options = svc(
        ("ExecStart", "/bin/sh -c 'trap \"\" TERM; sleep 1000 & sleep 1000'"), ("TimeoutStopSec", "1")
    )
    await sup.start("stubborn.service", options, machine(tmp_path), "h")
    await wait_for(sup, "stubborn.service", "active", "running")
    (pgid,) = recorded_groups(tmp_path / "state")
    await wait_until(lambda: len(live_members(pgid)) == 3, "sh and two sleeps")
    await sup.stop("stubborn.service", M1)
    assert live_members(pgid) == []
    # as systemd: the stop timed out, so the unit ends failed with result 'timeout'
    assert sup.state("stubborn.service", M1).sub_state == "failed"  # type: ignore[union-attr]
    text = sup.journal_path("stubborn.service", M1).read_text()
    assert "State 'stop-sigterm' timed out. Killing." in text
    assert "Failed with result 'timeout'." in text


async def test_kill_mode_process_leaves_children_until_unload(sup: Supervisor, tmp_path: Path) -> None:
    options = svc(("ExecStart", "/bin/sh -c 'sleep 1000 & sleep 1000'"), ("KillMode", "process"))
    await sup.start("proc.service", options, machine(tmp_path), "h")
    await wait_for(sup, "proc.service", "active", "running")
    (pgid,) = recorded_groups(tmp_path / "state")
    await wait_until(lambda: len(live_members(pgid)) == 3, "sh and two sleeps")
    await sup.stop("proc.service", M1)
    assert sup.state("proc.service", M1).sub_state == "dead"  # type: ignore[union-attr]
    assert len(live_members(pgid)) == 2  # only the main process was signalled
    await sup.unload("proc.service", M1)
    assert live_members(pgid) == []
    assert sup.state("proc.service", M1) is None


async def test_start_timeout_fails_the_unit(sup: Supervisor, tmp_path: Path) -> None:
    options = svc(("Type", "oneshot"), ("ExecStart", "/bin/sleep 1000"), ("TimeoutStartSec", "500ms"))
    await sup.start("slow.service", options, machine(tmp_path), "h")
    await wait_for(sup, "slow.service", "failed", "failed")
    assert "Failed with result 'timeout'." in sup.journal_path("slow.service").read_text()
    assert recorded_groups(tmp_path / "state") == []


async def test_stop_then_start_again(sup: Supervisor, tmp_path: Path) -> None:
    m = machine(tmp_path)
    options = svc(("ExecStart", "/bin/sleep 1000"))
    await sup.start("again.service", options, m, "h")
    await wait_for(sup, "again.service", "active", "running")
    stopping = asyncio.create_task(sup.stop("again.service", M1))
    await asyncio.sleep(0)
    await sup.start("again.service", options, m, "h")  # queued behind the stop, as systemd does
    await stopping
    await wait_for(sup, "again.service", "active", "running")


# ---- oneshot, load states ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "active", "sub"),
    [
        (svc(("Type", "oneshot"), ("ExecStart", "/bin/true")), "inactive", "dead"),
        (svc(("ExecStart", "/bin/true")), "inactive", "dead"),
        (
            svc(("Type", "oneshot"), ("RemainAfterExit", "yes"), ("ExecStart", "/bin/true")),
            "active",
            "exited",
        ),
        (
            svc(("Type", "oneshot"), ("ExecStart", "/bin/true"), ("ExecStart", "/bin/false")),
            "failed",
            "failed",
        ),
        (svc(("ExecStart", "/nonexistent/bin")), "failed", "failed"),
        (svc(("ExecStart", "no-such-command-anywhere")), "failed", "failed"),
        (svc(("ExecStart", "/bin/sleep 100"), ("EnvironmentFile", "/etc/missing")), "failed", "failed"),
        (svc(("ExecStart", "/bin/sleep 100"), ("EnvironmentFile", "-/etc/missing")), "active", "running"),
        (svc(("ExecStart", "/bin/sleep 100"), ("WorkingDirectory", "/nonexistent")), "failed", "failed"),
        (svc(("ExecStart", "/bin/sh -c 'kill -TERM $$$$'")), "inactive", "dead"),
        (svc(("ExecStart", "/bin/sh -c 'kill -KILL $$$$'")), "failed", "failed"),
        (svc(("ExecStart", "/bin/sh -c 'exit 7'"), ("SuccessExitStatus", "7")), "inactive", "dead"),
    ],
)
async def test_final_states(
    sup: Supervisor, tmp_path: Path, options: list[UnitOption], active: str, sub: str
) -> None:
    await sup.start("x.service", options, machine(tmp_path), "h")
    await wait_for(sup, "x.service", active, sub)


async def test_load_states(sup: Supervisor, tmp_path: Path) -> None:
    m = machine(tmp_path)
    await sup.load("ok.service", svc(("ExecStart", "/bin/sleep 100")), m, "h1")
    await sup.start("bad.service", [UnitOption("Unit", "Description", "no exec")], m, "h2")
    await sup.load("nouser.service", svc(("ExecStart", "/bin/true"), ("User", "no-such-user-x")), m, "h3")
    assert sup.states() == [
        RuntimeState("bad.service", M1, "h2", "bad-setting", "inactive", "dead"),
        RuntimeState("nouser.service", M1, "h3", "bad-setting", "inactive", "dead"),
        RuntimeState("ok.service", M1, "h1", "loaded", "inactive", "dead"),
    ]
    assert "no such user" in sup.journal_path("nouser.service").read_text()
    await sup.unload("ok.service", M1)
    assert sup.state("ok.service", M1) is None


async def test_environment_and_specifiers_reach_the_process(sup: Supervisor, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = machine(tmp_path, n=3)
    script = 'printf "%%s|" "$@" > ' + str(out)  # %% is a literal % for systemd
    options = svc(
        ("Type", "oneshot"),
        ("Environment", '"GREETING=hello world" OPTS=-a\\s-b'),
        ("EnvironmentFile", "/etc/environment"),
        ("ExecStart", f"/bin/sh -c '{script}' sh %n %i %m %H ${{GREETING}} $OPTS ${{COREOS_PUBLIC_IPV4}}"),
    )
    await sup.start("env@42.service", options, m, "h")
    await wait_for(sup, "env@42.service", "inactive", "dead")
    assert out.read_text() == f"env@42.service|42|{M1}|m2|hello world|-a|-b|127.0.1.3|"


async def test_same_unit_on_two_machines(sup: Supervisor, tmp_path: Path) -> None:
    options = svc(("ExecStart", "/bin/sh -c 'echo on %H; sleep 1000'"))
    await sup.start("glob.service", options, machine(tmp_path, M2, 3), "h")
    await sup.start("glob.service", options, machine(tmp_path, M1, 2), "h")
    await wait_for(sup, "glob.service", "active", "running", M1)
    await wait_for(sup, "glob.service", "active", "running", M2)
    assert [(s.unit, s.machine_id) for s in sup.states()] == [("glob.service", M1), ("glob.service", M2)]
    path2 = sup.journal_path("glob.service", M2)
    await wait_until(lambda: "on m2" in journal.tail(path2, 10), "output on m2")
    assert "on m1" not in journal.tail(path2, 10)
    await sup.stop_machine(M2)
    assert [s.machine_id for s in sup.states()] == [M1]


async def test_shutdown_leaves_nothing_running(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "state")
    m = machine(tmp_path)
    for name in ("a", "b", "c"):
        await sup.start(f"{name}.service", svc(("ExecStart", "/bin/sh -c 'sleep 1000 & sleep 1000'")), m, "h")
    for name in ("a", "b", "c"):
        await wait_for(sup, f"{name}.service", "active", "running")
    groups = recorded_groups(tmp_path / "state")
    assert len(groups) == 3
    await sup.shutdown()
    assert sup.states() == []
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert [pid for g in groups for pid in live_members(g)] == []
    assert recorded_groups(tmp_path / "state") == []


# ---- a crashed node ------------------------------------------------------------------------------

NODE = """
import asyncio, sys
from pathlib import Path
from fleetop.fleet.units import UnitOption
from fleetop.node.supervisor import MachineContext, Supervisor

async def main():
    state = Path(sys.argv[1])
    sup = Supervisor(state)
    m = MachineContext("1" * 32, "m1", "127.0.1.2", state / "m1")
    for name in ("one", "two"):
        opts = [UnitOption("Service", "ExecStart", "/bin/sh -c 'sleep 1000 & sleep 1000'")]
        await sup.start(name + ".service", opts, m, "h")
    while not all(s.sub_state == "running" for s in sup.states()):
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_cleanup_orphans_after_a_crash(tmp_path: Path) -> None:
    state = tmp_path / "state"
    node = subprocess.Popen([sys.executable, "-c", NODE, str(state)], stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        assert await asyncio.to_thread(node.stdout.readline) == "ready\n"
        groups = recorded_groups(state)
        assert len(groups) == 2
        await wait_until(lambda: all(len(live_members(g)) == 3 for g in groups), "units running")
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
    assert all(live_members(g) for g in groups)  # the units survived the node
    assert Supervisor(state).cleanup_orphans() == 2
    assert [pid for g in groups for pid in live_members(g)] == []
    assert recorded_groups(state) == []
    assert Supervisor(state).cleanup_orphans() == 0


def test_cleanup_orphans_never_kills_a_reused_pid(tmp_path: Path) -> None:
    """A record whose PGID now belongs to a process with another start time is dropped, not killed."""
    bystander = subprocess.Popen(["/bin/sleep", "1000"], start_new_session=True)
    try:
        run = tmp_path / "state" / "run"
        run.mkdir(parents=True)
        (run / f"{bystander.pid}.pid").write_text(f"{bystander.pid} 1 1 {M1} old.service\n")
        (run / "garbage.pid").write_text("not a record")
        assert Supervisor(tmp_path / "state").cleanup_orphans() == 0
        assert bystander.poll() is None
        assert list(run.glob("*.pid")) == []
    finally:
        bystander.kill()
        bystander.wait()


# ---- journal -------------------------------------------------------------------------------------


async def test_journal_lines_and_tail(sup: Supervisor, tmp_path: Path) -> None:
    options = svc(
        ("Type", "oneshot"),
        ("ExecStart", "/bin/sh -c 'for i in 1 2 3 4 5; do echo line$i; done; echo err >&2; printf tail'"),
    )
    await sup.start("log.service", options, machine(tmp_path), "h")
    await wait_for(sup, "log.service", "inactive", "dead")
    path = sup.journal_path("log.service")
    assert path == sup.journal_path("log.service", M1)
    lines = path.read_text().splitlines()
    notes = [line for line in lines if " fleetop-node[" in line]
    outputs = [line for line in lines if line not in notes]
    # the unit's output as it wrote it, an unterminated last line kept apart from the next note
    assert outputs == ["line1", "line2", "line3", "line4", "line5", "err", "tail"]
    assert notes[0].split()[3] == "m1"  # "Nov 21 11:09:03 m1 fleetop-node[1234]: Starting log.service..."
    assert notes[-1].endswith("Deactivated successfully.")
    assert journal.tail(path, 2) == lines[-2:]
    assert journal.tail(path, 1000) == lines


def test_journal_rotation_and_tail_across_files(tmp_path: Path) -> None:
    path = tmp_path / "u.log"
    log = journal.JournalFile(path, host="m1", max_bytes=400, clock=lambda: 0.0)
    for i in range(20):
        log.write("app", 7, f"message {i:02d}")
    log.close()
    assert journal.rotated_path(path).exists()
    assert path.stat().st_size <= 400
    tail = journal.tail(path, 12)
    assert [line.rpartition(" ")[2] for line in tail] == [f"{i:02d}" for i in range(8, 20)]


def test_journal_splits_multiline_messages(tmp_path: Path) -> None:
    path = tmp_path / "u.log"
    log = journal.JournalFile(path, host="h")
    log.write("x", None, "a\nb")
    log.close()
    assert [line.rpartition(": ")[2] for line in journal.tail(path, 5)] == ["a", "b"]
    assert journal.tail(tmp_path / "missing.log", 5) == []


async def test_journal_follow_sees_new_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    log = journal.JournalFile(path, host="h", max_bytes=300)
    log.write("x", 1, "before")
    seen: list[str] = []

    async def reader() -> None:
        async for line in journal.follow(path, lines=1, poll_interval=0.02):
            seen.append(line.rpartition(": ")[2])
            if seen[-1] == "last":
                return

    task = asyncio.create_task(reader())
    await wait_until(lambda: seen == ["before"], "the tail")
    for i in range(10):
        log.write("x", 1, f"after {i}")
    log.write("x", 1, "last")
    await asyncio.wait_for(task, DEADLINE)
    log.close()
    assert seen[0] == "before" and seen[-1] == "last"
    assert [s for s in seen if s.startswith("after")] == [f"after {i}" for i in range(10)]


def test_journal_rotation_keeps_writers_that_hold_the_file(tmp_path: Path) -> None:
    """A unit holds the journal open (O_APPEND): rotation copies and truncates in place, so the unit
    goes on writing to the current file, and a reader at an old offset finds the rest in ``.1``."""
    path = tmp_path / "j" / "u.log"
    log = journal.JournalFile(path, host="h", max_bytes=1000)
    log.write("x", None, "first")
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys; [print(f'out {i:03d}') for i in range(200)]"],
        stdout=log.fd(),
        stderr=log.fd(),
    )
    assert writer.wait(30) == 0
    reader_offset = path.stat().st_size - 16  # a follower that has not read the last two lines
    log.bound()
    assert path.stat().st_size == 0 and journal.rotated_path(path).stat().st_size > 1000
    data, end = journal.read_from(path, reader_offset, 1 << 20)
    assert data == b"out 198\nout 199\n" and end == 0
    again = subprocess.Popen([sys.executable, "-c", "print('after rotation')"], stdout=log.fd())
    assert again.wait(30) == 0
    log.close()
    assert journal.tail(path, 3) == ["out 198", "out 199", "after rotation"]
    assert journal.read_from(path, 0, 1 << 20) == (b"after rotation\n", 15)
    assert journal.read_from(path, 5, 4) == (b"ion\n", 15)  # at most the last ``limit`` bytes
    for file in (path, journal.rotated_path(path)):
        assert file.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


async def test_a_unit_writing_its_journal_directly_is_kept_within_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "DEFAULT_MAX_BYTES", 64 * 1024)
    monkeypatch.setattr(supervisor_module, "JOURNAL_CHECK_INTERVAL", 0.05)
    sup = Supervisor(tmp_path / "state")
    try:
        options = svc(("ExecStart", "/bin/sh -c 'yes 0123456789abcdef | head -n 100000; exec sleep 1000'"))
        await sup.start("chatty.service", options, machine(tmp_path), "h")
        path = sup.journal_path("chatty.service", M1)

        def rotated_and_bounded() -> bool:
            rotated = journal.rotated_path(path)
            return (
                rotated.exists()
                and path.stat().st_size <= 64 * 1024
                and "0123456789abcdef" in rotated.read_text()
            )

        await wait_until(rotated_and_bounded, "the journal rotated and within its bound")
        assert (await wait_for(sup, "chatty.service", "active", "running")).sub_state == "running"
    finally:
        await sup.shutdown()


def test_journal_path_for_unknown_unit(tmp_path: Path) -> None:
    from fleetop.errors import NotFound

    with pytest.raises(NotFound):
        Supervisor(tmp_path).journal_path("nothing.service")
    with contextlib.suppress(NotFound), pytest.raises(NotFound):
        Supervisor(tmp_path).journal_path("../etc/passwd")
