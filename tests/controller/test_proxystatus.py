"""The proxy reconciler's pure decisions: strict backends, the published hash, agents and the status."""

from __future__ import annotations

from fleetop.controller.executor import same_status, status_bytes
from fleetop.controller.proxystatus import (
    AgentSummary,
    BackendSet,
    ProxyView,
    build_status,
    collect_backends,
    describe_invalid,
    describe_unlaunched,
    invalid_status,
    launched_instances,
    published_hash,
    summarize_agents,
)
from fleetop.models import AgentStatus, ProxySpec, PublishedConfig

SPEC = ProxySpec.model_validate({"kind": "nginx", "listen": 8080, "routes": [{"service": "web"}]})
CONFIG = PublishedConfig(hash="h2", generation=2, kind="nginx", body="...")


def test_backends_are_parsed_strictly_and_only_directly_under_the_prefix() -> None:
    found = collect_backends(
        {
            "web": (
                "/services/web/",
                [
                    ("/services/web/8001", b"10.0.0.1:8001"),
                    ("/services/web/8002", b'{"host": "10.0.0.2", "port": 8002}'),
                    ("/services/web/evil", b"1.2.3.4:80; } server {"),
                    ("/services/web/deep/x", b"10.0.0.9:1"),
                ],
            ),
            "api": ("/services/api/", []),
        }
    )
    assert [r.address for r in found.valid["web"]] == ["10.0.0.1:8001", "10.0.0.2:8002"]
    assert found.valid["api"] == []
    assert found.invalid_count == 1
    assert "/services/web/evil" in describe_invalid(found)


WEB = [
    ("/services/web/8001", b"10.0.0.1:8001"),
    ("/services/web/8002", b"10.0.0.2:8002"),
    ("/services/web/8006", b"10.0.0.6:8006"),
    ("/services/web/junk", b"not an address"),
]


def test_launched_instances_are_main_units_fleet_holds_as_launched() -> None:
    units = [
        ("web@8001.service", "launched"),
        ("web-discovery@8001.service", "launched"),
        ("web@8002.service", "loaded"),  # created but not (yet, or any more) to be launched
        ("web@8003.service", "launched"),
        ("webby@8004.service", "launched"),
        ("web@8005.timer", "launched"),
    ]
    assert launched_instances("web", units) == {"8001", "8003"}
    assert launched_instances("web", []) == frozenset()


def test_registrations_of_instances_the_operator_does_not_run_are_left_out() -> None:
    found = collect_backends({"web": ("/services/web/", WEB)}, {"web": frozenset({"8001", "8002"})})
    assert [r.address for r in found.valid["web"]] == ["10.0.0.1:8001", "10.0.0.2:8002"]
    assert [r.key for r in found.unlaunched["web"]] == ["/services/web/8006"]
    assert found.invalid_count == 1 and found.skipped_count == 2
    assert found.unlaunched_keys() == {"/services/web/8006"}
    message = describe_unlaunched(found)
    assert message.startswith(
        "1 registration(s) skipped: /services/web/8006 (instance 8006 is not a launched"
    )
    assert "/services/web/junk" in describe_invalid(found) and "8006" not in describe_invalid(found)


def test_a_sidekick_service_with_no_launched_unit_has_no_backend() -> None:
    found = collect_backends({"web": ("/services/web/", WEB)}, {"web": frozenset()})
    assert found.valid["web"] == [] and found.skipped_count == 4


def test_services_without_a_sidekick_are_trusted_as_they_register() -> None:
    items = {
        "web": ("/services/web/", WEB),
        "api": ("/services/api/", [("/services/api/h:c:80", b"10.0.1.1:80")]),
    }
    found = collect_backends(items, {"web": frozenset({"8001"})})
    assert [r.address for r in found.valid["api"]] == ["10.0.1.1:80"]
    assert [r.address for r in found.valid["web"]] == ["10.0.0.1:8001"]
    trusted = collect_backends(items)
    assert len(trusted.valid["web"]) == 3 and not trusted.unlaunched


def test_the_status_counts_every_skipped_registration() -> None:
    found = collect_backends({"web": ("/services/web/", WEB)}, {"web": frozenset({"8001"})})
    status = build_status(ProxyView(7, CONFIG, found, AgentSummary(1, 1, []), []), None, 1000.0)
    assert status.backends == {"web": 1}
    assert status.skipped_registrations == 3


def test_published_hash_folds_in_commands_only_when_set() -> None:
    assert published_hash("abc", SPEC) == "abc"
    with_check = SPEC.model_copy(update={"check_cmd": ["/bin/false"]})
    assert published_hash("abc", with_check) not in ("abc", published_hash("abd", with_check))


def _agent(machine: str, applied: str, error: str | None = None) -> tuple[str, bytes]:
    report = AgentStatus(machine=machine, applied_hash=applied, error=error)
    return machine, report.model_dump_json(by_alias=True).encode()


def test_agents_on_newest_and_their_errors() -> None:
    summary = summarize_agents(
        [_agent("m1", "h2"), _agent("m2", "h1", "check failed: nginx: [emerg] x"), ("m3", b"junk")], "h2"
    )
    assert (summary.total, summary.on_newest) == (2, 1)
    assert summary.errors == ["agent m2: check failed: nginx: [emerg] x", "agent m3: unreadable status"]


def test_status_conditions_and_stable_transition_times() -> None:
    view = ProxyView(7, CONFIG, BackendSet(), AgentSummary(1, 1, []), [])
    first = build_status(view, None, 1000.0)
    assert (first.observed_generation, first.config_hash, first.generation) == (7, "h2", 2)
    assert [(c.type, c.status) for c in first.conditions] == [
        ("Published", "True"),
        ("Available", "True"),
        ("Degraded", "False"),
    ]
    again = build_status(view, first, 5000.0)
    assert same_status(status_bytes(first), again)  # nothing changed: nothing to write

    broken = ProxyView(
        8, CONFIG, BackendSet(), AgentSummary(1, 0, ["agent m1: check failed"]), [], "render failed: x"
    )
    status = build_status(broken, first, 6000.0)
    assert status.last_error == "render failed: x; agent m1: check failed"
    degraded = status.condition("Degraded")
    assert degraded is not None and (degraded.status, degraded.reason) == ("True", "RenderFailed")
    assert degraded.last_transition_time != first.conditions[2].last_transition_time


def test_invalid_spec_keeps_the_rest_of_the_status() -> None:
    base = build_status(ProxyView(7, CONFIG, BackendSet(), AgentSummary(0, 0, []), []), None, 1000.0)
    status = invalid_status(9, "routes.0.service: bad name", base, 2000.0)
    invalid = status.condition("Invalid")
    assert invalid is not None and invalid.status == "True" and "routes.0.service" in invalid.message
    assert (status.observed_generation, status.config_hash) == (9, "h2")
    assert invalid_status(9, "routes.0.service: bad name", status, 3000.0) == status
