"""``fleetop up --detach`` / ``status -o json`` / ``down``, driven as a user would, as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backends import Load, answered_by
from fleetop.local.etcdserver import find_etcd_binary, free_port, port_is_free
from fleetop.local.up import Child, Stack, UpConfig, describe_exit
from waiting import eventually


def fleetop(
    *args: str, env: dict[str, str] | None = None, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - callers look at the return code
        [sys.executable, "-m", "fleetop.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def wait_for(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def test_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    marker = f"/bin/sleep {100000 + port}"  # only this test's unit processes match it
    up = fleetop("up", "--detach", "--state-dir", str(state), "--machines", "2", "--etcd-port", str(port))
    assert up.returncode == 0, up.stdout + up.stderr
    record = json.loads((state / "up.json").read_text())
    pids = [*list(record["processes"].values()), record["pid"]]
    env = {"ETCDCTL_ENDPOINTS": record["etcdEndpoint"], "FLEETCTL_ENDPOINT": record["fleetEndpoint"]}
    assert f"export ETCDCTL_ENDPOINTS={record['etcdEndpoint']}" in up.stdout
    try:
        again = fleetop("up", "--detach", "--state-dir", str(state))
        assert again.returncode == 1 and "already running" in again.stderr

        def leader_elected() -> bool:
            out = fleetop("status", "-o", "json", env=env)
            data = json.loads(out.stdout)
            return out.returncode == 0 and data["leader"] is not None and len(data["machines"]) == 2

        wait_for(leader_elected)
        subprocess.run(
            [
                find_etcd_binary("etcdctl"),
                "--endpoints",
                record["etcdEndpoint"],
                "put",
                "/desired/services/web",
                json.dumps({"replicas": 2, "unit": {"execStart": marker}}),
            ],
            check=True,
            capture_output=True,
        )

        def ready() -> bool:
            data = json.loads(fleetop("status", "-o", "json", env=env).stdout)
            status = data["services"][0]["status"] if data["services"] else None
            return bool(status) and status["replicas"]["ready"] == 2

        wait_for(ready)
        data = json.loads(fleetop("status", "-o", "json", env=env).stdout)
        units = [u["name"] for m in data["machines"] for u in m["units"]]
        assert sorted(units) == ["web@1.service", "web@2.service"]
        pgrep = ["pgrep", "-f", f"^{marker}$"]
        found = subprocess.run(pgrep, capture_output=True, text=True, check=False).stdout.split()
        unit_pids = [int(p) for p in found]
        assert len(unit_pids) == 2

        good = state.parent / "api.yaml"
        good.write_text(f"kind: Service\nname: api\nspec: {{replicas: 1, unit: {{execStart: '{marker}'}}}}\n")
        applied = fleetop("apply", "-f", str(good), "--wait", "--timeout", "90", env=env)
        assert applied.returncode == 0, applied.stderr
        assert "service/api created" in applied.stdout and "1/1 ready" in applied.stderr
        stuck = state.parent / "stuck.yaml"
        stuck.write_text(
            "kind: Service\nname: stuck\nspec: {replicas: 1, unit: {execStart: /bin/true},"
            " placement: {machineMetadata: {role: [gpu]}}, rollout: {progressDeadlineSeconds: 2}}\n"
        )
        stalled = fleetop("apply", "-f", str(stuck), "--wait", "--timeout", "90", env=env)
        assert stalled.returncode == 1 and "ProgressDeadlineExceeded" in stalled.stderr, stalled.stderr
        found = subprocess.run(pgrep, capture_output=True, text=True, check=False).stdout.split()
        unit_pids = [int(p) for p in found]
    finally:
        down = fleetop("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    for pid in pids + unit_pids:
        assert not alive(pid), f"pid {pid} still running after down"
    assert not (state / "up.json").exists()
    again = fleetop("down", "--state-dir", str(state))
    assert again.returncode == 0 and "nothing is running" in again.stdout


# ---- supervision: the stack survives its parts --------------------------------------------------------


def test_an_exit_is_described_by_its_status_or_signal() -> None:
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "status 3"


def test_an_operator_started_again_gets_a_free_metrics_port(tmp_path: Path) -> None:
    """While the operator was away, something else took its metrics port: it would not start there."""
    said: list[str] = []
    stack = Stack(UpConfig(state_dir=tmp_path, metrics_port=free_port()), said.append)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        stack.metrics_address = taken
        operator = Child("operator", ["fleetop", "run", "--metrics-address", taken], tmp_path / "op.log")
        stack._keep_metrics_port(operator)
    assert stack.metrics_address != taken and operator.argv[-1] == stack.metrics_address
    assert said == [f"{taken} is taken; the operator serves its metrics on {stack.metrics_address}"]
    stack._keep_metrics_port(operator)  # a free port is kept
    assert operator.argv[-1] == stack.metrics_address and len(said) == 1


def free_base_port(hosts: list[str], count: int) -> int:
    """A base port with ``count`` consecutive ports free on every host (instances bind base + slot)."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if all(port_is_free(base + i, host) for i in range(count) for host in hosts):
            return base
    raise AssertionError("no free port range")


