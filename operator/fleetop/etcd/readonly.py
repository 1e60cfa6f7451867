"""The reads of :class:`fleetop.etcd.client.Etcd` (``get``, ``list``) over etcd's HTTP/JSON gateway.

``fleetop get``, ``describe``, ``diff`` and ``status`` only read, a handful of ranges each, and a person
waits for them at a prompt: importing grpc and etcd3aio and opening a channel costs more than the whole
job. This class answers the same calls with the same results (:class:`~fleetop.etcd.model.KeyValue`,
a listing at one revision read in pages, started over when compaction overtakes it) and the same
errors, through :class:`~fleetop.etcd.gateway.Gateway` (standard library only), so
:class:`~fleetop.store.StoreReader` reads through either. :meth:`connect` proves etcd answers within
``dial_timeout`` as :meth:`Etcd.connect <fleetop.etcd.client.Etcd.connect>` does, with its messages.

Each request runs in a worker thread, so a verb that gathers from fleet at the same time (``status``)
still waits for both at once. A verb that only reads etcd (``get``, ``describe``) makes the client
``blocking`` instead: each request runs where it is awaited and is answered before the await
returns, so the verb's coroutine never suspends and runs without an event loop
(:func:`fleetop.cli.common.run`): asyncio (with ssl, logging and concurrent.futures, about 0.03 s of
CPU) is not imported. etcd's gateway refuses a client certificate with a CommonName
(:class:`~fleetop.etcd.gateway.GatewayRefusesCommonName`, raised by :meth:`connect`): the caller then
reads through the gRPC client instead.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fleetop.config import EtcdSettings
from fleetop.errors import Compacted, EtcdDenied, EtcdUnavailable
from fleetop.etcd.gateway import Gateway
from fleetop.etcd.gateway import KeyValue as GatewayKeyValue
from fleetop.etcd.model import KeyValue, dial_failure

T = TypeVar("T")

DIAL_RETRY = 0.1
"""Seconds between attempts while :meth:`ReadOnlyEtcd.connect` waits for etcd (as the gRPC client)."""


def _key_value(kv: GatewayKeyValue) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


class ReadOnlyEtcd:
    """``get`` and ``list`` of one etcd cluster over the gateway. Create with :meth:`connect`;
    ``close()`` or ``async with``."""

    def __init__(self, settings: EtcdSettings, *, blocking: bool = False) -> None:
        self.settings = settings
        self.blocking = blocking
        self._gateway = Gateway(settings)

    @classmethod
    async def connect(cls, settings: EtcdSettings, *, blocking: bool = False) -> ReadOnlyEtcd:
        """Prove etcd answers (authenticating when a user is set) within ``dial_timeout``. Raises
        EtcdUnavailable, EtcdDenied, ConfigError or GatewayRefusesCommonName. ``blocking``: each
        request runs in the awaiting thread, not a worker (no event loop needed; see the module)."""
        etcd = cls(settings, blocking=blocking)
        try:
            await etcd._dial()
        except BaseException:
            etcd.close()
            raise
        return etcd

    async def _dial(self) -> None:
        deadline = time.monotonic() + self.settings.dial_timeout
        while True:
            try:
                await self._call(self._gateway.status)
                return
            except EtcdDenied as exc:
                if self.settings.user and "invalid user ID or password" in str(exc):
                    raise EtcdDenied(
                        f"etcd rejected the user name or password of {self.settings.user!r} (ETCDCTL_USER)"
                    ) from exc
                raise
            except EtcdUnavailable as exc:
                if time.monotonic() + DIAL_RETRY >= deadline:
                    settings = self.settings
                    raise dial_failure(
                        settings.endpoints,
                        settings.dial_timeout,
                        bool(settings.tls),
                        exc,
                        "connection closed",
                    ) from exc
                await self._sleep(DIAL_RETRY)

    def close(self) -> None:
        self._gateway.close()

    async def __aenter__(self) -> ReadOnlyEtcd:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    async def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` in a worker thread, or here when ``blocking``."""
        if self.blocking:
            return call(*args, **kwargs)
        import asyncio

        return await asyncio.to_thread(call, *args, **kwargs)

    async def _sleep(self, seconds: float) -> None:
        if self.blocking:  # no event loop runs in this thread (see the module)
            time.sleep(seconds)  # noqa: ASYNC251
            return
        import asyncio

        await asyncio.sleep(seconds)

    async def _run(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` (:meth:`_call`); errors name the operation, as the gRPC client's do."""
        try:
            return await self._call(call, *args, **kwargs)
        except EtcdUnavailable as exc:
            raise EtcdUnavailable(f"{what}: etcd unavailable: {exc}") from exc
        except EtcdDenied as exc:
            raise EtcdDenied(f"{what}: etcd denied the request: {exc}") from exc

    async def get(self, key: str) -> KeyValue | None:
        found = await self._run(f"get {key}", self._gateway.range_page, key, limit=1)
        return _key_value(found.items[0]) if found.items else None

    async def list(
        self, prefix: str = "", *, keys_only: bool = False, page_size: int = 1000
    ) -> tuple[builtins.list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, read in pages of ``page_size`` keys.
        Returns (items sorted by key, revision). Starts over if compaction overtakes the read.
        With ``keys_only`` the values are empty."""
        for _ in range(5):
            try:
                return await self._run(
                    f"list {prefix}", self._list_at_one_revision, prefix, keys_only, page_size
                )
            except Compacted:
                import logging  # not imported until needed: the read verbs log nothing

                log = logging.getLogger(__name__)
                log.info("list %s: revision compacted between pages, starting over", prefix)
        raise EtcdUnavailable(f"list {prefix}: compaction kept overtaking the read")

    def _list_at_one_revision(
        self, prefix: str, keys_only: bool, page_size: int
    ) -> tuple[builtins.list[KeyValue], int]:
        revision = 0
        start: bytes | None = None
        items: builtins.list[KeyValue] = []
        while True:
            page = self._gateway.range_page(
                prefix, prefix=True, limit=page_size, revision=revision, start=start, keys_only=keys_only
            )
            revision = revision or page.revision
            items.extend(_key_value(kv) for kv in page.items)
            if not page.more or not page.items:
                return items, revision
            last = page.items[-1].key
            start = self.settings.key_of(last).encode("utf-8", "surrogateescape") + b"\0"
