"""HAProxy without reloads: the agent against a REAL etcd, a REAL HAProxy and real HTTP backends.

The agent follows the published config; when only servers change it changes them over HAProxy's
admin socket. These tests publish what the operator publishes (configs from the real renderer),
send requests through HAProxy all along, and read back what HAProxy holds (``show servers state``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from backends import Load, ProxySite, agent_running, fetch, handlers_seen, http_backends
from fleetop.discovery.addresses import Registration
from fleetop.etcd.client import Etcd
from fleetop.keys import Keys
from fleetop.local.etcdserver import free_port
from fleetop.models import AgentStatus, PublishedConfig
from fleetop.proxy.agent import AgentSettings, ProxyAgent
from fleetop.proxy.apply import start_proxy
from fleetop.proxy.haproxy_runtime import RuntimeAPI, RuntimeAPIError, newest_worker
from fleetop.proxy.haproxy_servers import Command, mismatch, parse_config
from fleetop.proxy.policy import AgentPolicy, AllowedCommand
from fleetop.proxy.render import RenderPaths
from waiting import eventually

PROXY = "edge"
MACHINE = "m1"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[list[Registration]]:
    """Three HTTP servers on 127.0.0.6-8 that run for the whole test: leaving the config is not dying."""
    with http_backends(("127.0.0.6", "127.0.0.7", "127.0.0.8"), tmp_path) as regs:
        yield regs


class Site(ProxySite):
    """A running HAProxy (master-worker, started here) with its config path and admin socket."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, "haproxy", PROXY)
        self.generation = 0

    def kill(self) -> None:
        """SIGKILL the HAProxy this test started: its process group (master and workers) by its PID."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.process.wait(10)

    def config(self, backends: list[Registration], *, handler: bool = True) -> PublishedConfig:
        self.generation += 1
        return self.published(backends, self.generation, handler=handler)

    async def differs_from(self, cfg: PublishedConfig) -> str:
        """How the servers HAProxy holds differ from ``cfg``'s (``""``: exactly the same)."""
        try:
            live = await RuntimeAPI(Path(self.paths.stats_socket)).servers()
        except RuntimeAPIError as exc:  # HAProxy starting up: ask again
            return str(exc)
        return mismatch(parse_config(cfg.body).servers(), live)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with Site(tmp_path) as running:
        yield running


async def publish(etcd: Etcd, cfg: PublishedConfig) -> None:
    await etcd.put(Keys().proxy_config(PROXY), cfg.model_dump_json(by_alias=True))


async def status_when(etcd: Etcd, what: str, done: object) -> AgentStatus:
    async def check() -> AgentStatus | None:
        kv = await etcd.get(Keys().agent_status(PROXY, MACHINE))
        status = AgentStatus.model_validate_json(kv.value) if kv is not None else None
        return status if status is not None and callable(done) and done(status) else None

    found: AgentStatus = await eventually(check, 30, what, every=0.02)
    return found


async def applied(etcd: Etcd, cfg: PublishedConfig) -> AgentStatus:
    return await status_when(
        etcd, f"generation {cfg.generation} applied", lambda s: s.applied_hash == cfg.hash and s.error is None
    )


async def holds(site: Site, cfg: PublishedConfig) -> None:
    """Wait until ``show servers state`` is exactly ``cfg``'s servers (removed ones drain first)."""

    async def same() -> bool:
        return await site.differs_from(cfg) == ""

    await eventually(same, 30, f"HAProxy holding the servers of generation {cfg.generation}", every=0.02)


@contextlib.asynccontextmanager
async def running_agent(
    etcd: Etcd, site: Site, api: type[RuntimeAPI] = RuntimeAPI, drain_timeout: float = 60.0
) -> AsyncIterator[ProxyAgent]:
    settings = AgentSettings(
        proxy=PROXY,
        machine=MACHINE,
        runtime_dir=site.target.parent,
        config_path=site.target,
        retry_min=0.05,
        drain_timeout=drain_timeout,
        policy=AgentPolicy(commands=(AllowedCommand(("/bin/sh", "-c"), prefix=True),), source="the test"),
    )
    async with agent_running(etcd, settings, runtime_api=api) as agent:
        yield agent


