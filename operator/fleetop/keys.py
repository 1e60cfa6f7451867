"""The etcd key layout (DESIGN.md §2), under an optional root prefix (``--prefix``).

Every key fleetop reads or writes is built here, so the layout is written down once.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Kind = Literal["services", "proxies"]


def normalize_prefix(prefix: str) -> str:
    """``""``, ``"/"`` → ``""``; ``"team-a"``, ``"/team-a/"`` → ``"/team-a"``."""
    stripped = prefix.strip().strip("/")
    return f"/{stripped}" if stripped else ""


class Keys(NamedTuple):
    """Key builder. ``root`` is ``""`` for the default layout or ``/something``. (A named tuple: the
    sidekick imports it, and ``dataclasses`` would cost it a megabyte.)"""

    root: str = ""

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(normalize_prefix(prefix))

    def desired(self, kind: Kind, name: str = "") -> str:
        return f"{self.root}/desired/{kind}/{name}"

    def status(self, kind: Kind, name: str = "") -> str:
        return f"{self.root}/status/{kind}/{name}"

    def agent_status(self, proxy: str, machine: str = "") -> str:
        return f"{self.root}/status/proxies/{proxy}/agents/{machine}"

    def registrations(self, spec_prefix: str) -> str:
        """A discovery prefix from a spec (``/services/web``) as a key prefix ending in ``/``."""
        return f"{self.root}{spec_prefix.rstrip('/')}/"

    def default_registrations(self, service: str) -> str:
        return self.registrations(f"/services/{service}")

    def leader(self) -> str:
        return f"{self.root}/fleetop/leader"

    def observed(self) -> str:
        """The leader's account of how fresh its view is (``fleetop status`` reads it)."""
        return f"{self.root}/fleetop/observed"

    def events(self, name: str = "") -> str:
        return f"{self.root}/fleetop/events/{name}/" if name else f"{self.root}/fleetop/events/"

    def proxy_config(self, proxy: str) -> str:
        return f"{self.root}/fleetop/proxies/{proxy}/config"

    def proxy_configs(self) -> str:
        return f"{self.root}/fleetop/proxies/"

    def name_of(self, key: str, kind: Kind, where: Literal["desired", "status"] = "desired") -> str | None:
        """The object name in ``/desired/services/<name>``, None for keys below it or elsewhere."""
        base = self.desired(kind) if where == "desired" else self.status(kind)
        if not key.startswith(base):
            return None
        rest = key[len(base) :]
        return rest if rest and "/" not in rest else None
