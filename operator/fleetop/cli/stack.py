"""``fleetop up`` and ``fleetop down``: the one-host stack for laptops, CI and demos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from fleetop.errors import FleetopError
from fleetop.filemodes import make_dir, open_log
from fleetop.local.up import (
    Stack,
    UpConfig,
    default_state_dir,
    fleetop_command,
    read_record,
    refuse_if_running,
    running_up,
    stop_detached,
)


def format_summary(record: dict[str, object]) -> str:
    """What runs where, and what to export to use it from another shell (pure)."""
    processes = record.get("processes")
    pids = processes if isinstance(processes, dict) else {}
    metrics = f"http://{record.get('metricsAddress')}/metrics"
    lines = [
        f"fleetop is up (state in {record.get('stateDir')})",
        f"  etcd      {record.get('etcdEndpoint'):<44} pid {pids.get('etcd', '-')}",
        f"  node      {record.get('fleetEndpoint')!s:<44} pid {pids.get('node', '-')}, "
        f"{record.get('machines')} machines",
        f"  operator  {metrics:<44} pid {pids.get('operator', '-')}",
        "",
        "To use it from another shell:",
        f"  export ETCDCTL_ENDPOINTS={record.get('etcdEndpoint')}",
        f"  export FLEETCTL_ENDPOINT={record.get('fleetEndpoint')}",
    ]
    if record.get("prefix"):
        lines.append(f"  export FLEETOP_PREFIX={record.get('prefix')}")
    return "\n".join(lines) + "\n"


def up(
    machines: Annotated[int, typer.Option("--machines", min=1, max=64, help="modeled machines")] = 3,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="where state lives")] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="run in the background; stop with down")
    ] = False,
    demo: Annotated[bool, typer.Option("--demo", help="also deploy and narrate the hello demo")] = False,
    etcd_port: Annotated[int, typer.Option("--etcd-port", help="preferred etcd client port")] = 2379,
) -> None:
    """Start an embedded etcd, fleetop node and the operator on this host, and start again any of them
    that exits; Ctrl-C (or ``fleetop down`` after ``--detach``) stops them in order."""
    state_dir = (state_dir or default_state_dir()).expanduser().resolve()
    if detach:
        _detach(machines, state_dir, demo, etcd_port)
        return
    config = UpConfig(state_dir=state_dir, machines=machines, etcd_port=etcd_port)
    stack = Stack(config, log=lambda text: print(f"fleetop up: {text}", flush=True))

    def on_signal(signum: int, _frame: object) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    supervisor = threading.Thread(target=stack.supervise, name="fleetop-up-supervisor", daemon=True)
    try:
        stack.start()
        print(format_summary(stack.record()), end="", flush=True)
        supervisor.start()  # from here on, a part that exits is started again
        if demo:
            from fleetop.local.demo import run_demo

            run_demo(stack.environment(), stack.stopping, print)
        print(
            "Stop with Ctrl-C" + (" or `fleetop down`." if os.environ.get("FLEETOP_DETACHED") else "."),
            flush=True,
        )
        while not stack.stopping.wait(1.0):
            pass
    except FleetopError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(1) from None
    finally:
        stack.stopping.set()
        if supervisor.is_alive():
            supervisor.join()
        stack.stop()
        print("fleetop up: stopped", flush=True)


def _detach(machines: int, state_dir: Path, demo: bool, etcd_port: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    pid = running_up(state_dir)
    if pid is not None:
        print(
            f"error: a stack is already running from {state_dir} (pid {pid}); `fleetop down` first",
            file=sys.stderr,
        )
        raise typer.Exit(1)
    try:
        refuse_if_running(state_dir)
    except FleetopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    args = ["up", "--machines", str(machines), "--state-dir", str(state_dir), "--etcd-port", str(etcd_port)]
    if demo:
        args.append("--demo")
    make_dir(state_dir / "logs")
    log_path = state_dir / "logs" / "up.log"
    with open_log(log_path) as log:
        process = subprocess.Popen(
            fleetop_command(UpConfig(), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "FLEETOP_DETACHED": "1"},
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = read_record(state_dir)
        if record is not None and record.get("pid") == process.pid:
            print(format_summary(record), end="")
            print(f"Running in the background (pid {process.pid}, log {log_path}). Stop with `fleetop down`.")
            return
        if process.poll() is not None:
            print(f"error: fleetop up exited (status {process.returncode}); see {log_path}", file=sys.stderr)
            raise typer.Exit(1)
        time.sleep(0.2)
    process.terminate()
    print(f"error: the stack did not come up within 120 s; see {log_path}", file=sys.stderr)
    raise typer.Exit(1)


def down(
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="the state dir given to up")] = None,
) -> None:
    """Stop a stack started with ``fleetop up --detach``; leaves nothing running."""
    state_dir = (state_dir or default_state_dir()).expanduser().resolve()
    try:
        stopped = stop_detached(state_dir)
    except FleetopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print("fleetop: stopped" if stopped else f"fleetop: nothing is running from {state_dir}")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