async def change_servers(etcd: Etcd, site: Site, backends: list[Registration]) -> AgentStatus:
    """Publish ``backends``; the agent applies them at runtime and HAProxy holds exactly them."""
    cfg = site.config(backends)
    await publish(etcd, cfg)
    status = await applied(etcd, cfg)
    assert status.applied_via == "runtime", status
    await holds(site, cfg)
    want = {b.address for b in backends}
    assert await handlers_seen(site.port, want) == want
    return status


async def test_servers_change_at_runtime_under_traffic_and_survive_a_restart(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    a, b, c = pool
    async with running_agent(etcd, site):
        first = site.config([a])
        await publish(etcd, first)
        status = await applied(etcd, first)
        assert status.applied_via == "reload" and status.reloads == 1  # the first one is not known to run
        await holds(site, first)

        with Load(site.port, interval=0.002) as load:
            for backends in ([a, b], [b, c], [a, b, c], [c], [a, c], [a]):
                status = await change_servers(etcd, site, backends)
        print(f"\n{load.sent} requests during 6 server changes, {len(load.failures)} failed")
        assert load.failures == [], load.failures[:10]
        assert load.sent > 100
        assert status.reloads == 1 and status.runtime_applies == 6 and status.runtime_fallbacks == 0

        last = site.config([a, b])  # a change that HAProxy gets at runtime, then loses with the process
        await publish(etcd, last)
        assert (await applied(etcd, last)).applied_via == "runtime"
        await holds(site, last)
        assert site.target.read_text() == last.body  # the file says what the runtime holds

        site.kill()
        site.process = site.start()  # a restart reads the same file: the same servers
        await holds(site, last)
        want = {a.address, b.address}
        assert await handlers_seen(site.port, want) == want

        with Load(site.port, interval=0.002) as load:
            for backends in ([b, c], [c]):
                status = await change_servers(etcd, site, backends)
        assert load.failures == [], load.failures[:10]
        assert status.reloads == 1 and status.runtime_applies == 9 and status.runtime_fallbacks == 0


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers after ``server.delay`` seconds; tells the test when a request arrived."""

    def do_GET(self) -> None:
        self.server.arrived.set()  # type: ignore[attr-defined]
        threading.Event().wait(self.server.delay)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"slow")

    def log_message(self, *_: object) -> None:
        pass


@contextlib.contextmanager
def slow_backend(host: str, delay: float) -> Iterator[tuple[Registration, threading.Event]]:
    server = http.server.ThreadingHTTPServer((host, 0), SlowHandler)
    server.arrived = threading.Event()  # type: ignore[attr-defined]
    server.delay = delay  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Registration("/services/web/slow", host, server.server_address[1]), server.arrived  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_a_removed_server_drains_its_request_in_flight(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    fast = pool[0]
    with slow_backend("127.0.0.9", delay=2.0) as (slow, arrived):
        async with running_agent(etcd, site):
            first = site.config([fast])
            await publish(etcd, first)
            await applied(etcd, first)
            await change_servers(etcd, site, [slow])
            in_flight = asyncio.create_task(asyncio.to_thread(fetch, site.port))
            assert await asyncio.to_thread(arrived.wait, 10)

            gone = site.config([fast])
            await publish(etcd, gone)
            assert (await applied(etcd, gone)).applied_via == "runtime"
            draining = await site.differs_from(gone)
            assert "is in HAProxy but not in the config" in draining  # kept, in maintenance, until done
            assert await in_flight == (200, slow.address)
            await holds(site, gone)  # then deleted
            assert await handlers_seen(site.port, {fast.address}) == {fast.address}


class RefusingAPI(RuntimeAPI):
    """The real admin socket, except that ``add server`` gets the answer HAProxy gives a backend
    that cannot take dynamic servers, while ``refuse`` is set."""

    refuse = True
    ANSWER = "Backend must use a dynamic load balancing to support dynamic servers.\n"

    async def send_line(self, command: str) -> str:
        if self.refuse and command.startswith("add server"):
            return self.ANSWER
        return await super().send_line(command)


async def test_a_refused_runtime_command_falls_back_to_a_checked_reload(
    etcd: Etcd, site: Site, pool: list[Registration], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = pool
    caplog.set_level(logging.ERROR, logger="fleetop.proxy.agent")
    async with running_agent(etcd, site, RefusingAPI):
        first = site.config([a, c])
        await publish(etcd, first)
        await applied(etcd, first)

        grown = site.config([a, b, c])
        await publish(etcd, grown)
        status = await applied(etcd, grown)
        assert status.applied_via == "reload" and status.reloads == 2
        assert status.runtime_fallbacks == 1 and status.runtime_applies == 0
        reason = status.fallback_reason or ""
        assert "add server" in reason and "dynamic load balancing" in reason, reason
        assert any("dynamic load balancing" in r.getMessage() for r in caplog.records)
        await holds(site, grown)  # nothing lost: every published server, from the reloaded file
        want = {a.address, b.address, c.address}
        assert await handlers_seen(site.port, want) == want
        assert site.target.read_text() == grown.body

        RefusingAPI.refuse = False
        try:
            status = await change_servers(etcd, site, [b])
        finally:
            RefusingAPI.refuse = True
        assert status.reloads == 2 and status.runtime_applies == 1 and status.fallback_reason is None


async def test_a_structural_change_reloads(etcd: Etcd, site: Site, pool: list[Registration]) -> None:
    a, b, _ = pool
    async with running_agent(etcd, site):
        for cfg in (site.config([a]), site.config([a, b], handler=False)):
            await publish(etcd, cfg)
            status = await applied(etcd, cfg)
            assert status.applied_via == "reload" and status.fallback_reason is None
            await holds(site, cfg)
        assert status.reloads == 2 and status.runtime_applies == 0

        async def no_header() -> bool:
            return await asyncio.to_thread(fetch, site.port) == (200, "")

        await eventually(no_header, 30, "answers without X-Handler from the reloaded config")


async def test_a_config_failing_its_check_after_runtime_changes_is_undone(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    """The runtime step goes first (traffic follows without waiting for the check); a config whose
    check then fails is never installed, and a reload from the installed file undoes its servers."""
    a, b, c = pool
    async with running_agent(etcd, site):
        first = site.config([a])
        await publish(etcd, first)
        await applied(etcd, first)

        refuse = ["/bin/sh", "-c", "echo 'refused by the test' >&2; exit 1"]
        refused = site.config([a, b]).model_copy(update={"check_cmd": refuse, "hash": "f" * 64})
        await publish(etcd, refused)
        status = await status_when(etcd, "the check failure", lambda s: s.failed_hash == refused.hash)
        assert status.error is not None and "refused by the test" in status.error
        assert "undoing its runtime changes" in status.error
        assert status.applied_hash == first.hash and status.reloads == 2  # the first apply, the undo
        assert site.target.read_text() == first.body
        await holds(site, first)
        assert await handlers_seen(site.port, {a.address}) == {a.address}

        status = await change_servers(etcd, site, [a, c])  # the proxy runs the installed file again
        assert status.reloads == 2 and status.error is None


HAPROXY_RULES = """global
    master-worker
    pidfile {run}/proxy.pid
    stats socket {run}/admin.sock mode 600 level admin expose-fd listeners

defaults
    mode http
    timeout connect 5s
    timeout client 50s
    timeout server 50s

frontend http_proxy
    bind 127.0.0.1:{port}
    default_backend roundrobin

backend roundrobin
    default-server weight 5
    server s1 127.0.0.6:80

backend hashed
    balance source
    server s1 127.0.0.6:80
"""


async def test_haproxy_rules_the_runtime_diff_relies_on(tmp_path: Path) -> None:
    """What the real HAProxy does, as :mod:`fleetop.proxy.haproxy_servers` assumes: ``add server``
    needs a dynamic balance algorithm, a runtime server does not get ``default-server`` settings and
    starts in maintenance, and ``del server`` wants it in maintenance first."""
    port = free_port("127.0.0.1")
    paths = RenderPaths(str(tmp_path / "run"))
    config = tmp_path / "rules.cfg"
    config.write_text(HAPROXY_RULES.format(run=paths.runtime_dir, port=port))
    proxy = start_proxy("haproxy", config, paths, listen=("127.0.0.1", port))
    api = RuntimeAPI(Path(paths.stats_socket))

    async def answers() -> bool:  # the unix socket comes up just after the TCP listener
        try:
            return "Pid:" in await api.send("show info")
        except RuntimeAPIError:
            return False

    try:
        await eventually(answers, 30, "the admin socket answering")
        assert "dynamic load balancing" in await api.send("add server hashed/s2 127.0.0.7:80")
        assert (await api.send("add server roundrobin/s2 127.0.0.7:80")).strip() == "New server registered."
        state = (await api.send("show servers state roundrobin")).splitlines()
        header = state[1].lstrip("#").split()
        rows = {row.split()[3]: dict(zip(header, row.split(), strict=False)) for row in state[2:] if row}
        assert rows["s1"]["srv_uweight"] == "5" and rows["s2"]["srv_uweight"] == "1"  # no default-server
        assert (await api.servers("roundrobin"))["roundrobin"]["s2"].maint  # until enabled
        assert (await api.send("enable server roundrobin/s2")).strip() == ""
        assert "maintenance" in await api.send("del server roundrobin/s2")
        assert (await api.send("set server roundrobin/s2 state maint")).strip() == ""
        assert (await api.send("del server roundrobin/s2")).strip() == "Server deleted."
        add, enable = (
            Command("add server roundrobin/s3 127.0.0.8:80", ("New server registered.",)),
            Command("enable server roundrobin/s3", ("",), chained=True),
        )
        await api.run_chain([add, enable])  # one line, one answer: the add's
        assert not (await api.servers("roundrobin"))["roundrobin"]["s3"].maint
        with pytest.raises(RuntimeAPIError, match="dynamic load balancing"):
            await api.run_chain([replace(add, text="add server hashed/s3 127.0.0.8:80"), enable])
        with pytest.raises(RuntimeAPIError, match="No such server"):  # the add's answer is not enough
            await api.run_chain(
                [
                    replace(add, text="add server roundrobin/s4 127.0.0.8:80"),
                    replace(enable, text="enable server roundrobin/nothing"),
                ]
            )
        full = await api.send("show servers state")
        short = RuntimeAPI(Path(paths.stats_socket), max_answer=len(full.encode()) // 2)
        with pytest.raises(
            RuntimeAPIError, match=r"'show servers state' to .*: the answer is over \d+ bytes"
        ):
            await short.servers()  # an answer past the limit is an error, not memory spent
        assert await RuntimeAPI(Path(paths.stats_socket), max_answer=len(full.encode()) + 4096).servers()
    finally:
        proxy.stop()


async def test_a_config_file_written_by_someone_else_means_a_reload(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    """A restarted managed proxy writes the newest published config itself before HAProxy starts: the
    agent no longer knows what HAProxy runs, so the next config reloads rather than guessing. The same
    text written again is still what it applied."""
    a, b, _ = pool
    async with running_agent(etcd, site):
        first = site.config([a])
        await publish(etcd, first)
        await applied(etcd, first)
        await change_servers(etcd, site, [a, b])

        newer = site.config([a, b], handler=False)  # what a restarted proxy found published
        site.target.write_text(newer.body)
        cfg = site.config([b])
        await publish(etcd, cfg)
        status = await applied(etcd, cfg)
        assert status.applied_via == "reload" and status.fallback_reason is None
        await holds(site, cfg)

        site.target.write_text(site.target.read_text())  # rewritten, but the same text
        await change_servers(etcd, site, [a])


async def test_a_server_that_does_not_drain_in_time_is_cut_and_deleted(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    fast = pool[0]
    with slow_backend("127.0.0.9", delay=30.0) as (slow, arrived):
        async with running_agent(etcd, site, drain_timeout=0.5):
            first = site.config([fast])
            await publish(etcd, first)
            await applied(etcd, first)
            only_slow = site.config([slow])
            await publish(etcd, only_slow)
            assert (await applied(etcd, only_slow)).applied_via == "runtime"
            await holds(site, only_slow)
            in_flight = asyncio.create_task(asyncio.to_thread(fetch, site.port, timeout=60))
            assert await asyncio.to_thread(arrived.wait, 10)

            gone = site.config([fast])
            await publish(etcd, gone)
            await applied(etcd, gone)
            await holds(site, gone)  # deleted after its sessions were shut, long before 30 s
            # its session was shut; the template's retry-on sends the GET to the server that is left
            assert await in_flight == (200, fast.address)


async def test_the_first_server_of_an_empty_backend_is_added_at_runtime(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    """A routed service without backends is rendered as an empty backend (HAProxy answers 503 from
    it), so its first server and its last one leaving are server changes: no reload either way."""
    a, b, _ = pool
    async with running_agent(etcd, site):
        empty = site.config([])
        await publish(etcd, empty)
        status = await applied(etcd, empty)
        assert status.reloads == 1
        assert await asyncio.to_thread(fetch, site.port) == (503, "")

        status = await change_servers(etcd, site, [a])  # 0 → 1
        status = await change_servers(etcd, site, [])  # 1 → 0
        assert await asyncio.to_thread(fetch, site.port) == (503, "")
        status = await change_servers(etcd, site, [b])  # 0 → 1 again
        assert status.reloads == 1 and status.runtime_applies == 3 and status.runtime_fallbacks == 0
        assert set(parse_config(site.target.read_text()).servers()["svc_web"]) == {b.address}


class RecordingAPI(RuntimeAPI):
    """The real admin socket, remembering every line sent (for all instances: the agent makes its
    own)."""

    sent: ClassVar[list[str]] = []

    async def send_line(self, command: str) -> str:
        RecordingAPI.sent.append(command)
        return await super().send_line(command)


async def test_a_change_is_planned_from_the_last_verified_state_and_read_once(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    """Once the agent has verified what HAProxy holds, the next change sends its commands at once and
    reads ``show servers state`` once, after them (the verification), not before."""
    a, b, _ = pool
    RecordingAPI.sent.clear()
    async with running_agent(etcd, site, RecordingAPI):
        first = site.config([a])
        await publish(etcd, first)
        await applied(etcd, first)
        await change_servers(etcd, site, [a, b])  # read before: nothing verified yet
        RecordingAPI.sent.clear()
        await change_servers(etcd, site, [b])
        asked = [c for c in RecordingAPI.sent if not c.startswith(("show info", "del server"))]
        assert asked == [f"set server svc_web/{a.address} state maint", "show servers state svc_web"], asked
        RecordingAPI.sent.clear()
        await change_servers(etcd, site, [a, b])  # added and enabled on one line
        asked = [c for c in RecordingAPI.sent if not c.startswith(("show info", "del server"))]
        target = f"svc_web/{a.address}"
        added = f"add server {target} {a.address}; enable server {target}"
        if asked[0].startswith("set server"):  # a was still draining: made ready again
            added = f"set server {target} state ready"
        assert asked == [added, "show servers state svc_web"], asked


async def test_servers_changed_behind_the_agents_back_are_planned_again_from_haproxy(
    etcd: Etcd, site: Site, pool: list[Registration], caplog: pytest.LogCaptureFixture
) -> None:
    """A plan from the remembered state that HAProxy contradicts (someone put a server into
    maintenance over the socket) is planned again from ``show servers state``, still at runtime."""
    a, b, c = pool
    caplog.set_level(logging.INFO, logger="fleetop.proxy.haproxy_runtime")
    async with running_agent(etcd, site):
        first = site.config([a])
        await publish(etcd, first)
        await applied(etcd, first)
        await change_servers(etcd, site, [a, b])

        api = RuntimeAPI(Path(site.paths.stats_socket))
        assert (await api.send(f"set server svc_web/{a.address} state maint")).strip() == ""
        status = await change_servers(etcd, site, [a, b, c])  # a made ready again, c added
        assert status.reloads == 1 and status.runtime_fallbacks == 0
        assert any("reading it again" in r.getMessage() for r in caplog.records)


async def test_a_worker_started_behind_the_agents_back_gets_the_change_planned_again(
    etcd: Etcd, site: Site, pool: list[Registration], caplog: pytest.LogCaptureFixture
) -> None:
    """HAProxy reloaded by someone else between two changes: the change planned from memory is sent
    first (the newest-worker check comes after the commands, off the path to the first request),
    then that check finds the new worker, whose servers are read and planned again, at runtime."""
    a, b, c = pool
    caplog.set_level(logging.INFO, logger="fleetop.proxy.haproxy_runtime")
    async with running_agent(etcd, site, RecordingAPI):
        first = site.config([a])
        await publish(etcd, first)
        await applied(etcd, first)
        await change_servers(etcd, site, [a, b])

        master = int(Path(site.paths.pid_file).read_text().split()[0])
        before = newest_worker(master)
        os.kill(master, signal.SIGUSR2)
        api = RuntimeAPI(Path(site.paths.stats_socket))

        async def new_worker_answers() -> bool:
            newest = newest_worker(master)
            if newest is None or newest == before:
                return False
            with contextlib.suppress(RuntimeAPIError):
                return f"Pid: {newest}\n" in await api.send("show info")
            return False

        await eventually(new_worker_answers, 30, "the reloaded HAProxy's new worker answering", every=0.02)
        RecordingAPI.sent.clear()
        status = await change_servers(etcd, site, [a, b, c])
        assert status.reloads == 1 and status.runtime_fallbacks == 0 and status.runtime_applies == 2
        sent = [line for line in RecordingAPI.sent if not line.startswith("del server")]
        target = f"svc_web/{c.address}"
        assert sent[0] == f"add server {target} {c.address}; enable server {target}", sent
        assert "show info" in sent[1:], sent
        assert any("a new HAProxy worker answers" in r.getMessage() for r in caplog.records)


class BlindAPI(RuntimeAPI):
    """The real admin socket, except that ``show servers state`` leaves out the server named
    ``hide`` while it is set: a verification that keeps disagreeing with the config."""

    hide: ClassVar[str] = ""

    async def send_line(self, command: str) -> str:
        answer = await super().send_line(command)
        if not (BlindAPI.hide and command.startswith("show servers state")):
            return answer
        return "\n".join(line for line in answer.splitlines() if BlindAPI.hide not in line.split())


async def test_a_verification_that_disagrees_falls_back_to_a_checked_reload(
    etcd: Etcd, site: Site, pool: list[Registration]
) -> None:
    """The servers are changed first; when ``show servers state`` then disagrees, even read again,
    the config is still checked and installed, HAProxy is reloaded from it and status says why:
    nothing published is lost."""
    a, b, c = pool
    async with running_agent(etcd, site, BlindAPI):
        first = site.config([a])
        await publish(etcd, first)
        await applied(etcd, first)
        await change_servers(etcd, site, [a, b])

        BlindAPI.hide = c.address
        try:
            grown = site.config([a, b, c])
            await publish(etcd, grown)
            status = await applied(etcd, grown)
        finally:
            BlindAPI.hide = ""
        assert status.applied_via == "reload" and status.reloads == 2
        assert status.runtime_fallbacks == 1 and status.runtime_applies == 1
        assert c.address in (status.fallback_reason or ""), status.fallback_reason
        assert site.target.read_text() == grown.body
        await holds(site, grown)
        want = {a.address, b.address, c.address}
        assert await handlers_seen(site.port, want) == want

        status = await change_servers(etcd, site, [c])  # the reloaded HAProxy, read afresh
        assert status.reloads == 2 and status.runtime_applies == 2