def unit_processes(state: Path) -> set[int]:
    """Every live process in the process groups the node recorded for its units."""
    groups = set()
    for record in (state / "node" / "supervisor" / "run").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            groups.add(int(record.read_text().split()[0]))
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
                if int(fields[2]) in groups and fields[0] != b"Z":
                    found.add(int(entry.name))
    return found


# The stack's operator takes these from its environment: a killed operator's lease expires in 4 s, not
# the default 15 s, and the one ``up`` starts again leads that much sooner.
SHORT_LEASE = {"FLEETOP_LEASE_DURATION": "4", "FLEETOP_RENEW_DEADLINE": "2", "FLEETOP_RETRY_PERIOD": "0.5"}


async def up_detached(state: Path, machines: int) -> dict[str, Any]:
    args = ["--state-dir", str(state), "--machines", str(machines), "--etcd-port", str(free_port())]
    up = await asyncio.to_thread(fleetop, "up", "--detach", *args, env=SHORT_LEASE)
    assert up.returncode == 0, up.stdout + up.stderr
    return stack_record(state)


async def answering(port: int, instances: int) -> bool:
    """Whether requests through the proxy on ``port`` are answered by ``instances`` different ones."""
    seen = await answered_by(port, 20 * instances, lambda seen: len(seen) == instances)
    return seen is not None and len(seen) == instances


async def serve_behind_nginx(
    documents: Path, env: dict[str, str], name: str, spec: dict[str, Any], proxy_port: int
) -> None:
    """``fleetop apply`` service ``name`` (two instances) and an nginx ``edge`` on ``proxy_port`` naming
    each handler; wait until both instances answer through it."""
    edge = {"kind": "nginx", "listen": f"127.0.0.1:{proxy_port}", "routes": [{"service": name}]}
    edge["headers"] = {"handler": True}
    documents.write_text(
        f"kind: Service\nname: {name}\nspec: {json.dumps(spec)}\n---\n"
        f"kind: Proxy\nname: edge\nspec: {json.dumps(edge)}\n"
    )
    applied = await asyncio.to_thread(fleetop, "apply", "-f", str(documents), env=env)
    assert applied.returncode == 0, applied.stderr
    await eventually(lambda: answering(proxy_port, 2), 180, "nginx answering from both instances")


def stack_record(state: Path) -> dict[str, Any]:
    return dict(json.loads((state / "up.json").read_text()))


async def status_json(env: dict[str, str]) -> dict[str, Any] | None:
    out = await asyncio.to_thread(fleetop, "status", "-o", "json", env=env)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else None


async def service_ready(env: dict[str, str], name: str, replicas: int) -> bool:
    data = await status_json(env)
    services = {s["name"]: s for s in data["services"]} if data else {}
    status = services.get(name, {}).get("status")
    return bool(status) and status["replicas"]["ready"] == replicas


async def restarted(state: Path, name: str, old_pid: int) -> int | None:
    """The new PID of part ``name`` once ``fleetop up`` has started it again."""
    pid = stack_record(state)["processes"][name]
    return pid if pid != old_pid and alive(pid) else None


