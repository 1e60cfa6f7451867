"""The public contract: specs people write into etcd, and the status and events fleetop writes back.

Field names are camelCase JSON exactly as users type them into ``etcdctl put``; unknown fields are
rejected. ``crds/*.schema.json`` are generated from these models (``fleetop schema --write``).
"""

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
