"""Workload 7: what a sidekick and a CLI call cost, as a machine and a person pay for them.

* **Sidekicks.** 30 ``fleetop register`` processes on one machine (the same command line the operator's
  units run, through the ``fleetop`` entry point), each checking an HTTP instance. Once every key is
  registered: each process's memory as the machine pays it (PSS: pages shared between the 30, like
  libpython's, counted once in all) and as ``ps`` shows it (RSS, shared pages counted in each), and the
  CPU each spent from exec to registered. For comparison, a few sidekicks of the asyncio + gRPC
  implementation (``python -m fleetop.discovery.cli``). Then SIGTERM to all: every key must be gone.
* **The CLI.** ``fleetop --version``, ``get services``, ``status`` and ``describe service`` against a
  local etcd holding a few specs: wall time and CPU (user + system, from the child's rusage) per call.

fleetop's bytecode is compiled before anything is measured, as installing the package does: without
it (a checkout run with ``PYTHONDONTWRITEBYTECODE``) every process compiles the modules it imports, a
CLI call about 0.05 s of CPU more, a sidekick's start too, depending on whether some earlier run
happened to leave ``__pycache__`` behind.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fleetop
from bench.harness import Options, fleetop_argv
from bench.report import Target, WorkloadResult
from fleetop.config import settings_from
from fleetop.etcd.gateway import Gateway
from fleetop.local.etcdserver import EtcdServer, free_port

SIDEKICKS = 30
LEGACY_SIDEKICKS = 3
MEMORY_TARGET = Target.of(("median", "<=", 10.0))
START_CPU_TARGET = Target.of(("median", "<=", 0.1))
WALL_TARGET = Target.of(("median", "<=", 0.25))
CPU_TARGET = Target.of(("median", "<=", 0.2))
VERBS: dict[str, list[str]] = {
    "--version": ["--version"],
    "get services": ["get", "services"],
    "status": ["status"],
    "describe service": ["describe", "service", "web-1"],
}
SPEC = b'{"replicas": 2, "unit": {"execStart": "/bin/true"}}'


def _fleetop() -> list[str]:
    """What a unit's ``ExecStart`` runs: the ``fleetop`` entry point next to this interpreter."""
    script = Path(sys.executable).parent / "fleetop"
    return [str(script)] if script.exists() else fleetop_argv()


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB from ``/proc/PID/smaps_rollup``."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return fields["Pss"], fields["Rss"]


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def _wait_registered(gateway: Gateway, prefix: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(gateway.range(prefix, prefix=True)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(gateway.range(prefix, prefix=True))} of {count} registered")
        time.sleep(0.2)


def _sidekicks(
    argv0: list[str], endpoint: str, service: str, port: int, count: int, log: Path
) -> list[subprocess.Popen[bytes]]:
    procs = []
    with open(log, "ab") as out:
        for instance in range(1, count + 1):
            args = ["--service", service, "--instance", str(instance), "--address", f"127.0.0.1:{port}",
                    "--http", "/", "--interval", "10s", "--ttl", "30s", "--endpoints", endpoint]  # fmt: skip
            procs.append(subprocess.Popen([*argv0, *args], stdout=out, stderr=subprocess.STDOUT))
    return procs


def _measure(procs: list[subprocess.Popen[bytes]]) -> tuple[list[float], list[float], list[float]]:
    pss, rss, cpu = [], [], []
    for proc in procs:
        p, r = _memory_kb(proc.pid)
        pss.append(p / 1024)
        rss.append(r / 1024)
        cpu.append(_cpu_seconds(proc.pid))
    return pss, rss, cpu


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(30))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait(10))
    return codes