async def down_leaves_nothing(state: Path, pids: set[int]) -> None:
    down = await asyncio.to_thread(fleetop, "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    left = [pid for pid in pids if alive(pid)]
    assert not left, f"still running after down: {left}"
    assert not (state / "up.json").exists()


async def test_the_stack_survives_its_operator(tmp_path: Path) -> None:
    """kill -9 of the operator under traffic through a managed nginx: no request fails, ``up`` starts
    the operator again, it becomes the leader and applies the next change; ``down`` stops everything."""
    state = tmp_path / "state"
    record = await up_detached(state, machines=2)
    env = {"ETCDCTL_ENDPOINTS": record["etcdEndpoint"], "FLEETCTL_ENDPOINT": record["fleetEndpoint"]}
    pids = {*record["processes"].values(), record["pid"]}
    load: Load | None = None
    try:
        base, proxy_port = free_base_port(["127.0.1.1", "127.0.1.2"], 4), free_port()
        hello = {
            "replicas": 2,
            "ports": {"base": base},
            "unit": {"execStart": "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i"},
            "discovery": {"sidekick": True, "check": {"http": "/", "interval": "1s"}, "ttl": "10s"},
        }
        await serve_behind_nginx(tmp_path / "stack.yaml", env, "hello", hello, proxy_port)

        load = Load(proxy_port).start()
        operator = record["processes"]["operator"]
        os.kill(operator, signal.SIGKILL)
        new_operator = await eventually(lambda: restarted(state, "operator", operator), 60, "a new operator")
        pids.add(new_operator)

        async def new_leader() -> bool:
            data = await status_json(env)
            leader = data.get("leader") if data else None
            return bool(leader) and f"-{new_operator}-" in str(leader.get("holderIdentity"))

        await eventually(new_leader, 90, "the new operator leading")
        scaled = await asyncio.to_thread(fleetop, "scale", "service", "hello", "--replicas", "3", env=env)
        assert scaled.returncode == 0, scaled.stderr
        await eventually(lambda: answering(proxy_port, 3), 180, "nginx answering from three instances")
        load.stop()
        print(f"\nrequests through nginx while the operator was killed and came back: {load.sent}, "
              f"failed {len(load.failures)}")  # fmt: skip
        assert load.sent > 100 and load.failures == [], (load.sent, load.failures[:10])
        log = (state / "logs" / "up.log").read_text()
        assert f"operator (pid {operator}) exited (killed by SIGKILL)" in log
        assert f"operator started again (pid {new_operator}, restart 1)" in log
        assert stack_record(state)["restarts"]["operator"] == 1
        pids |= unit_processes(state)
        assert len(pids) > 8  # the stack, and units: instances, sidekicks, nginx and its agent
    finally:
        if load is not None:
            load.stop()
        pids |= unit_processes(state)
        await down_leaves_nothing(state, pids)


async def test_the_stack_starts_etcd_and_the_node_again(tmp_path: Path) -> None:
    """kill -9 of etcd, then of the node: ``up`` starts each again, the operator reconnects, the new
    node brings the unit back (it kills what the old one left). kill -9 of ``up`` itself leaves the
    stack running, and ``down`` still stops everything."""
    state = tmp_path / "state"
    marker = f"/bin/sleep {200000 + random.randrange(10**5)}"
    record = await up_detached(state, machines=1)
    env = {"ETCDCTL_ENDPOINTS": record["etcdEndpoint"], "FLEETCTL_ENDPOINT": record["fleetEndpoint"]}
    pids = {*record["processes"].values(), record["pid"]}
    try:
        spec = tmp_path / "web.yaml"
        spec.write_text(f"kind: Service\nname: web\nspec: {{replicas: 1, unit: {{execStart: '{marker}'}}}}\n")
        applied = await asyncio.to_thread(fleetop, "apply", "-f", str(spec), env=env)
        assert applied.returncode == 0, applied.stderr
        await eventually(lambda: service_ready(env, "web", 1), 120, "web ready")
        first_unit = unit_processes(state)
        assert len(first_unit) == 1

        etcd = record["processes"]["etcd"]
        os.kill(etcd, signal.SIGKILL)
        pids.add(await eventually(lambda: restarted(state, "etcd", etcd), 60, "etcd started again"))
        await eventually(lambda: service_ready(env, "web", 1), 120, "status readable again")

        node = record["processes"]["node"]
        os.kill(node, signal.SIGKILL)
        pids.add(await eventually(lambda: restarted(state, "node", node), 60, "the node started again"))

        async def unit_back() -> set[int] | None:
            now = unit_processes(state)
            return now if len(now) == 1 and not now & first_unit else None

        pids |= await eventually(unit_back, 120, "the unit started by the new node")
        assert not any(alive(pid) for pid in first_unit)  # the old node's unit was not left behind
        await eventually(lambda: service_ready(env, "web", 1), 120, "web ready again")
        restarts = stack_record(state)["restarts"]
        assert (restarts["etcd"], restarts["node"], restarts["operator"]) == (1, 1, 0)

        os.kill(record["pid"], signal.SIGKILL)  # ``up`` itself: its parts run on, and ``down`` stops them
        await eventually(lambda: not alive(record["pid"]), 30, "fleetop up gone")
        assert all(alive(pid) for pid in stack_record(state)["processes"].values())
        again = await asyncio.to_thread(fleetop, "up", "--detach", "--state-dir", str(state))
        assert again.returncode == 1 and "still run from" in again.stderr, again.stderr  # no second etcd
    finally:
        pids |= unit_processes(state)
        await down_leaves_nothing(state, pids)


CHATTY = """
import http.server, sys

class Chatty(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        sys.stderr.write(("%s %s " % (self.address_string(), format % args)).ljust(4095, ".") + "\\n")

http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Chatty).serve_forever()
"""


async def test_a_stopped_node_costs_no_request(tmp_path: Path) -> None:
    """The node SIGSTOPped for 30 s under traffic through nginx, with instances that log 4 KiB per
    request (a pipe's worth every 16 requests): no request fails, and the journal has the output."""
    state = tmp_path / "state"
    record = await up_detached(state, machines=2)
    env = {"ETCDCTL_ENDPOINTS": record["etcdEndpoint"], "FLEETCTL_ENDPOINT": record["fleetEndpoint"]}
    pids = {*record["processes"].values(), record["pid"]}
    loads: list[Load] = []
    node = record["processes"]["node"]
    try:
        script = tmp_path / "chatty.py"
        script.write_text(CHATTY)
        base, proxy_port = free_base_port(["127.0.1.1", "127.0.1.2"], 3), free_port()
        chatty = {
            "replicas": 2,
            "ports": {"base": base},
            "unit": {"execStart": f"{sys.executable} {script} ${{COREOS_PRIVATE_IPV4}} %i"},
            "discovery": {
                "sidekick": True,
                "check": {"http": "/", "interval": "1s", "timeout": "2s"},
                "ttl": "5s",
            },
        }
        await serve_behind_nginx(tmp_path / "stack.yaml", env, "chatty", chatty, proxy_port)

        loads = [Load(proxy_port).start(), Load(proxy_port).start()]
        os.kill(node, signal.SIGSTOP)
        try:
            await asyncio.sleep(30)  # the scenario: a node frozen for half a minute under traffic
        finally:
            os.kill(node, signal.SIGCONT)

        async def journal_has_requests() -> bool:
            unit = f"chatty@{base}.service"
            out = await asyncio.to_thread(
                fleetop, "node", "--state-dir", str(state / "node"), "journal", unit
            )
            return out.returncode == 0 and '"GET / HTTP/1.0" 200' in out.stdout  # proxied, not a check

        await eventually(journal_has_requests, 60, "the instance's request log in its journal")
        for load in loads:
            load.stop()
        sent, failures = sum(load.sent for load in loads), [f for load in loads for f in load.failures]
        print(f"\nrequests through nginx with the node stopped for 30 s: {sent}, failed {len(failures)}")
        assert sent > 200 and failures == [], (sent, failures[:10])
    finally:
        for load in loads:
            load.stop()
        pids |= unit_processes(state)
        await down_leaves_nothing(state, pids)
