"""How much work one key may cause: fleet writes per pass, and ceilings on instances. Pure.

Whoever can write ``/desired`` can ask for ``replicas: 10000``, which the schema allows; on a small
cluster that is tens of thousands of processes. Two defences, both settings of ``fleetop run``:

* a pass writes at most ``batch_size`` units to fleet and leaves the rest to the next pass, which
  plans again from a fresh read of the spec and of fleet: a delete or a scale-down arriving while a
  large creation is under way takes effect after at most one more batch, never after the whole plan;
* ceilings: a service may ask for at most ``max_instances_per_service`` instances, and all services
  together for at most ``max_instances``. A spec over a ceiling is refused as a whole (``Invalid``,
  reason naming the ceiling and the setting, a Warning event) and nothing changes in fleet for it:
  silently running fewer instances than declared would hide the problem.

The cluster-wide ceiling needs an order: the spec changed last is the one refused. Services are
admitted oldest change first (the desired key's ``mod_revision``); each admitted one counts with what
it asks for, each refused one with the instances it already has (they are left alone). A spec that
asks for no more than it already has is never refused by the cluster ceiling (a scale-down cannot make
things worse). A service is an instance count of ``replicas`` (a global service: one unit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleetop.controller.runtime.settings import WorkLimits
from fleetop.models.service import ServiceSpec

SERVICE_CEILING_REASON = "ServiceInstanceCeiling"
CLUSTER_CEILING_REASON = "ClusterInstanceCeiling"


@dataclass(frozen=True)
class Demand:
    """One service for the cluster-wide ceiling: what it asks for and what it has."""

    name: str
    revision: int
    """The desired key's ``mod_revision``: the later a spec changed, the later it is admitted."""
    wanted: int
    current: int
    """Main units fleet holds for it now."""


@dataclass(frozen=True)
class Refusal:
    """Why a service's spec is not carried out: the condition reason and the message."""

    reason: str
    message: str


def instances_of(spec: ServiceSpec) -> int:
    """The instances a spec declares (a global service is one unit, whatever ``replicas`` says)."""
    return min(spec.replicas, 1) if spec.placement.global_ else spec.replicas


def service_refusal(spec: ServiceSpec, limits: WorkLimits) -> Refusal | None:
    """The per-service ceiling."""
    wanted = instances_of(spec)
    if wanted <= limits.max_instances_per_service:
        return None
    return Refusal(
        SERVICE_CEILING_REASON,
        f"replicas {wanted} exceeds the ceiling of {limits.max_instances_per_service} instances per"
        " service (fleetop run --max-instances-per-service); nothing is changed for this service",
    )


def cluster_refusals(demands: Iterable[Demand], limits: WorkLimits) -> dict[str, Refusal]:
    """The services refused by the cluster-wide ceiling, by name (see the module docstring)."""
    total = 0
    refused: dict[str, Refusal] = {}
    for demand in sorted(demands, key=lambda d: (d.revision, d.name)):
        if demand.wanted <= demand.current or total + demand.wanted <= limits.max_instances:
            total += demand.wanted
            continue
        refused[demand.name] = Refusal(
            CLUSTER_CEILING_REASON,
            f"replicas {demand.wanted} would bring the cluster to {total + demand.wanted} instances,"
            f" over the ceiling of {limits.max_instances} (fleetop run --max-instances);"
            f" {max(0, limits.max_instances - total)} are left for this service, nothing is changed for it",
        )
        total += demand.current
    return refused
