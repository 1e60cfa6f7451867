"""Logging and signals around a :class:`~fleetop.controller.runtime.manager.Manager` process.

SIGTERM and SIGINT resign leadership at once (so a standby takes over within about a second) and then
shut the manager down; a second signal is ignored while the resignation is in flight. Logs are
human-readable lines by default, JSON lines with ``--log-format json``; settings are logged through
their ``describe()``, which never includes the password. The settings themselves are
:mod:`fleetop.controller.runtime.settings`; what runs is wired by :mod:`fleetop.controller.operator`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
import time
from typing import Any

from fleetop.controller.runtime.manager import Manager
from fleetop.controller.runtime.settings import LogFormat
from fleetop.errors import FleetopError
from fleetop.logfmt import OneLineFormatter

log = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def setup_logging(log_format: LogFormat, level: str = "INFO") -> None:
    """Configure the root logger for a ``fleetop run`` process (stderr, one line per record)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn", "uvicorn.error", "httpx", "httpcore", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a task group's failure: the first FleetopError, else the first leaf."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return next((e for e in leaves if isinstance(e, FleetopError)), leaves[0] if leaves else group)


async def run_until_signalled(manager: Manager, *, handle_signals: bool = True) -> None:
    """Run ``manager`` until cancelled or until SIGTERM/SIGINT (which resign leadership first)."""
    # the start-up heap (modules, models, templates) lives as long as the process: keep it out of the
    # collector, whose full passes over it took 40-100 ms on a busy machine, in the middle of a render
    gc.freeze()
    loop = asyncio.get_running_loop()
    stopping = False

    def on_signal(signum: int) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        log.info("received %s: resigning and shutting down", signal.Signals(signum).name)
        manager.request_stop()

    installed: list[int] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, int(sig))
                installed.append(int(sig))
            except (NotImplementedError, RuntimeError):  # not the main thread
                break
    try:
        await manager.run()
    except BaseExceptionGroup as group:
        raise _first_error(group) from group
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
