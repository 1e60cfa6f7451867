"""The proxy side's caches: published configs, proxy status and the agents' reports.

The proxy reconciler decides from what is published (``/fleetop/proxies/<p>/config``: the current
generation and hash) and from what the agents report (``/status/agents/<p>/<machine>``), so
these prefixes are followed like every other informer (list, then watch; relist after compaction).
Only what the operator does not write itself enqueues a proxy: an agent's report, or a published
config changed or deleted by someone else. The operator's own status writes enqueue nothing, or a
status write would trigger its own reconcile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fleetop.etcd.client import Etcd, KeyValue
from fleetop.keys import Keys, child
from fleetop.prefixes import PrefixCache, follow


class ProxyCaches:
    """Followers keep these warm as well, so a new leader knows the published generations at once."""

    def __init__(self, etcd: Etcd, keys: Keys, enqueue: Callable[[str], None]) -> None:
        self.keys = keys
        self.enqueue = enqueue
        self.statuses = PrefixCache(etcd, keys.status("proxies"), self._status_changed)
        self.configs = PrefixCache(etcd, keys.proxy_configs(), self._config_changed)
        self.reports = PrefixCache(etcd, keys.agent_statuses(), self._report_changed)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for cache in (self.statuses, self.configs, self.reports):
                group.create_task(follow(cache), name=f"informer {cache.prefix}")

    @property
    def synced(self) -> bool:
        return all(c.synced.is_set() for c in (self.statuses, self.configs, self.reports))

    def published(self, proxy: str) -> KeyValue | None:
        return self.configs.get(self.keys.proxy_config(proxy))

    def status(self, proxy: str) -> KeyValue | None:
        return self.statuses.get(self.keys.status("proxies", proxy))

    def agents(self, proxy: str) -> list[tuple[str, bytes]]:
        """``[(machine, AgentStatus JSON)]`` of the agents reporting on ``proxy``."""
        prefix = self.keys.agent_status(proxy, "")
        found = ((child(kv.key, prefix), kv.value) for kv in self.reports.under(prefix))
        return [(machine, value) for machine, value in found if machine is not None]

    def known_keys(self) -> set[str]:
        """Proxies with a published config or a status: a deleted proxy's leftovers get cleaned up."""
        names = {self._config_owner(k) for k in self.configs.items}
        names |= {self.keys.name_of(k, "proxies", "status") for k in self.statuses.items}
        return {f"proxies/{name}" for name in names if name}

    def _config_owner(self, key: str) -> str | None:
        rest = key.removeprefix(self.keys.proxy_configs())
        name, _, tail = rest.partition("/")
        return name if key != rest and name and tail == "config" else None

    def _status_changed(self, changed: set[str]) -> None:
        """The operator's own writes (proxy status): nothing to do."""

    def _report_changed(self, changed: set[str]) -> None:
        base = self.keys.agent_statuses()
        names = {key[len(base) :].partition("/")[0] for key in changed if key.startswith(base)}
        for name in sorted(n for n in names if n):
            self.enqueue(f"proxies/{name}")

    def _config_changed(self, changed: set[str]) -> None:
        for name in sorted({n for n in map(self._config_owner, changed) if n}):
            self.enqueue(f"proxies/{name}")
