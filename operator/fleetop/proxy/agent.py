"""``fleetop proxy-agent``: follow one proxy's published config in etcd and apply it on this machine.

The operator publishes ``/fleetop/proxies/<proxy>/config`` (a :class:`PublishedConfig`); one agent per
proxy host list-watches that key and installs each new config with :func:`apply_config` (stage,
check, rename, reload). It reports what it did to ``/status/agents/<proxy>/<machine>`` as an
:class:`AgentStatus`, so ``fleetop status`` can tell which hosts run the newest config and why one
does not.

Rules:

- always the newest: the watch only records the latest value; the apply loop takes it when it is free,
  so configs published while one is being applied are skipped, never applied late;
- a config that fails its check is never installed and is not retried (the same input fails the same
  way) until a new one arrives; the error and its hash are reported while the old config serves;
- a failure after install (no proxy running yet, reload command failed) is retried with backoff: the
  proxy may simply not have started yet;
- HAProxy without reloads: when a new config differs from the one HAProxy runs only in the servers of
  its backends (:mod:`fleetop.proxy.haproxy_servers`), the servers change through HAProxy's admin
  socket (:mod:`fleetop.proxy.haproxy_runtime`), ``show servers state`` is checked against the
  config, and the file is still staged, checked and renamed, so a restart or a later reload gives
  the same servers. Any other change reloads; so does a refused command or a disagreeing state
  (after installing the checked file); status says which way each config went and why it fell back;
- HAProxy's servers one etcd commit sooner: the operator publishes, with a config whose servers
  change at runtime, the rules it keeps each backend's registrations by; the agent watches those
  registrations too and, when it has seen a change the published config does not reflect yet,
  applies the config the operator will publish (:mod:`fleetop.proxy.follow`). Status says which
  backends run ahead of the published config (``serversAhead``) until it catches up, and a config
  equal to the one applied is only reported, not applied again;
- status is written only when it changed, bound to a lease kept alive while the agent runs, so an
  agent that is gone stops counting; etcd restarts are ridden out by ``list_watch`` and by retrying
  the status write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetop.backoff import exponential
from fleetop.errors import FleetopError
from fleetop.etcd.client import Etcd, LeaseKeeper, Snapshot
from fleetop.filemodes import SHARED_DIR_MODE, make_dir
from fleetop.keys import Keys
from fleetop.models.status import AgentStatus, PublishedConfig
from fleetop.prefixes import RegistrationCaches
from fleetop.proxy.apply import ApplyError, ApplyResult, pid_file_of
from fleetop.proxy.follow import Followed, Follower, followable
from fleetop.proxy.haproxy_runtime import (
    DRAIN_TIMEOUT,
    RuntimeAPI,
    RuntimeAPIError,
    ServerRuntime,
    admin_socket_of,
)
from fleetop.proxy.haproxy_servers import ConfigModel, parse_config, runtime_change
from fleetop.proxy.policy import AgentPolicy
from fleetop.proxy.published import PublishedFormatError, decode_published
from fleetop.proxy.render import default_runtime_dir
from fleetop.proxy.salvage import Dropped, apply_dropping_backends
from fleetop.proxy.serverdiff import servers_only_change
from fleetop.timefmt import rfc3339

log = logging.getLogger(__name__)

STATUS_TTL = 30
DENIED_RETRY = 60.0
"""Seconds between attempts to watch registrations the agent's etcd role may not read (it then
applies the published servers only)."""


def utc_now() -> str:
    return rfc3339(time.time())


@dataclass(frozen=True)
class AgentSettings:
    """What one agent applies where. ``config_path`` wins over the published ``configPath``; without
    either the config goes to ``<runtime_dir>/<kind>.conf``."""

    proxy: str
    machine: str
    runtime_dir: Path
    config_path: Path | None = None
    timeout: float = 30.0
    retry_min: float = 0.5
    retry_max: float = 30.0
    status_ttl: int = STATUS_TTL
    runtime_api: bool = True
    follow: bool = True
    """Follow the registrations of the backends the operator lets agents follow (HAProxy at runtime)."""
    drain_timeout: float = DRAIN_TIMEOUT
    drain_poll: float = 0.05
    policy: AgentPolicy = field(default_factory=AgentPolicy)
    """This machine's commands and config directories (:mod:`fleetop.proxy.policy`)."""

    def allowed(self) -> AgentPolicy:
        """The policy with the agent's own runtime directory, which is always allowed."""
        return self.policy.with_dirs([self.runtime_dir])

    def retry_delay(self, failures: int) -> float:
        """The pause after ``failures`` failed attempts in a row: ``retry_min`` doubling to ``retry_max``."""
        return exponential(failures - 1, initial=self.retry_min, cap=self.retry_max)

    def target(self, cfg: PublishedConfig) -> Path:
        if self.config_path is not None:
            return self.config_path
        if cfg.config_path:
            return Path(cfg.config_path)
        return self.runtime_dir / f"{cfg.kind}.conf"


