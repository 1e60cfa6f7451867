"""The ceilings on instances (pure) and the settings that set them and the batch size."""

from __future__ import annotations

from typing import Any

import pytest

from fleetop.controller.runtime.settings import OperatorSettings, WorkLimits
from fleetop.controller.services.limits import (
    CLUSTER_CEILING_REASON,
    SERVICE_CEILING_REASON,
    Demand,
    cluster_refusals,
    instances_of,
    service_refusal,
)
from fleetop.errors import ConfigError
from fleetop.models import ServiceSpec

LIMITS = WorkLimits(batch_size=10, max_instances_per_service=5, max_instances=10)


def service(replicas: int, **extra: Any) -> ServiceSpec:
    return ServiceSpec.model_validate({"replicas": replicas, "unit": {"execStart": "/bin/true"}, **extra})


@pytest.mark.parametrize(("replicas", "refused"), [(0, False), (5, False), (6, True), (10000, True)])
def test_per_service_ceiling(replicas: int, refused: bool) -> None:
    refusal = service_refusal(service(replicas), LIMITS)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert refusal.reason == SERVICE_CEILING_REASON
        assert f"replicas {replicas}" in refusal.message and "ceiling of 5" in refusal.message
        assert "--max-instances-per-service" in refusal.message


def test_a_global_service_is_one_unit() -> None:
    spec = service(50, placement={"global": True})
    assert instances_of(spec) == 1 and service_refusal(spec, LIMITS) is None


@pytest.mark.parametrize(
    ("demands", "refused"),
    [
        ([Demand("a", 1, 4, 4), Demand("b", 2, 5, 0)], set()),
        ([Demand("a", 1, 4, 4), Demand("b", 2, 7, 0)], {"b"}),
        # the spec changed last is refused, whichever is larger
        ([Demand("a", 3, 4, 0), Demand("b", 2, 7, 7)], {"a"}),
        # a refused service counts with what it already has
        ([Demand("a", 1, 4, 4), Demand("b", 2, 9, 5), Demand("c", 3, 2, 0)], {"b", "c"}),
        ([Demand("a", 1, 4, 4), Demand("b", 2, 9, 3), Demand("c", 3, 2, 0)], {"b"}),
        # asking for no more than it has is never refused (a scale-down cannot make things worse)
        ([Demand("a", 1, 9, 9), Demand("b", 2, 4, 6)], set()),
        ([], set()),
    ],
)
def test_cluster_ceiling_refuses_the_latest_change(demands: list[Demand], refused: set[str]) -> None:
    found = cluster_refusals(demands, LIMITS)
    assert set(found) == refused
    for refusal in found.values():
        assert refusal.reason == CLUSTER_CEILING_REASON
        assert "over the ceiling of 10" in refusal.message and "--max-instances" in refusal.message


def test_settings_from_flags_and_environment() -> None:
    defaults = OperatorSettings.from_flags({}, {"FLEETOP_PATH": "/bin/sh"})
    assert defaults.limits == WorkLimits()
    assert (defaults.proxies.render.timeout, defaults.proxies.render.max_bytes) == (5.0, 8 << 20)
    environ = {
        "FLEETOP_PATH": "/bin/sh",
        "FLEETOP_BATCH_SIZE": "7",
        "FLEETOP_MAX_INSTANCES": "99",
        "FLEETOP_RENDER_TIMEOUT": "2.5",
    }
    flags = {"max_instances_per_service": 3, "render_max_bytes": 65536}
    config = OperatorSettings.from_flags(flags, environ)
    assert config.limits == WorkLimits(batch_size=7, max_instances_per_service=3, max_instances=99)
    assert (config.proxies.render.timeout, config.proxies.render.max_bytes) == (2.5, 65536)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"batch_size": 0}, "--batch-size: 0 must be 1-10000"),
        ({"max_instances_per_service": "many"}, "--max-instances-per-service: 'many' is not a whole number"),
        ({"max_instances": -1}, "--max-instances: -1 must be"),
        ({"render_timeout": 0}, "--render-timeout"),
        ({"render_max_bytes": 10}, "--render-max-bytes: 10 must be 1024-"),
    ],
)
def test_bad_settings_are_refused(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OperatorSettings.from_flags(flags, {"FLEETOP_PATH": "/bin/sh"})
