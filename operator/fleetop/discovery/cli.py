"""``fleetop register`` through the gRPC client: :func:`serve` runs :func:`run_register` until SIGTERM.

``fleetop register`` is the sidekick (:mod:`fleetop.discovery.sidekick`, standard library only); it
comes here only for a client certificate with a CommonName, which etcd's HTTP gateway refuses.
``python -m fleetop.discovery.cli`` takes the same flags (the sidekick's parser) and always registers
this way: the benchmarks compare the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from fleetop.config import EtcdSettings
from fleetop.discovery.register import ETCD_RETRY, RegisterConfig, run_register
from fleetop.errors import TemporaryError
from fleetop.etcd.client import Etcd

log = logging.getLogger("fleetop.discovery.cli")


async def serve(settings: EtcdSettings, config: RegisterConfig) -> None:
    """Connect (retrying while etcd is unreachable) and register until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        log.info("using %s", settings.describe())
        while not stop.is_set():
            try:
                async with await Etcd.connect(settings) as etcd:
                    await run_register(etcd, config, stop=stop)
                return
            except TemporaryError as exc:
                log.warning("etcd unavailable, retrying: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ETCD_RETRY)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


if __name__ == "__main__":
    from fleetop.discovery import sidekick

    sys.exit(sidekick.main(over_grpc=True))
