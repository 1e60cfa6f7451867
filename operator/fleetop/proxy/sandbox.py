"""A spec's own template rendered in a worker process, with a time and a size limit.

Jinja's sandbox stops a custom ``template`` from reaching into the operator, but not from looping:
nested ``range`` loops can keep a render busy for minutes, and a render on the operator's event loop
stops everything else (lease renewals, ``/healthz``, every other service). A thread would not help:
pure-Python rendering holds the GIL most of the time, and a thread cannot be stopped. So custom
templates render in a separate process, which is killed when the render takes longer than
``timeout``; the output is produced in chunks and the render stops as soon as it passes
``max_bytes``; the worker's address space is capped so a template that builds huge values fails with
MemoryError instead of pushing the machine into swap. Each of these ends in :class:`RenderError`,
which the proxy reconciler reports as ``RenderFailed`` like any broken template, while the event loop
only waited.

Built-in templates are trusted and linear in the number of backends (10,000 backends in tens of
milliseconds), so they stay in-process (:func:`fleetop.proxy.render.render`).

Workers are fresh interpreters (never a fork of an operator with threads and open connections) that
get none of the operator's credentials, kept warm between renders (compiled templates stay cached in
them), at most ``workers`` at a time; they exit when their socket closes or their parent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetop.discovery.addresses import Registration
from fleetop.errors import RenderError, TemporaryError
from fleetop.models.proxy import ProxySpec
from fleetop.proxy.render import (
    Rendered,
    RenderPaths,
    build_context,
    checked,
    template_of,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
"""Seconds a new worker may take to start (a fresh interpreter importing Jinja and the models)."""
WORKER_MEMORY = 1 << 30
"""Bytes of address space a worker may add to what it holds after start-up."""
_Request = tuple[str, ProxySpec, Mapping[str, Sequence[Registration]], RenderPaths, int]
_Reply = tuple[str, str]
_READY = b"ready"
_REPLY_MARGIN = 1 << 16
"""A reply is JSON of the text: control characters take up to 6 bytes each, hence 6 x max_bytes + this."""


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on rendering one custom template (``fleetop run`` settings)."""

    timeout: float = 5.0
    """Seconds a render may take (``--render-timeout``)."""
    max_bytes: int = 8 << 20
    """Bytes a rendered config may have (``--render-max-bytes``)."""
    workers: int = 2
    """Custom templates rendered at the same time, each in its own process."""


def render_limited(
    proxy_name: str,
    spec: ProxySpec,
    backends: Mapping[str, Sequence[Registration]],
    *,
    paths: RenderPaths,
    max_bytes: int,
) -> Rendered:
    """:func:`fleetop.proxy.render.render`, stopping with RenderError once the text passes ``max_bytes``."""
    template = template_of(spec)
    context = build_context(proxy_name, spec, backends, paths)

    def generate() -> str:
        chunks: list[str] = []
        size = 0
        try:
            for chunk in template.generate(context):
                size += len(chunk.encode("utf-8"))
                if size > max_bytes:
                    limit = f"{max_bytes} bytes (fleetop run --render-max-bytes)"
                    raise RenderError(f"the rendered config is larger than {limit}")
                chunks.append(chunk)
        except MemoryError:
            raise RenderError(
                f"template needs more than {WORKER_MEMORY >> 20} MiB of memory to render"
            ) from None
        return "".join(chunks)

    text = checked(generate)
    return Rendered(text=text, hash=hashlib.sha256(text.encode("utf-8")).hexdigest())


# -- the worker process --------------------------------------------------------------------------------
def worker_main(argv: Sequence[str]) -> None:
    """``python -m fleetop.proxy.sandbox FD``: serve render requests on the socket ``FD``."""
    _serve(multiprocessing.connection.Connection(int(argv[0])))


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """A worker's main loop: render each request, answer ("ok", text) or ("error", message)."""
    _cap_memory()
    _exit_with_parent()
    conn.send_bytes(_READY)
    while True:
        try:
            proxy, spec, backends, paths, max_bytes = conn.recv()
        except (EOFError, OSError):
            return
        try:
            rendered = render_limited(proxy, spec, backends, paths=paths, max_bytes=max_bytes)
            reply: _Reply = ("ok", rendered.text)
        except RenderError as exc:
            reply = ("error", str(exc))
        try:
            conn.send_bytes(json.dumps(reply, ensure_ascii=False).encode("utf-8"))
        except (OSError, ValueError):
            return


