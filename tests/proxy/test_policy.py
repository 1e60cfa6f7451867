"""The agent runs only what its own machine allows: commands and config paths of a published config
are checked against the local policy before anything runs or is written (real etcd, real agent, real
processes; the commands would leave marker files behind if they ran)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends import agent_running
from fleetop.errors import ConfigError
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import free_port
from fleetop.models import AgentStatus, PublishedConfig
from fleetop.proxy.agent import AgentSettings, ProxyAgent
from fleetop.proxy.bootstrap import choose_config
from fleetop.proxy.policy import AgentPolicy, load_policy, parse_policy
from fleetop.proxy.render import RenderPaths
from waiting import eventually

PROXY = "edge"
MACHINE = "m1"
BODY = "# a config the marker commands accept\n"


def _marker_command(script_dir: Path, name: str) -> list[str]:
    """A command that records it ran (``<name>.ran`` with the config path) and succeeds."""
    script = script_dir / f"{name}.py"
    script.write_text(
        "import pathlib, sys\n"
        f"pathlib.Path({str(script_dir / (name + '.ran'))!r}).write_text(' '.join(sys.argv[1:]))\n"
    )
    return [sys.executable, str(script), "{config}"]


def _published(generation: int, **fields: object) -> PublishedConfig:
    body = f"{BODY}# generation {generation}\n"
    digest = hashlib.sha256(f"{body}{fields}".encode()).hexdigest()
    return PublishedConfig.model_validate(
        {"hash": digest, "generation": generation, "kind": "nginx", "body": body, **fields}
    )


@contextlib.asynccontextmanager
async def agent_with(etcd: Etcd, runtime: Path, policy: AgentPolicy) -> AsyncIterator[ProxyAgent]:
    settings = AgentSettings(proxy=PROXY, machine=MACHINE, runtime_dir=runtime, policy=policy, retry_min=0.05)
    async with agent_running(etcd, settings) as agent:
        yield agent


async def _status(etcd: Etcd, cfg: PublishedConfig) -> AgentStatus | None:
    kv = await etcd.get(Keys().agent_status(PROXY, MACHINE))
    if kv is None:
        return None
    status = AgentStatus.model_validate_json(kv.value)
    return status if cfg.hash in (status.applied_hash, status.failed_hash) else None


async def _publish_and_wait(etcd: Etcd, cfg: PublishedConfig) -> AgentStatus:
    await etcd.put(Keys().proxy_config(PROXY), cfg.model_dump_json(by_alias=True))
    status: AgentStatus = await eventually(
        lambda: _status(etcd, cfg), 30, f"the agent's report on {cfg.hash}"
    )
    return status


async def test_a_command_outside_the_policy_never_runs(etcd: Etcd, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    check = _marker_command(tmp_path, "check")
    reload = _marker_command(tmp_path, "reload")
    async with agent_with(etcd, runtime, AgentPolicy()):
        refused = _published(1, checkCmd=check, reloadCmd=reload)
        status = await _publish_and_wait(etcd, refused)
    assert status.failed_hash == refused.hash and status.applied_hash == ""
    assert status.error is not None
    assert "refused by this machine's agent policy" in status.error
    assert "checkCmd" in status.error and "reloadCmd" in status.error
    assert not (tmp_path / "check.ran").exists() and not (tmp_path / "reload.ran").exists()
    assert not (runtime / "nginx.conf").exists()


async def test_allowed_commands_run_and_the_previous_config_stays_when_one_is_refused(
    etcd: Etcd, tmp_path: Path
) -> None:
    runtime = tmp_path / "run"
    check = _marker_command(tmp_path, "check")
    reload = _marker_command(tmp_path, "reload")
    policy = parse_policy({"commands": [{"argv": check}, {"prefix": reload[:2]}]}, "test policy")
    async with agent_with(etcd, runtime, policy):
        good = _published(1, checkCmd=check, reloadCmd=reload)
        applied = await _publish_and_wait(etcd, good)
        assert applied.applied_hash == good.hash and applied.error is None
        assert (tmp_path / "check.ran").read_text().startswith(str(runtime))  # the staged file
        assert (tmp_path / "reload.ran").exists()
        installed = runtime / "nginx.conf"
        assert installed.read_text() == good.body
        assert stat.S_IMODE(installed.stat().st_mode) == 0o640

        (tmp_path / "check.ran").unlink()
        other = _marker_command(tmp_path, "other")
        bad = _published(2, checkCmd=[*check, "--extra"], reloadCmd=other)
        status = await _publish_and_wait(etcd, bad)
    assert status.failed_hash == bad.hash and status.applied_hash == good.hash
    assert status.error is not None and "not an allowed command" in status.error
    assert not (tmp_path / "check.ran").exists() and not (tmp_path / "other.ran").exists()
    assert installed.read_text() == good.body


async def test_config_paths_outside_the_allowed_dirs_are_refused(etcd: Etcd, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    allowed = tmp_path / "etc-nginx"
    elsewhere = tmp_path / "cron.d"
    check = _marker_command(tmp_path, "check")
    policy = parse_policy({"commands": [{"argv": check}], "configDirs": [str(allowed)]}, "test policy")
    async with agent_with(etcd, runtime, policy):
        outside = _published(1, checkCmd=check, reloadCmd=[], configPath=str(elsewhere / "job"))
        status = await _publish_and_wait(etcd, outside)
        assert status.error is not None and "outside the allowed config directories" in status.error
        assert not elsewhere.exists() and not (tmp_path / "check.ran").exists()

        sneaky = str(runtime / ".." / "cron.d" / "job")
        dotdot = _published(2, checkCmd=check, reloadCmd=[], configPath=sneaky)
        status = await _publish_and_wait(etcd, dotdot)
        assert status.error is not None and "outside the allowed config directories" in status.error
        assert not elsewhere.exists()

        inside = _published(3, checkCmd=check, reloadCmd=[], configPath=str(allowed / "nginx.conf"))
        status = await _publish_and_wait(etcd, inside)
    assert status.applied_hash == inside.hash and status.error is None
    assert (allowed / "nginx.conf").read_text() == inside.body
    assert stat.S_IMODE(allowed.stat().st_mode) == 0o750


def test_policy_file_loading(tmp_path: Path) -> None:
    absent = load_policy(None, {})
    assert absent.commands == () and "absent" in absent.source
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml", {})
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "commands:\n  - argv: /usr/sbin/nginx -t -c {config}\n  - prefix: [/usr/local/bin/reload-edge]\n"
        "configDirs: [/etc/nginx]\n"
    )
    policy = load_policy(None, {"FLEETOP_AGENT_POLICY": str(policy_file)})
    assert policy.command_problem("/usr/sbin/nginx -t -c {config}", "checkCmd") is None
    assert policy.command_problem(["/usr/local/bin/reload-edge", "--now"], "reloadCmd") is None
    assert policy.command_problem("/usr/sbin/nginx -t -c {config} -g x", "checkCmd") is not None
    shell = "/usr/local/bin/reload-edge; touch /tmp/x"
    assert policy.command_problem(shell, "reloadCmd") is not None  # runs as /bin/sh -c ...
    assert policy.command_problem(None, "checkCmd") is None  # the built-in command
    assert policy.path_problem(Path("/etc/nginx/conf.d/x.conf"), "configPath") is None
    assert policy.path_problem(Path("/etc/nginx/../cron.d/x"), "configPath") is not None
    for bad in (
        "commands: [{run: x}]\n",
        "configDirs: [relative]\n",
        "other: 1\n",
        "commands: [{argv: []}]\n",
    ):
        policy_file.write_text(bad)
        with pytest.raises(ConfigError, match=str(policy_file)):
            load_policy(policy_file, {})


async def test_proxy_instance_does_not_check_a_refused_published_config(tmp_path: Path) -> None:
    check = _marker_command(tmp_path, "check")
    cfg = _published(1, checkCmd=check)
    paths = RenderPaths(str(tmp_path / "run"))
    body, source = await choose_config(
        PROXY,
        "nginx",
        "127.0.0.1:1",
        paths,
        tmp_path / "run" / "nginx.conf",
        cfg.model_dump_json(by_alias=True).encode(),
        AgentPolicy(),
    )
    assert source == "placeholder without routes" and body != cfg.body
    assert not (tmp_path / "check.ran").exists()


def test_proxy_instance_never_writes_a_config_outside_the_allowed_dirs(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    runtime, outside = tmp_path / "run", tmp_path / "cron.d" / "nginx.conf"
    argv = [sys.executable, "-m", "fleetop.cli.main", "proxy-instance", "--proxy", PROXY, "--kind", "nginx"]
    argv += ["--listen", f"127.0.0.1:{port}", "--runtime-dir", str(runtime), "--config", str(outside)]
    argv += ["--endpoints", "127.0.0.1:1", "--etcd-timeout", "0.5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "FLEETOP_"))}
    with open(tmp_path / "instance.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "instance.log"
            ).read_text()
            time.sleep(0.1)
        assert not outside.parent.exists()
        assert (runtime / "nginx.conf").exists()
        assert "outside the allowed config directories" in (tmp_path / "instance.log").read_text()
    finally:
        proc.terminate()
        proc.wait(20)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def test_the_agent_refuses_to_start_with_a_missing_or_bad_policy(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("commands: [{run: x}]\n")
    for policy in (tmp_path / "missing.yaml", bad):
        argv = [sys.executable, "-m", "fleetop.proxy.cli", "--proxy", PROXY, "--policy", str(policy)]
        done = subprocess.run(
            [*argv, "--endpoints", "127.0.0.1:1"], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2 and str(policy) in done.stderr


def test_paths_sharing_a_directory_are_resolved_like_realpath(tmp_path: Path) -> None:
    """The config, pid file and admin socket usually share the runtime directory, which one check
    resolves once; a last component that is a symlink still counts where it points."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (runtime / "admin.sock").symlink_to(outside / "admin.sock")
    (tmp_path / "link").symlink_to(runtime)
    body = (
        "global\n"
        f"    pidfile {tmp_path / 'link' / 'haproxy.pid'}\n"
        f"    stats socket {runtime / 'admin.sock'} mode 600 level admin\n"
    )
    cfg = PublishedConfig(hash="h" * 64, generation=1, kind="haproxy", body=body)
    policy = AgentPolicy().with_dirs([runtime])
    refused = policy.refusal(cfg, runtime / "haproxy.cfg")
    assert refused is not None and "the admin socket" in refused, refused
    assert "configPath" not in refused and "pid file" not in refused, refused

    safe = cfg.model_copy(update={"body": body.replace("admin.sock", "own.sock")})
    assert policy.refusal(safe, tmp_path / "link" / "haproxy.cfg") is None
    assert policy.refusal(safe, runtime / ".." / "outside" / "haproxy.cfg") is not None
