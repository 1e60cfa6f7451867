"""``/healthz``, ``/readyz`` and ``/metrics`` of the operator, on a loopback address by default.

Liveness and readiness mean different things, as in Kubernetes: ``/healthz`` answers 200 whenever the
event loop is turning (a wedged loop cannot answer, which is what a supervisor should restart for);
``/readyz`` answers 200 only when the informers' caches have synced and etcd answered a read just now,
so a standby that is ready can take over at once. Neither depends on being the leader: followers are
healthy and ready too; the body says who leads.

The server is uvicorn driven from our own task (:class:`HealthServer.run`), with uvicorn's signal
capture switched off: SIGTERM belongs to the operator, which must resign leadership before it exits.
The listening socket is bound before serving, so ``port=0`` works and the bound port is known at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetop.controller.runtime.metrics import CONTENT_TYPE, OperatorMetrics

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
"""The operator's default metrics address (the port Prometheus exporters of this kind commonly use)."""

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``":9464"`` (loopback), ``"9464"`` → (host, port)."""
    value = text.strip()
    if value.isdigit():
        return DEFAULT_HOST, int(value)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {text!r} must be host:port")
    host = host.strip("[]") or DEFAULT_HOST
    return host, int(port)


@dataclass
class HealthApp:
    """The ASGI app. ``ready`` reports (ready, details); ``leader`` names the current leader."""

    metrics: OperatorMetrics
    ready: ReadyCheck
    describe: Callable[[], dict[str, object]] = dict

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
                Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET", "HEAD"]),
            ]
        )

    async def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "ok", **self.describe()})

    async def readyz(self, request: Request) -> Response:
        try:
            ok, details = await self.ready()
        except Exception as exc:  # a readiness probe reports failures, it never raises them
            ok, details = False, {"error": str(exc) or type(exc).__name__}
        return _json(
            200 if ok else 503, {"status": "ready" if ok else "not ready", **details, **self.describe()}
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def _json(status: int, body: dict[str, object]) -> Response:
    return Response(
        json.dumps(body, sort_keys=True, default=str) + "\n", status, media_type="application/json"
    )


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the operator owns SIGTERM and SIGINT), and ticking once a
    second instead of ten times: a tick refreshes the Date header (once a second anyway) and looks for
    ``should_exit``, which :meth:`stop` sets and wakes it for. An idle operator is woken less."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    def stop(self) -> None:
        self.should_exit = True
        self._exit.set()

    async def main_loop(self) -> None:
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._exit.wait()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HealthServer:
    """Serves a :class:`HealthApp` until cancelled. ``port`` is the bound port once constructed."""

    def __init__(self, app: HealthApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            app.app(), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = _Server(config)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def run(self) -> None:
        """Serve until cancelled, then close the listener and open connections cleanly."""
        task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="health-server")
        log.info("serving /healthz /readyz /metrics on %s", self.url)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self._server.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            raise
        finally:
            self._sock.close()
