"""``fleetop status`` and ``fleetop get units`` as a user runs them, against a real etcd that is then
stopped and a real ``fleetop node``, with fleet endpoint lists whose first entry is dead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetop.local.etcdserver import EtcdServer, find_etcd_binary


def fleetop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "FLEETCTL_", "FLEETOP_"))}
    return subprocess.run(  # noqa: PLW1510 - callers look at the return code
        [sys.executable, "-m", "fleetop.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[str]:
    """``fleetop node --machines 1`` on a unix socket; its endpoint."""
    socket = tmp_path / "fleet.sock"
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115 - the child keeps it
    args = [sys.executable, "-m", "fleetop.cli.main", "node", "--machines", "1"]
    proc = subprocess.Popen(
        [*args, "--state-dir", str(tmp_path / "node"), "--listen", f"unix://{socket}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "node.log").read_text()
            time.sleep(0.05)
        yield f"unix://{socket}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_status_says_what_it_cannot_see(tmp_path: Path, node: str) -> None:
    dead = f"unix://{tmp_path / 'dead.sock'}"
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    env = {"ETCDCTL_ENDPOINTS": server.endpoint, "FLEETCTL_ENDPOINT": f"{dead},{node}"}
    try:
        put = subprocess.run(
            [find_etcd_binary("etcdctl"), "--endpoints", server.endpoint, "put", "/desired/services/web"],
            input='{"replicas": 2, "unit": {"execStart": "/bin/sleep 1000"}}',
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert put.returncode == 0, put.stderr
        up = fleetop("status", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"etcd      {server.endpoint}  healthy" in up.stdout
        assert f"fleet     {dead},{node}  healthy (1 machines, through {node})" in up.stdout
        assert "\nweb " in up.stdout
        assert "127.0.1.1" in up.stdout
    finally:
        server.stop()

    env["ETCDCTL_DIAL_TIMEOUT"] = "1s"  # etcd refuses now: each status gives up after 1 s, not the default 5
    down = fleetop("status", env=env)
    assert down.returncode == 1
    assert "leader    unknown (etcd unreachable)" in down.stdout
    assert (
        f"etcd: UNREACHABLE at {server.endpoint} (connection refused) — cannot show leader, services, proxies"
        in down.stdout
    )
    assert "SERVICES\n  (unknown: etcd unreachable)" in down.stdout
    assert "PROXIES\n  (unknown: etcd unreachable)" in down.stdout
    assert "(none)" not in down.stdout and "\nweb " not in down.stdout
    assert "127.0.1.1" in down.stdout  # fleet is still shown: its machine...
    units = fleetop("get", "units", env=env)
    assert units.returncode == 0, units.stderr
    assert units.stdout.startswith("UNIT") or units.stdout == "No units found.\n"

    blind = {**env, "FLEETCTL_ENDPOINT": f"{dead},unix://{tmp_path / 'gone.sock'}"}
    both = fleetop("status", env=blind)
    assert both.returncode == 1
    assert (
        f"          tried {dead}: GET /fleet/v1/machines: [Errno 2] No such file or directory" in both.stdout
    )
    assert f"          tried unix://{tmp_path / 'gone.sock'}: " in both.stdout
    assert "MACHINES\n  (unknown: fleet unreachable)" in both.stdout

    bad = fleetop("status", env={**env, "FLEETCTL_ENDPOINT": f"{node},127.0.0.1:4001"})
    assert bad.returncode == 1
    assert "FLEETCTL_ENDPOINT: '127.0.0.1:4001' is not a fleet endpoint" in bad.stderr
    bad_flag = fleetop("get", "units", "--fleet-endpoint", "ftp://x", env=env)
    assert (
        bad_flag.returncode == 1 and "--fleet-endpoint: 'ftp://x' is not a fleet endpoint" in bad_flag.stderr
    )
