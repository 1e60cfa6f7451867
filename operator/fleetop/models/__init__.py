"""The public contract: specs people write into etcd, and the status and events fleetop writes back.

Field names are camelCase JSON exactly as users type them into ``etcdctl put``; unknown fields are
rejected. ``crds/*.schema.json`` are generated from these models (``fleetop schema --write``).

Each name is imported from its module when first asked for (PEP 562): pydantic builds a model's
validator when its class is created, and a verb that reads only services (``fleetop get services``)
should not pay for the proxy, status and event models too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetop.models.base import Duration, StrictModel
    from fleetop.models.events import Event
    from fleetop.models.parse import SPEC_KINDS, parse_proxy, parse_service, parse_spec, validation_errors
    from fleetop.models.proxy import Headers, ProxySpec, Route, Wait
    from fleetop.models.service import (
        Check,
        Discovery,
        Placement,
        Ports,
        Rollout,
        ServiceSpec,
        UnitOptionSpec,
        UnitSpec,
    )
    from fleetop.models.status import (
        AgentStatus,
        AvailableTemplate,
        Backend,
        Condition,
        ProxyStatus,
        PublishedConfig,
        ReplicaCounts,
        RestartStatus,
        RollbackStatus,
        ServiceStatus,
        UnitStatus,
    )

_MODULES = {
    "base": ("Duration", "StrictModel"),
    "events": ("Event",),
    "parse": ("SPEC_KINDS", "parse_proxy", "parse_service", "parse_spec", "validation_errors"),
    "proxy": ("Headers", "ProxySpec", "Route", "Wait"),
    "service": (
        "Check",
        "Discovery",
        "Placement",
        "Ports",
        "Rollout",
        "ServiceSpec",
        "UnitOptionSpec",
        "UnitSpec",
    ),
    "status": (
        "AgentStatus",
        "AvailableTemplate",
        "Backend",
        "Condition",
        "ProxyStatus",
        "PublishedConfig",
        "ReplicaCounts",
        "RestartStatus",
        "RollbackStatus",
        "ServiceStatus",
        "UnitStatus",
    ),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "SPEC_KINDS",
    "AgentStatus",
    "AvailableTemplate",
    "Backend",
    "Check",
    "Condition",
    "Discovery",
    "Duration",
    "Event",
    "Headers",
    "Placement",
    "Ports",
    "ProxySpec",
    "ProxyStatus",
    "PublishedConfig",
    "ReplicaCounts",
    "RestartStatus",
    "RollbackStatus",
    "Rollout",
    "Route",
    "ServiceSpec",
    "ServiceStatus",
    "StrictModel",
    "UnitOptionSpec",
    "UnitSpec",
    "UnitStatus",
    "Wait",
    "parse_proxy",
    "parse_service",
    "parse_spec",
    "validation_errors",
]


def __getattr__(name: str) -> Any:
    """``fleetop.models.<name>``: imported from its module on first use, then kept here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