def decode_config(raw: bytes) -> PublishedConfig | str:
    """The published value (either wire format), or why it cannot be used: a document this agent
    cannot decode is reported, never applied."""
    try:
        return decode_published(raw)
    except PublishedFormatError as exc:
        return str(exc)


class ProxyAgent:
    """Applies the newest published config and reports status. ``run()`` until cancelled."""

    def __init__(
        self,
        etcd: Etcd,
        keys: Keys,
        settings: AgentSettings,
        *,
        now: Callable[[], str] = utc_now,
        runtime_api: Callable[[Path, float], RuntimeAPI] = RuntimeAPI,
    ) -> None:
        """``runtime_api`` makes the admin socket client from its path and timeout."""
        self.etcd = etcd
        self.keys = keys
        self.settings = settings
        self.status = AgentStatus(machine=settings.machine)
        self._now = now
        self._runtime_api = runtime_api
        self._latest: bytes | None = None
        self._changed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._dirty.set()  # report presence at once
        self._given_up: tuple[str, int] | None = None  # (hash, hash of the body) that failed its check
        self._decoded: tuple[bytes, PublishedConfig | str] | None = None
        self._follower = Follower()
        self._registrations = RegistrationCaches(etcd, self._registrations_changed, denied_retry=DENIED_RETRY)
        self._followed: frozenset[str] = frozenset()  # the prefixes the newest config follows
        self._applied_body: str | None = None  # the body of the config last applied (effective)
        self._loaded: _Loaded | None = None  # the HAProxy config the proxy runs, as this agent applied it
        self._runtimes: dict[Path, ServerRuntime] = {}
        self._draining = asyncio.Event()
        self._accepted: tuple[Path, str] | None = None  # (target, body) last installed and reloaded
        self.checks_skipped = 0
        self.applied = asyncio.Event()  # set after every attempt (tests wait on it)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch())
                group.create_task(self._apply_loop())
                group.create_task(self._status_loop())
                group.create_task(self._drain_loop())
                group.create_task(self._registrations.run())
        except BaseExceptionGroup as failed:
            raise _first(failed) from None

    async def _watch(self) -> None:
        key = self.keys.proxy_config(self.settings.proxy)
        stream = self.etcd.list_watch(key)
        async with contextlib.aclosing(stream):
            async for update in stream:
                if isinstance(update, Snapshot):
                    found = [kv for kv in update.items if kv.key == key]
                    value = found[0].value if found else None
                else:
                    value = self._latest
                    for event in update.events:
                        if event.key == key:
                            value = None if event.type == "delete" else event.value
                if value != self._latest:
                    self._latest = value
                    self._changed.set()

    def _registrations_changed(self, prefix: str, keys: set[str]) -> None:
        if prefix in self._followed:
            self._changed.set()

    async def _apply_loop(self) -> None:
        failures = 0
        while True:
            await self._changed.wait()
            self._changed.clear()
            retry = await self._apply_newest()
            self.applied.set()
            if not retry:
                failures = 0
                continue
            failures += 1
            delay = self.settings.retry_delay(failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)
            self._changed.set()  # retry with whatever is newest by then

    async def _apply_newest(self) -> bool:
        """Apply the latest value if it needs applying. True when the attempt should be retried."""
        raw = self._latest
        if raw is None:
            return False  # nothing published (or deleted): keep serving what is there
        cfg = self._decode(raw)
        if isinstance(cfg, str):
            self._report(error=cfg, failed_hash="")
            return False
        followed = self._follow(cfg)
        if followed.body is not cfg.body:
            cfg = cfg.model_copy(update={"body": followed.body})
            await self._servers_first(cfg, followed)
        if cfg.hash == self.status.applied_hash and self.status.error is None and self._same_body(cfg):
            if cfg.generation > self.status.applied_generation:
                # the config running already, published again (A, B superseded, A): say it is applied
                self._report(applied_generation=cfg.generation)
            return False
        if (cfg.hash, hash(cfg.body)) == self._given_up:
            return False
        if self._running_already(cfg):
            self._applied_body = cfg.body
            self._report(
                applied_hash=cfg.hash,
                applied_generation=cfg.generation,
                servers_ahead=list(followed.ahead),
                error=None,
                failed_hash="",
            )
            return False
        return await self._apply(cfg, followed)

    def _decode(self, raw: bytes) -> PublishedConfig | str:
        """The published value decoded, once per value (registration changes apply it again)."""
        if self._decoded is None or self._decoded[0] is not raw:
            self._decoded = (raw, decode_config(raw))
        return self._decoded[1]

    def _follow(self, cfg: PublishedConfig) -> Followed:
        """The config to apply: the published one, with the backends it lets agents follow rendered
        from registrations newer than it (:mod:`fleetop.proxy.follow`)."""
        if not (self.settings.follow and self.settings.runtime_api and followable(cfg)):
            self._followed = frozenset()
            self._registrations.want(())
            return Followed(cfg.body)
        self._followed = frozenset(rule.prefix for rule in cfg.follow)
        self._registrations.want(self._followed)
        return self._follower.effective(cfg, self._registrations.cache)

    async def _servers_first(self, cfg: PublishedConfig, followed: Followed) -> None:
        """Registrations moved under the config HAProxy runs: change those servers at once, before the
        policy check, the cut and the diff of the whole config, which the apply then goes through as
        for any config (it finds the servers in place and verifies them; the file is staged, checked
        and renamed). Only for the published config already applied, whose paths and admin socket the
        policy approved, and only servers: anything else waits for the apply. A refused command is
        left to the apply, which plans again from what HAProxy reports."""
        loaded = self._loaded
        if (
            loaded is None
            or len(self._runtimes) != 1
            or cfg.hash != self.status.applied_hash
            or self.status.error is not None
            or self._applied_body == cfg.body
        ):
            return
        (runtime,) = self._runtimes.values()
        try:
            await runtime.apply(followed.servers)
        except RuntimeAPIError as exc:
            log.info("proxy %s: followed servers not changed before the apply: %s", self.settings.proxy, exc)

    def _same_body(self, cfg: PublishedConfig) -> bool:
        applied = self._applied_body
        return applied is None or applied is cfg.body or applied == cfg.body

    def _running_already(self, cfg: PublishedConfig) -> bool:
        """Whether HAProxy runs this very text, as this agent applied it (the operator's config caught
        up with the registrations the agent followed): nothing to apply, only to report."""
        loaded = self._loaded
        if loaded is None or cfg.kind != "haproxy" or cfg.reload_cmd is not None or self.status.error:
            return False
        if loaded.body != cfg.body:
            return False
        return self._still_installed(loaded, self.settings.target(cfg))

    async def _apply(self, cfg: PublishedConfig, followed: Followed) -> bool:
        settings, raw = self.settings, self._latest
        target = settings.target(cfg)
        allowed = settings.allowed()
        refused = allowed.refusal(cfg, target)
        if refused is not None:  # nothing runs, nothing is written: the old config keeps serving
            log.error("proxy %s: config %s: %s", settings.proxy, cfg.hash[:12], refused)
            self._given_up = (cfg.hash, hash(cfg.body))
            self._report(error=refused, failed_hash=cfg.hash)
            return False
        model, runtime = self._runtime_step(cfg, target)
        loaded, self._loaded = self._loaded, None  # unknown until this apply is over
        check = self._check_for(cfg, target)
        try:
            _ensure_runtime_dir(cfg, allowed)
            result, dropped = await apply_dropping_backends(
                cfg,
                target,
                check=check,
                reload=cfg.reload_cmd,
                timeout=settings.timeout,
                superseded=lambda: self._latest != raw,
                runtime=runtime,
            )
        except ApplyError as exc:
            log.error(
                "proxy %s: config %s (generation %d): %s", settings.proxy, cfg.hash[:12], cfg.generation, exc
            )
            if exc.stage == "check":
                self._given_up = (cfg.hash, hash(cfg.body))
            if not exc.installed:
                self._loaded = loaded  # the proxy still runs what it ran
            if exc.reloaded:  # a reload (an undo included) leaves HAProxy with the file's servers only
                for server_runtime in self._runtimes.values():
                    server_runtime.forget()
            reloads = self.status.reloads + (1 if exc.reloaded else 0)
            self._report(error=str(exc), failed_hash=cfg.hash, reloads=reloads)
            return exc.stage != "check"
        except (FleetopError, OSError) as exc:  # nginx/haproxy not installed, runtime dir not writable
            log.error("proxy %s: cannot apply %s: %s", settings.proxy, cfg.hash[:12], exc)
            self._report(error=str(exc), failed_hash=cfg.hash)
            return True
        if result.superseded:
            self._loaded = loaded
            log.info("proxy %s: config %s superseded before install", settings.proxy, cfg.hash[:12])
            return False  # the newer one is already signalled
        # a base for proofs only if nginx's own check (or a proof from one) accepted it, as published
        self._accepted = (target, cfg.body) if cfg.check_cmd is None and not dropped else None
        self._given_up = None
        self._applied(cfg, result, model, dropped, followed)
        return False

    def _applied(
        self,
        cfg: PublishedConfig,
        result: ApplyResult,
        model: ConfigModel | None,
        dropped: list[Dropped],
        followed: Followed,
    ) -> None:
        if dropped:
            log.warning(
                "proxy %s: applied without %s", self.settings.proxy, "; ".join(d.describe() for d in dropped)
            )
        how = result.via or "installed"
        if result.fallback:
            log.error(
                "proxy %s: config %s could not be applied at runtime, reloaded instead: %s",
                self.settings.proxy, cfg.hash[:12], result.fallback,
            )  # fmt: skip
        ahead = f", servers of {', '.join(followed.ahead)} ahead of it" if followed.ahead else ""
        log.info(
            "proxy %s: applied config %s (generation %d%s) by %s",
            self.settings.proxy, cfg.hash[:12], cfg.generation, ahead, how,
        )  # fmt: skip
        self._applied_body = cfg.body
        if result.via != "runtime":
            for runtime in self._runtimes.values():
                runtime.forget()  # a reloaded HAProxy holds only the file's servers
        elif any(runtime.draining for runtime in self._runtimes.values()):
            self._draining.set()
        runtime_possible = self.settings.runtime_api and cfg.reload_cmd is None
        if cfg.kind == "haproxy" and result.via and runtime_possible and not dropped:
            self._loaded = _Loaded(
                cfg.body, model if model is not None else parse_config(cfg.body), _identity(result.target)
            )
        status = self.status
        self._report(
            applied_hash=cfg.hash,
            applied_generation=cfg.generation,
            applied_at=self._now(),
            applied_via=result.via,
            reloads=status.reloads + (1 if result.reloaded else 0),
            runtime_applies=status.runtime_applies + (1 if result.via == "runtime" else 0),
            runtime_fallbacks=status.runtime_fallbacks + (1 if result.fallback else 0),
            fallback_reason=result.fallback or None,
            error=None,
            failed_hash="",
            dropped_backends=[d.describe() for d in dropped],
            servers_ahead=list(followed.ahead),
            followed_applies=status.followed_applies + (1 if followed.ahead else 0),
        )

    def _runtime_step(
        self, cfg: PublishedConfig, target: Path
    ) -> tuple[ConfigModel | None, Callable[[], Awaitable[object]] | None]:
        """The new config's server model and, when only servers changed since the config HAProxy
        runs, the step that changes them at runtime instead of a reload."""
        if cfg.kind != "haproxy" or not self.settings.runtime_api or cfg.reload_cmd is not None:
            return None, None
        model = parse_config(cfg.body)
        socket_path = admin_socket_of(cfg.body)
        loaded = self._loaded
        if socket_path is None or loaded is None or not self._still_installed(loaded, target):
            return model, None  # no socket, or not known what HAProxy runs: reload
        change = runtime_change(loaded.model, model)
        if change.reason:
            log.info("proxy %s: config %s reloads: %s", self.settings.proxy, cfg.hash[:12], change.reason)
            return model, None
        runtime = self._runtimes.get(socket_path)
        if runtime is None:
            api = self._runtime_api(socket_path, min(self.settings.timeout, 5.0))
            pid_file = pid_file_of("haproxy", cfg.body)
            runtime = ServerRuntime(api, pid_file=pid_file, drain_timeout=self.settings.drain_timeout)
            self._runtimes = {socket_path: runtime}
        return model, lambda: runtime.apply(change.backends)

    def _still_installed(self, loaded: _Loaded, target: Path) -> bool:
        """Whether the installed file is still the config this agent applied: the same file, or the
        same text (a restarted managed proxy writes the published config again before it starts)."""
        identity = _identity(target)
        if identity is not None and identity == loaded.file:
            return True
        try:
            same = identity is not None and target.read_text(encoding="utf-8") == loaded.body
        except (OSError, UnicodeDecodeError):
            return False
        if same:
            self._loaded = dataclasses.replace(loaded, file=identity)
        return same

    async def _drain_loop(self) -> None:
        """Delete drained servers once HAProxy lets them go (see :class:`ServerRuntime`)."""
        while True:
            await self._draining.wait()
            busy, pause = False, self.settings.drain_poll
            for runtime in list(self._runtimes.values()):
                try:
                    await runtime.drain()
                except RuntimeAPIError as exc:  # HAProxy restarting: its servers come from the file
                    log.warning("proxy %s: draining servers: %s", self.settings.proxy, exc)
                    pause = max(pause, self.settings.retry_min)
                busy = busy or bool(runtime.draining)
            if not busy:
                self._draining.clear()
                continue
            await asyncio.sleep(pause)

    def _check_for(self, cfg: PublishedConfig, target: Path) -> list[str] | str | None:
        """The check to run: the published one, or the kind's default unless the config is the one
        nginx last accepted with only upstream server addresses changed (see :mod:`serverdiff`)."""
        accepted = self._accepted
        if cfg.check_cmd is not None or cfg.kind != "nginx" or accepted is None or accepted[0] != target:
            return cfg.check_cmd
        if not servers_only_change(accepted[1], cfg.body):
            return None
        self.checks_skipped += 1
        return []  # proven: installed without starting the checker

    def _report(self, **changes: object) -> None:
        updated = self.status.model_copy(update=changes)
        if updated != self.status:
            self.status = updated
            self._dirty.set()

    async def _status_loop(self) -> None:
        writer = _StatusWriter(
            self.etcd,
            self.keys.agent_status(self.settings.proxy, self.settings.machine),
            self.settings.status_ttl,
        )
        try:
            failures = 0
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                if await writer.write(self.status):
                    failures = 0
                    continue
                failures += 1
                await asyncio.sleep(self.settings.retry_delay(failures))
                self._dirty.set()
        finally:
            await writer.close()