def _cap_memory() -> None:
    try:
        import resource

        with open("/proc/self/statm", encoding="ascii") as statm:
            used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        wanted = used + WORKER_MEMORY
        if hard == resource.RLIM_INFINITY or wanted < hard:
            resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ImportError, OSError, ValueError):
        pass  # no cap where the platform has none; the time limit still holds


def _exit_with_parent() -> None:
    """A worker whose operator died (killed with SIGKILL) exits within a second, even mid-render."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


class _Worker:
    """One worker process (``python -m fleetop.proxy.sandbox FD``) and the operator's end of its socket.

    Started as a new program rather than with ``multiprocessing``'s spawn, which would import the
    operator's main module again in the worker. It gets only ``PATH`` and ``PYTHONPATH`` from the
    operator's environment: never the etcd credentials, whatever a template manages to do.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        environment = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetop.proxy.sandbox", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=environment,
            )
        finally:
            theirs.close()
        self.conn = multiprocessing.connection.Connection(ours.detach())

    def wait_ready(self, timeout: float) -> bool:
        try:
            return bool(self.conn.poll(timeout)) and self.conn.recv_bytes(len(_READY)) == _READY
        except (EOFError, OSError):
            return False

    def exchange(self, request: _Request, timeout: float) -> _Reply | None:
        """Send one request and wait for its reply; None when none came within ``timeout``.

        The reply is read as JSON text of bounded length, never unpickled: the worker runs untrusted
        templates, and what it sends back must not be able to run code in the operator."""
        try:
            self.conn.send(request)
            if not self.conn.poll(timeout):
                return None
            reply: Any = json.loads(self.conn.recv_bytes(6 * request[4] + _REPLY_MARGIN))
        except (EOFError, OSError, ValueError) as exc:
            return ("failed", f"the render worker failed ({type(exc).__name__})")
        if not (isinstance(reply, list) and len(reply) == 2 and all(isinstance(x, str) for x in reply)):
            return ("failed", "the render worker answered something else than a reply")
        return (reply[0], reply[1])

    def kill(self) -> None:
        """SIGKILL and reap. The pipe is left to be closed when the last reference goes: a thread may
        still be waiting on it, and wakes up at the worker's end of file."""
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5.0)


class RenderPool:
    """Renders custom templates in worker processes. ``close()`` stops every idle worker; a busy one
    is killed by the render that uses it when that render is cancelled."""

    def __init__(self, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self._idle: list[_Worker] = []
        self._slots = asyncio.Semaphore(self.limits.workers)
        self._closed = False
        self.started = 0
        """Workers started so far (a timeout costs one)."""

    async def render(
        self,
        proxy_name: str,
        spec: ProxySpec,
        backends: Mapping[str, Sequence[Registration]],
        *,
        paths: RenderPaths,
    ) -> Rendered:
        """Render in a worker; RenderError when the template fails or passes a limit, TemporaryError
        when every worker is busy."""
        if self._slots.locked():
            # Waiting here would hold one of the operator's reconcile workers for up to a render's
            # time limit; the queue brings this key back instead.
            raise TemporaryError(f"all {self.limits.workers} template render workers are busy", delay=1.0)
        request: _Request = (proxy_name, spec, dict(backends), paths, self.limits.max_bytes)
        async with self._slots:
            worker = await self._worker()
            reply: _Reply | None = ("failed", "the render was cancelled")
            try:
                reply = await asyncio.to_thread(worker.exchange, request, self.limits.timeout)
            finally:
                if reply is not None and reply[0] in ("ok", "error") and not self._closed:
                    self._idle.append(worker)
                else:
                    worker.kill()
        if reply is None:
            log.warning(
                "proxy %s: template render passed %gs; worker killed", proxy_name, self.limits.timeout
            )
            raise RenderError(
                f"the template took longer than {self.limits.timeout:g}s to render and was stopped"
                " (fleetop run --render-timeout)"
            )
        status, body = reply
        if status != "ok":
            raise RenderError(body)
        return Rendered(text=body, hash=hashlib.sha256(body.encode("utf-8")).hexdigest())

    async def _worker(self) -> _Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.process.poll() is None:
                return worker
            worker.kill()
        worker = await asyncio.to_thread(_Worker)
        self.started += 1
        try:
            ready = await asyncio.to_thread(worker.wait_ready, START_TIMEOUT)
        except BaseException:
            worker.kill()
            raise
        if not ready:
            worker.kill()
            raise RenderError(f"the render worker did not start within {START_TIMEOUT:g}s")
        return worker

    def close(self) -> None:
        """Stop the idle workers (at shutdown)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


if __name__ == "__main__":
    worker_main(sys.argv[1:])
