"""What every CLI command shares: the etcd connection options, running a coroutine, and turning the
error tree into a message and an exit code (kubectl's: 1 for errors). The etcd client is imported
when a command opens the store, not with this module (every command imports it); the verbs that only
read (``get``, ``describe``, ``diff``, ``status``) open :func:`open_reader`, which reads through etcd's
HTTP/JSON gateway and imports no grpc. ``get`` and ``describe`` run without an event loop (:func:`run`,
``event_loop=False``) and import no asyncio either."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fleetop.config import EtcdSettings, settings_from
from fleetop.errors import (
    Conflict,
    EtcdDenied,
    FleetopError,
    InputError,
    NotFound,
    SpecInvalid,
    TemporaryError,
)

if TYPE_CHECKING:
    import typer

    from fleetop.store import KeyReads, Store, StoreReader

T = TypeVar("T")


@dataclass
class CliContext:
    """Connection flags given before the verb (``fleetop --endpoints ... get services``)."""

    flags: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> EtcdSettings:
        return settings_from(self.flags, os.environ)


def cli_context(ctx: typer.Context) -> CliContext:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliContext) else CliContext()


@asynccontextmanager
async def open_store(cli: CliContext) -> AsyncIterator[Store]:
    from fleetop.etcd.client import Etcd  # the gRPC client: imported by the verbs that use it, when they run
    from fleetop.keys import Keys
    from fleetop.store import Store

    async with await Etcd.connect(cli.settings()) as etcd:
        yield Store(etcd, Keys())


class NeedsEventLoop(Exception):
    """A coroutine run without an event loop (:func:`run`) needs one after all: run it again in one."""


def in_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (never when asyncio was not even imported)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@asynccontextmanager
async def open_reads(cli: CliContext) -> AsyncIterator[KeyReads]:
    """Reads of keys, through etcd's HTTP/JSON gateway (:mod:`fleetop.etcd.readonly`): same answers and
    errors as the gRPC client, without importing grpc (nor, here, the store and its models). etcd's
    gateway refuses a client certificate with a CommonName; with one, it reads through the gRPC
    client instead. Outside an event loop (:func:`run` with ``event_loop=False``) each read blocks
    until answered; the gRPC client needs a loop (:class:`NeedsEventLoop`)."""
    from fleetop.etcd.gateway import GatewayRefusesCommonName
    from fleetop.etcd.readonly import ReadOnlyEtcd

    settings = cli.settings()
    blocking = not in_event_loop()
    try:
        reads = await ReadOnlyEtcd.connect(settings, blocking=blocking)
    except GatewayRefusesCommonName:
        if blocking:
            raise NeedsEventLoop("the gRPC client") from None
        from fleetop.etcd.client import Etcd

        async with await Etcd.connect(settings) as etcd:
            yield etcd
        return
    async with reads:
        yield reads


@asynccontextmanager
async def open_reader(cli: CliContext) -> AsyncIterator[StoreReader]:
    """A store that only reads (:func:`open_reads`): same answers and errors as :func:`open_store`."""
    from fleetop.keys import Keys
    from fleetop.store import StoreReader

    async with open_reads(cli) as reads:
        yield StoreReader(reads, Keys())


def error_text(exc: FleetopError) -> str:
    if isinstance(exc, SpecInvalid):
        lines = [f"error: {exc.where}: invalid spec" if exc.where else "error: invalid spec"]
        lines += [f"  {line}" for line in exc.all_messages()]
        return "\n".join(lines)
    if isinstance(exc, InputError):
        return f"error: {exc.describe()}"
    if isinstance(exc, NotFound):
        return f"Error from server (NotFound): {exc}"
    if isinstance(exc, Conflict):
        return f"Error from server (Conflict): {exc}; read it again and retry"
    if isinstance(exc, EtcdDenied):
        return f"Error from server (Forbidden): {exc}"
    if isinstance(exc, TemporaryError):
        return f"error: {exc} (is etcd running? check --endpoints / ETCDCTL_ENDPOINTS)"
    return f"error: {exc}"


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without an event loop: each of its awaits completes at
    once (reads from :func:`open_reads` outside a loop). Anything that needs a loop fails loudly."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a coroutine run without an event loop waited for one")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]], *, error_code: int = 1, event_loop: bool = True) -> T:
    """Run the command's coroutine; errors of the tree become a message on stderr and ``error_code``
    (``SystemExit``, which typer passes on as it is: the read verbs also run without typer).

    ``event_loop=False`` is for a coroutine that only reads through :func:`open_reads` and does not
    run tasks side by side (``get``, ``describe``): it runs without an event loop, so asyncio (a third
    of a light ``get``'s start-up) is never imported; should its reads need the gRPC client after all
    (:class:`NeedsEventLoop`, raised before anything was read), it runs again in a loop."""
    try:
        if not event_loop:
            try:
                return run_to_completion(coro_fn())
            except NeedsEventLoop:
                pass
        import asyncio

        return asyncio.run(coro_fn())
    except FleetopError as exc:
        print(error_text(exc), file=sys.stderr)
        raise SystemExit(error_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