@dataclass(frozen=True, slots=True)
class _Loaded:
    """The HAProxy config the proxy runs, as this agent applied it, and the installed file's identity
    then (a restarted managed proxy may have written a newer published config there since)."""

    body: str
    model: ConfigModel
    file: tuple[int, int, int, int] | None


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """Device, inode, size and modification time: an installed file is renamed into place, so any
    other write gives another identity (and a missing file none)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _ensure_runtime_dir(cfg: PublishedConfig, policy: AgentPolicy) -> None:
    """The directory of the pid file the config names must exist before ``nginx -t`` can pass; it is
    created only where the policy lets the agent write."""
    pid_file = pid_file_of(cfg.kind, cfg.body)
    if pid_file is None or not pid_file.is_absolute() or pid_file.parent.is_dir():
        return  # an existing directory is left as it is (it may be /run/nginx or /etc/nginx)
    if policy.path_problem(pid_file, "") is None:
        make_dir(pid_file.parent, SHARED_DIR_MODE)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group, so callers see our error tree, not a group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


class _StatusWriter:
    """Writes the status JSON only when it changed, on a lease kept alive while the agent runs.

    If the lease is lost (etcd down longer than its TTL) the keeper grants a new one and the status is
    written again on it.
    """

    def __init__(self, etcd: Etcd, key: str, ttl: int) -> None:
        self.etcd = etcd
        self.key = key
        self.ttl = ttl
        self._keeper: LeaseKeeper | None = None
        self._body: str | None = None
        self._written: str | None = None

    async def write(self, status: AgentStatus) -> bool:
        """Write if changed; False when etcd refused or was unreachable (the caller retries)."""
        self._body = status.model_dump_json(by_alias=True)
        try:
            if self._keeper is None:
                keeper = LeaseKeeper(self.etcd, 0, self.ttl, regrant=True, on_regrant=self._rewrite)
                await keeper.start()
                self._keeper = keeper
            if self._body != self._written:
                await self.etcd.put(self.key, self._body, lease=self._keeper.lease)
                self._written = self._body
            return True
        except FleetopError as exc:
            log.warning("cannot write agent status to %s yet: %s", self.key, exc)
            return False

    async def _rewrite(self, lease: int) -> None:
        if self._body is not None:
            await self.etcd.put(self.key, self._body, lease=lease)
            self._written = self._body

    async def close(self) -> None:
        """Stop renewing and revoke the lease: the status disappears with the agent."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop()


async def run_agent(
    etcd: Etcd,
    keys: Keys,
    proxy: str,
    machine: str,
    *,
    runtime_dir: Path | None = None,
    config_path: Path | None = None,
    timeout: float = 30.0,
    policy: AgentPolicy | None = None,
) -> None:
    """Run one agent until cancelled."""
    settings = AgentSettings(
        proxy=proxy,
        machine=machine,
        runtime_dir=runtime_dir or Path(default_runtime_dir(proxy)),
        config_path=config_path,
        timeout=timeout,
        policy=policy or AgentPolicy(),
    )
    await ProxyAgent(etcd, keys, settings).run()
