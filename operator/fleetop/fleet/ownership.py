"""The ``[X-Fleetop]`` ownership contract: how fleetop marks the units it writes, and reads the mark back.

Every unit fleetop writes carries an ``[X-Fleetop]`` section (``Service=``, ``Role=``, ``Template=``).
systemd ignores ``X-`` sections and fleet stores them as any other option, so the mark survives a round
trip through fleet unchanged (``fleet-observed.md`` §9). Ownership is decided by this section alone,
never by a unit's name: fleetop changes and destroys only units whose section names the service or
proxy being reconciled, in one of that kind's roles.

- ``Service=``: the service or proxy name the unit belongs to;
- ``Role=``: ``main`` and ``discovery`` for a service's instance and its sidekick, ``proxy`` and
  ``agent`` for a managed proxy's instance and its agent;
- ``Template=``: a short hash of the unit's options without this section and with the instance
  written as ``%i``, so every instance of one spec shares it and a changed spec is a new template.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from fleetop.fleet.units import UnitOption

OWNER_SECTION = "X-Fleetop"
ROLE_MAIN = "main"
ROLE_DISCOVERY = "discovery"
ROLE_PROXY = "proxy"
ROLE_AGENT = "agent"
SERVICE_ROLES = (ROLE_MAIN, ROLE_DISCOVERY)
PROXY_ROLES = (ROLE_PROXY, ROLE_AGENT)


class Owner(NamedTuple):
    """What a unit's ``[X-Fleetop]`` section says: ``(service, role, template)``."""

    service: str
    role: str
    template: str


def owned_by(options: Iterable[UnitOption]) -> Owner | None:
    """Read the ``[X-Fleetop]`` section; None when the unit has none (it is not fleetop's).

    A section without ``Service=`` is treated as not owned: fleetop never acts on a unit it cannot
    attribute to a service.
    """
    fields: dict[str, str] = {}
    for option in options:
        if option.section == OWNER_SECTION and option.name not in fields:
            fields[option.name] = option.value
    service = fields.get("Service", "")
    if not service:
        return None
    return Owner(service, fields.get("Role", ""), fields.get("Template", ""))


def owner_options(service: str, role: str, template: str) -> list[UnitOption]:
    """The ``[X-Fleetop]`` section of a unit of ``service`` in ``role`` with template ``template``."""
    return [
        UnitOption(OWNER_SECTION, "Service", service),
        UnitOption(OWNER_SECTION, "Role", role),
        UnitOption(OWNER_SECTION, "Template", template),
    ]
