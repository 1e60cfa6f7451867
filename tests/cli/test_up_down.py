"""``fleetop up --detach`` / ``status -o json`` / ``down``, driven as a user would, as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fleetop.etcdserver import find_etcd_binary, free_port


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
