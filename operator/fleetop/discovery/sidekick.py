"""``fleetop register`` as the sidekick runs it: one small process per instance, standard library only.

A machine runs one sidekick per instance, so what a sidekick costs is multiplied: through the gRPC client,
pydantic and asyncio each one took 55-75 MB and 0.7 s of CPU to start. This one keeps the contract of
:mod:`fleetop.discovery.register` (checks at once and quickly until the first pass, then every
``--interval``; the key ``host:port`` on a lease of ``--ttl`` kept alive while the check passes; deleted
at once when a check fails or on SIGTERM/SIGINT; a new lease and the key again after etcd comes back or
forgets the lease) and talks to etcd through its HTTP/JSON gateway (:mod:`fleetop.etcd.gateway`), with
etcdctl's flags and environment (TLS, ``ETCDCTL_USER``/``ETCDCTL_PASSWORD``, never a password in argv).
Measured with 30 on one machine: about 8 MB of memory each (proportional set size) and 0.05 s of CPU
to start (``bench/lean.py``).

Threads, not asyncio (whose import alone is 4 MB): the main thread checks and writes; a keeper thread
renews the lease every third of the TTL on its own connection and wakes the main thread when it can no
longer prove the lease alive. Signals and the keeper wake the main thread through a pipe; a signal that
arrives during a check abandons the check (an ``--exec`` command's process group is killed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, NamedTuple

from fleetop.backoff import exponential
from fleetop.config import EtcdSettings, etcd_flags, settings_from
from fleetop.discovery.addresses import parse_address, registration_key
from fleetop.errors import ConfigError, FleetopError, InputError, NotFound, TemporaryError
from fleetop.etcd.gateway import Gateway, GatewayRefusesCommonName
from fleetop.logfmt import basic_config
from fleetop.timefmt import flag_seconds

INFO, WARNING = 20, 30


class _Log:
    """Lines on stderr as the other commands' ``logging`` writes them (``logging`` itself costs each
    sidekick most of a megabyte). ``FLEETOP_LOG_LEVEL=WARNING`` keeps only the warnings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.level = (
            WARNING if os.environ.get("FLEETOP_LOG_LEVEL", "").upper() in ("WARNING", "ERROR") else INFO
        )

    def log(self, level: int, message: str, *args: object) -> None:
        if level < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        label = "INFO" if level < WARNING else "WARNING"
        sys.stderr.write(f"{stamp} {label} {self.name}: {message % args if args else message}\n")
        sys.stderr.flush()

    def info(self, message: str, *args: object) -> None:
        self.log(INFO, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log(WARNING, message, *args)


log = _Log("fleetop.register")

EXIT_FAILURE = 1
EXIT_USAGE = 2
FAST_RETRY = 0.25
"""Seconds between checks until the first one passes (and the first step of the back-off after one fails)."""
ETCD_RETRY = 1.0
"""Seconds between attempts to register while etcd is unreachable."""
CLEANUP_TIMEOUT = 1.5
"""Per request while stopping: past it the key is left to its lease."""
_DETAIL_LIMIT = 300


class Check(NamedTuple):
    """``kind`` is none, http, tcp or exec; ``path`` for http, ``argv`` for exec."""

    kind: str
    path: str
    argv: tuple[str, ...]
    timeout: float

    def describe(self) -> str:
        """For logs; a command's arguments are left out (they may carry a password)."""
        if self.kind == "http":
            return f"http GET {self.path}"
        if self.kind == "tcp":
            return "tcp connect"
        if self.kind == "exec":
            more = len(self.argv) - 1
            return f"exec {self.argv[0]}" + (f" (+{more} args)" if more else "")
        return "none (healthy while running)"


class Config(NamedTuple):
    key: str
    host: str
    port: int
    check: Check
    interval: float
    ttl: int

    @property
    def value(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def describe(self) -> str:
        check = self.check.describe()
        return f"{self.key} = {self.value} (check {check}, every {self.interval:g}s, ttl {self.ttl}s)"


# -- flags ---------------------------------------------------------------------------------------------


def parser(prog: str = "fleetop register") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Keep <root><prefix>/<instance> = host:port in etcd while the instance passes its check.",
    )
    p.add_argument("--service", required=True, help="service name (the key goes under /services/<service>/)")
    p.add_argument("--instance", required=True, help="instance id, the last key segment (e.g. the port)")
    p.add_argument("--address", required=True, help="host:port to register (IPv4, [IPv6] or a DNS name)")
    p.add_argument("--http", metavar="PATH", help="check with HTTP GET of PATH (2xx/3xx is healthy)")
    p.add_argument("--tcp", action="store_true", help="check that a TCP connection opens")
    p.add_argument(
        "--exec", dest="exec_", metavar="CMD", help="check by running CMD (no shell); exit 0 is healthy"
    )
    p.add_argument("--interval", default="10s", help="time between checks once healthy (10s)")
    p.add_argument("--timeout", default="2s", help="time limit of one check (2s)")
    p.add_argument(
        "--ttl", default="30s", help="lease TTL: how long the key outlives a killed sidekick (30s)"
    )
    p.add_argument("--prefix", help="registration key prefix (default /services/<service>)")
    p.add_argument(
        "--endpoints", help="etcd endpoints (default: ETCDCTL_ENDPOINTS, ETCD_ENDPOINT, 127.0.0.1:2379)"
    )
    p.add_argument("--root", help="key root of the fleetop installation (default: FLEETOP_PREFIX or /)")
    return p


def _check(args: argparse.Namespace) -> Check:
    chosen = [
        name
        for name, on in (
            ("--http", args.http is not None),
            ("--tcp", args.tcp),
            ("--exec", args.exec_ is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise InputError(f"choose one check, not {' and '.join(chosen)}")
    timeout = flag_seconds(args.timeout, "--timeout")
    if args.http is not None:
        path = args.http
        if not path.startswith("/") or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path):
            raise InputError(f"{path!r} must be a URL path starting with '/', without spaces", where="--http")
        return Check("http", path, (), timeout)
    if args.exec_ is not None:
        try:
            argv = tuple(shlex.split(args.exec_))
        except ValueError as exc:
            raise InputError(f"cannot split {args.exec_!r}: {exc}", where="--exec") from None
        if not argv:
            raise InputError("the command is empty", where="--exec")
        return Check("exec", "/", argv, timeout)
    return Check("tcp" if args.tcp else "none", "/", (), timeout)


def build_config(args: argparse.Namespace) -> Config:
    """Validate the flags; :class:`InputError` names the one at fault. Nothing touches etcd before."""
    host, port = parse_address(args.address)
    key = registration_key(args.service, args.instance, args.prefix)
    check = _check(args)
    interval = flag_seconds(args.interval, "--interval")
    ttl = flag_seconds(args.ttl, "--ttl")
    if ttl < 1:
        raise InputError("the TTL must be at least 1s", where="--ttl")
    return Config(key, host, port, check, interval, -int(-ttl // 1))


# -- checks --------------------------------------------------------------------------------------------


class CheckResult(NamedTuple):
    healthy: bool
    detail: str


def run_check(check: Check, host: str, port: int) -> CheckResult:
    """One check within ``check.timeout``; never raises for an unhealthy instance."""
    if check.kind == "http":
        return _check_http(host, port, check.path, check.timeout)
    if check.kind == "tcp":
        try:
            socket.create_connection((host, port), timeout=check.timeout).close()
        except TimeoutError:
            return CheckResult(False, f"connect timed out after {check.timeout:g}s")
        except OSError as exc:
            return CheckResult(False, f"connect failed: {exc.strerror or exc}")
        return CheckResult(True, "connected")
    if check.kind == "exec":
        return _check_exec(check.argv, host, port, check.timeout)
    return CheckResult(True, "no check configured")


def _check_http(host: str, port: int, path: str, timeout: float) -> CheckResult:
    """GET ``http://host:port/path`` (HTTP/1.1, redirects not followed); healthy on 2xx and 3xx."""
    deadline = time.monotonic() + timeout
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: fleetop-register\r\n"
    request += "Accept: */*\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request.encode("latin-1"))
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except TimeoutError:
        return CheckResult(False, f"timed out after {timeout:g}s")
    except OSError as exc:
        return CheckResult(False, f"connect failed: {exc.strerror or exc}")
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return CheckResult(False, "not an HTTP response" if head else "connection closed without a response")
    code = int(parts[1])
    return CheckResult(200 <= code < 400, f"HTTP {code}")


def _check_exec(argv: tuple[str, ...], host: str, port: int, timeout: float) -> CheckResult:
    """Run ``argv`` without a shell, in its own process group (killed on timeout or a signal)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    env = dict(os.environ, FLEETOP_ADDRESS=authority, FLEETOP_HOST=host, FLEETOP_PORT=str(port))
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return CheckResult(False, f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"timed out after {timeout:g}s (killed)")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
    if proc.returncode == 0:
        return CheckResult(True, "exit 0")
    what = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    text = " ".join(stderr.decode("utf-8", errors="replace").split())
    if len(text) > _DETAIL_LIMIT:
        text = "..." + text[-_DETAIL_LIMIT:]
    return CheckResult(False, f"{what}: {text}" if text else what)


# -- the lease and the key -----------------------------------------------------------------------------


class Keeper(threading.Thread):
    """Renews one lease every third of its TTL on its own connection until stopped.

    ``lost`` is set (and ``wake`` called) when etcd says the lease is gone, or when no renewal has
    succeeded for a whole TTL (the lease may have expired meanwhile).
    """

    def __init__(self, settings: EtcdSettings, lease: int, ttl: int, wake: Any) -> None:
        super().__init__(name=f"keeper-{lease:x}", daemon=True)
        self.lease, self.ttl, self._wake = lease, ttl, wake
        self._gateway = Gateway(settings)
        self._halt = threading.Event()
        self.lost = threading.Event()

    def stop(self) -> None:
        """Stop renewing, without waiting for a renewal in flight (the lease is revoked or left to its
        TTL either way, so nothing waits on etcd here)."""
        self._halt.set()

    def run(self) -> None:
        period = max(self.ttl / 3.0, 0.2)
        renewed = time.monotonic()
        delay = period
        try:
            while not self._halt.wait(delay):
                try:
                    remaining = self._gateway.keepalive(self.lease)
                except TemporaryError as exc:
                    if time.monotonic() - renewed < self.ttl:
                        delay = min(0.5, period)
                        continue
                    log.warning("lease %x not renewed for %ss: %s", self.lease, self.ttl, exc)
                    remaining = 0
                except FleetopError as exc:
                    log.warning("lease %x cannot be renewed: %s", self.lease, exc)
                    remaining = 0
                if remaining <= 0:
                    self.lost.set()
                    if not self._halt.is_set():
                        self._wake()
                    return
                renewed, delay = time.monotonic(), period
        finally:
            self._gateway.close()


class Registrar:
    """The key and the lease it rides on, like :class:`fleetop.discovery.register.Registrar`."""

    def __init__(self, settings: EtcdSettings, config: Config, wake: Any) -> None:
        self.settings, self.config, self._wake = settings, config, wake
        self.gateway = Gateway(settings)
        self.registered = False
        self._keeper: Keeper | None = None
        self._stale: list[int] = []
        self._etcd_down = False

    def ensure(self) -> bool:
        """Make sure the key holds our value on a live lease of ours. True when it is so."""
        try:
            try:
                self._put_if_needed()
            except NotFound:  # the lease was revoked or expired before the keeper noticed
                log.warning("lease of %s is gone; registering on a new one", self.config.key)
                self._stop_keeper()
                self._put_if_needed()
            self.registered = True
            if self._etcd_down:
                log.info("etcd answers again")
                self._etcd_down = False
        except TemporaryError as exc:
            state = "the registration may lapse" if self.registered else "not registered"
            if not self._etcd_down:
                log.warning("etcd unavailable, %s: %s", state, exc)
            self._etcd_down, self.registered = True, False
            return False
        with contextlib.suppress(TemporaryError):  # leftovers of earlier leases: their TTL runs anyway
            self._revoke_stale()
        return True

    def _put_if_needed(self) -> None:
        key, value = self.config.key, self.config.value
        renewed = self._keeper is None or self._keeper.lost.is_set()
        if renewed:
            self._stop_keeper()
            lease = self.gateway.grant(self.config.ttl)
            self._keeper = Keeper(self.settings, lease, self.config.ttl, self._wake)
            self._keeper.start()
        assert self._keeper is not None
        lease = self._keeper.lease
        current = self.gateway.get(key)
        if current is not None and current.value == value.encode() and current.lease == lease:
            return
        self.gateway.put(key, value, lease=lease)
        if renewed and self.registered:
            why = " on a new lease"
        else:
            why = " (it had vanished or changed)" if self.registered else ""
        log.info("registered %s = %s, lease %x, ttl %ss%s", key, value, lease, self.config.ttl, why)

    def withdraw(self) -> None:
        """Stop renewing, delete the key if it still holds our value, revoke the lease."""
        self._stop_keeper()
        was_registered, self.registered = self.registered, False
        if not was_registered and not self._stale:
            return
        key = self.config.key
        try:
            deleted = self.gateway.delete_if_value(key, self.config.value)
            self._revoke_stale()
        except TemporaryError as exc:
            log.warning("cannot delete %s now (its lease expires within %ss): %s", key, self.config.ttl, exc)
            return
        if was_registered or deleted:
            log.info("deregistered %s", key)

    def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.stop()
            self._stale.append(keeper.lease)

    def _revoke_stale(self) -> None:
        while self._stale:
            self.gateway.revoke(self._stale[0])
            self._stale.pop(0)

    def close(self) -> None:
        self.gateway.close()


# -- the loop ------------------------------------------------------------------------------------------


class _Stopped(Exception):
    """Raised by the signal handler while a check runs, to abandon it."""


class Sidekick:
    """Check, register while healthy, deregister when not, until SIGTERM/SIGINT; then deregister."""

    def __init__(self, settings: EtcdSettings, config: Config, *, fast_retry: float = FAST_RETRY) -> None:
        self.settings, self.config, self.fast_retry = settings, config, fast_retry
        self.stopping = False
        self._in_check = False
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def wake(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(OSError):  # a full pipe: the loop is awake already
            os.write(self._wake_w, b".")

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self.wake()
        if self._in_check:
            self._in_check = False
            raise _Stopped()

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info("using %s", self.settings.describe())
        log.info("checking %s", self.config.describe())
        registrar = Registrar(self.settings, self.config, self.wake)
        try:
            self._loop(registrar)
        except _Stopped:
            pass
        finally:
            self._final_withdraw(registrar)

    def _loop(self, registrar: Registrar) -> None:
        healthy: bool | None = None
        ever_healthy, failures = False, 0
        while not self.stopping:
            result = self._check_or_stop()
            if result is None:
                return
            if result.healthy != healthy:
                level = INFO if result.healthy else WARNING
                state = "healthy" if result.healthy else "unhealthy"
                log.log(level, "%s is %s: %s", self.config.value, state, result.detail)
                healthy = result.healthy
            if result.healthy:
                ever_healthy, failures = True, 0
                delay = self.config.interval if registrar.ensure() else ETCD_RETRY
            else:
                failures += 1
                registrar.withdraw()
                delay = (
                    exponential(failures - 1, initial=self.fast_retry, cap=self.config.interval)
                    if ever_healthy
                    else self.fast_retry
                )
            self._sleep(delay)

    def _check_or_stop(self) -> CheckResult | None:
        if self.stopping:
            return None
        self._in_check = True
        try:
            return run_check(self.config.check, self.config.host, self.config.port)
        except _Stopped:
            return None
        finally:
            self._in_check = False

    def _sleep(self, delay: float) -> None:
        """Until ``delay`` passes, a signal arrives or the keeper lost the lease."""
        if self.stopping:
            return
        ready, _, _ = select.select([self._wake_r], [], [], delay)
        if ready:
            os.read(self._wake_r, 4096)

    def _final_withdraw(self, registrar: Registrar) -> None:
        """Deregister on the way out with short timeouts; the lease covers anything left."""
        quick = self.settings._replace(
            dial_timeout=min(self.settings.dial_timeout, CLEANUP_TIMEOUT),
            command_timeout=min(self.settings.command_timeout, CLEANUP_TIMEOUT),
        )
        registrar.gateway.close()
        registrar.gateway = Gateway(quick)
        try:
            registrar.withdraw()
        except FleetopError as exc:
            log.warning("could not deregister %s cleanly: %s", self.config.key, exc)
        finally:
            registrar.close()
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)


def _serve_over_grpc(settings: EtcdSettings, config: Config, args: argparse.Namespace) -> None:
    """The same registration through :mod:`fleetop.discovery.register` (asyncio and the gRPC client):
    for a client certificate with a CommonName, which etcd's gateway refuses."""
    import asyncio
    import logging

    from fleetop.discovery.checks import HealthCheck
    from fleetop.discovery.cli import serve
    from fleetop.discovery.register import RegisterConfig

    check = HealthCheck.from_flags(
        http=args.http, tcp=args.tcp, exec_=args.exec_, timeout=config.check.timeout
    )
    registration = RegisterConfig(config.key, config.host, config.port, check, config.interval, config.ttl)
    basic_config(logging.WARNING if log.level >= WARNING else logging.INFO)
    asyncio.run(serve(settings, registration))


def main(
    argv: Sequence[str] | None = None, inherited: Mapping[str, Any] | None = None, *, over_grpc: bool = False
) -> int:
    """``fleetop register ...``: exit 2 on bad input (before anything touches etcd), 1 when etcd refuses
    (permissions), 0 after a signal. ``inherited`` are the main CLI's flags given before the verb;
    ``over_grpc`` registers through the gRPC client from the start (``python -m fleetop.discovery.cli``)."""
    args = parser().parse_args(argv)
    try:
        config = build_config(args)
        settings = settings_from(etcd_flags(inherited or {}, args.endpoints, args.root), os.environ)
    except (InputError, ConfigError) as exc:
        print(f"fleetop register: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if over_grpc:
            _serve_over_grpc(settings, config, args)
            return 0
        try:
            Sidekick(settings, config).run()
        except GatewayRefusesCommonName as exc:
            log.warning("%s; registering through the gRPC client instead (about 60 MB more)", exc)
            _serve_over_grpc(settings, config, args)
    except FleetopError as exc:
        print(f"fleetop register: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InputError | ConfigError) else EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