def _sidekick_rows(result: WorkloadResult, base: Path, endpoint: str, backend_port: int) -> None:
    with Gateway(settings_from({"endpoints": endpoint}, {})) as gateway:
        procs = _sidekicks([*_fleetop(), "register"], endpoint, "lean", backend_port, SIDEKICKS,
                           base / "sidekicks.log")  # fmt: skip
        try:
            _wait_registered(gateway, "/services/lean/", SIDEKICKS, 120)
            time.sleep(2)
            pss, rss, cpu = _measure(procs)
        finally:
            codes = _stop(procs)
        left = len(gateway.range("/services/lean/", prefix=True))
        shared = "shared pages (libpython, libc) counted once across all"
        result.add(
            f"sidekick memory per instance, {SIDEKICKS} on one machine (PSS)",
            "MB",
            pss,
            MEMORY_TARGET,
            shared,
        )
        result.add("sidekick RSS per instance (shared pages counted in each)", "MB", rss)
        result.add("sidekick CPU from exec to registered", "s", cpu, START_CPU_TARGET)
        result.value("keys left after SIGTERM to all; exit codes != 0", "", left + sum(1 for c in codes if c))
        grpc_cli = [sys.executable, "-m", "fleetop.discovery.cli"]
        legacy = _sidekicks(grpc_cli, endpoint, "grpc", backend_port, LEGACY_SIDEKICKS, base / "legacy.log")
        try:
            _wait_registered(gateway, "/services/grpc/", LEGACY_SIDEKICKS, 120)
            time.sleep(2)
            lpss, lrss, lcpu = _measure(legacy)
        finally:
            _stop(legacy)
        result.notes.append(
            f"asyncio + gRPC sidekick ({LEGACY_SIDEKICKS} instances): PSS {_median(lpss):.1f} MB,"
            f" RSS {_median(lrss):.1f} MB, CPU to registered {_median(lcpu):.2f} s"
        )


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) of one run of ``argv``."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = 0
    return wall, usage.ru_utime + usage.ru_stime


def operator_status(name: str, raw: bytes, revision: int, now: float) -> bytes:
    """The status the operator writes when it first judges spec ``raw`` at ``revision`` and fleet runs
    none of its units yet: its planner's status, stamped and encoded by its executor's functions."""
    from fleetop.controller.runtime.executor import status_bytes
    from fleetop.controller.services.memory import PlanMemory
    from fleetop.controller.services.planner import plan
    from fleetop.controller.world import FleetIndex
    from fleetop.models import parse_service
    from fleetop.timefmt import rfc3339

    judged = plan(name, parse_service(raw, name=name), revision, FleetIndex(), {}, now, PlanMemory())
    assert judged.status is not None
    return status_bytes(judged.status.model_copy(update={"observed_generation_time": rfc3339(now)}))


def _cli_samples(result: WorkloadResult, label: str, argv: list[str], env: dict[str, str], reps: int) -> None:
    _timed(argv, env)  # warm the page cache
    samples = [_timed(argv, env) for _ in range(reps)]
    result.add(f"{label}: wall", "s", [w for w, _ in samples], WALL_TARGET)
    result.add(f"{label}: CPU", "s", [c for _, c in samples], CPU_TARGET)


def _cli_rows(result: WorkloadResult, opts: Options, base: Path, endpoint: str) -> None:
    """The verbs against three specs: first before any operator judged them (the verbs validate them
    with the models), then with the statuses the operator writes for them (the common case)."""
    env = dict(os.environ, ETCDCTL_ENDPOINTS=endpoint, FLEETCTL_ENDPOINT=f"unix://{base / 'no-fleet.sock'}")
    reps = opts.count(7, 3)
    with Gateway(settings_from({"endpoints": endpoint}, {})) as gateway:
        for n in (1, 2, 3):
            gateway.put(f"/desired/services/web-{n}", SPEC)
        unjudged = "CLI `fleetop get services`, specs no operator judged"
        _cli_samples(result, unjudged, [*_fleetop(), *VERBS["get services"]], env, reps)
        for n in (1, 2, 3):
            kv = gateway.get(f"/desired/services/web-{n}")
            assert kv is not None
            status = operator_status(f"web-{n}", SPEC, kv.mod_revision, time.time())
            gateway.put(f"/status/services/web-{n}", status)
    for verb, args in VERBS.items():
        _cli_samples(result, f"CLI `fleetop {verb}`", [*_fleetop(), *args], env, reps)


def _measure_all(opts: Options) -> WorkloadResult:
    # fleetop's bytecode, as an installed package has it, before the first process is timed (the
    # sidekicks come first: on a fresh checkout they would have measured compiling it)
    compileall.compile_dir(Path(fleetop.__file__).parent, quiet=1)
    result = WorkloadResult("lean")
    base = opts.base / "lean"
    base.mkdir(parents=True, exist_ok=True)
    etcd = EtcdServer(base / "etcd", log_file=base / "etcd.log")
    web_port = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=base,
    )
    etcd.start()
    try:
        _sidekick_rows(result, base, etcd.endpoint, web_port)
        _cli_rows(result, opts, base, etcd.endpoint)
    finally:
        backend.kill()
        backend.wait(10)
        etcd.stop()
    result.notes.append(
        "`status` is measured with fleet unreachable (a unix socket that does not exist): it answers from"
        " etcd and says fleet is unreachable"
    )
    return result


async def run(opts: Options) -> WorkloadResult:
    return await asyncio.to_thread(_measure_all, opts)
