"""The proxy reconciler's pure decisions: strict backends, the published hash, agents and the status."""

from __future__ import annotations

from ophelpers import FakeCache

from fleetop.controller.proxies.status import (
    AgentSummary,
    BackendCollector,
    ProxyView,
    RegistrationSource,
    build_status,
    describe_invalid,
    describe_unlaunched,
    invalid_status,
    published_hash,
    registration_names,
    summarize_agents,
)
from fleetop.controller.runtime.executor import same_json, status_bytes
from fleetop.controller.world import launched_instances
from fleetop.discovery.resolve import Resolution
from fleetop.models import AgentStatus, ProxySpec, PublishedConfig
from fleetop.models.networks import contains, parse_networks
from fleetop.proxy.backends import BackendSet, Destinations, collect_backends, network_rules

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
    assert same_json(status_bytes(first), status_bytes(again))  # nothing changed: nothing to write

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


def _resolution(name: str, *addresses: str) -> Resolution:
    error = None if addresses else f"host name {name} does not resolve: Name or service not known"
    return Resolution(name, tuple(addresses), error, expires=1e9, since=0.0)


LOOPBACK_ONLY = network_rules(("127.0.0.0/8", "::1/128"))


def test_names_are_resolved_and_an_unresolvable_one_is_skipped_with_the_others_kept() -> None:
    items = {
        "web": (
            "/services/web/",
            [
                ("/services/web/a", b"127.0.0.2:8001"),
                ("/services/web/b", b"good.test:8002"),
                ("/services/web/x", b"no-such-host.invalid:80"),
            ],
        )
    }
    assert registration_names(items) == {"good.test", "no-such-host.invalid"}
    where = Destinations(
        {
            "good.test": _resolution("good.test", "127.0.0.3", "127.0.0.4"),
            "no-such-host.invalid": _resolution("no-such-host.invalid"),
        },
        {"web": LOOPBACK_ONLY},
    )
    found = collect_backends(items, None, where)
    assert [r.address for r in found.valid["web"]] == ["127.0.0.2:8001", "127.0.0.3:8002", "127.0.0.4:8002"]
    assert found.skipped_count == 1
    assert "/services/web/x (host name no-such-host.invalid does not resolve" in describe_invalid(found)


def test_addresses_outside_every_allowed_network_list_are_skipped() -> None:
    items = {
        "web": (
            "/services/web/",
            [
                ("/services/web/a", b"127.0.0.2:8001"),
                ("/services/web/b", b"127.0.1.2:8001"),
                ("/services/web/c", b"[::1]:8001"),
                ("/services/web/d", b"[::ffff:127.0.0.2]:8001"),
                ("/services/web/e", b"mixed.test:8002"),
            ],
        )
    }
    narrow = network_rules(("127.0.0.0/8", "::1/128"), ("127.0.0.0/24",))
    where = Destinations({"mixed.test": _resolution("mixed.test", "127.0.0.5", "127.0.9.9")}, {"web": narrow})
    found = collect_backends(items, None, where)
    kept = [r.address for r in found.valid["web"]]
    assert kept == ["127.0.0.2:8001", "[::ffff:7f00:2]:8001", "127.0.0.5:8002"]
    reasons = describe_invalid(found)
    assert found.invalid_count == 3
    assert "127.0.1.2:8001 is outside the allowed networks" in reasons
    assert "[::1]:8001 is outside" in reasons
    assert "127.0.9.9:8002 (mixed.test) is outside" in reasons


def test_the_default_allowed_networks_refuse_public_and_link_local_addresses() -> None:
    spec = ProxySpec.model_validate({"kind": "nginx", "listen": 8080})
    networks = parse_networks(spec.allowed_networks)
    for inside in ("10.1.2.3", "172.31.0.1", "192.168.1.1", "127.0.0.1", "::1", "fd00::5"):
        assert contains(networks, inside), inside
    for outside in ("8.8.8.8", "169.254.169.254", "172.32.0.1", "2001:db8::1", "fe80::1", "::ffff:8.8.8.8"):
        assert not contains(networks, outside), outside


def test_without_destinations_names_stay_as_they_are() -> None:
    found = collect_backends({"web": ("/services/web/", [("/services/web/b", b"good.test:8002")])})
    assert [r.address for r in found.valid["web"]] == ["good.test:8002"]


def test_an_agent_that_dropped_a_backend_serves_the_newest_config_and_degrades_the_proxy() -> None:
    dropped = "server 10.0.0.9:80 (line 30: host not found in upstream)"
    report = AgentStatus(machine="m1", applied_hash="h2", dropped_backends=[dropped])
    summary = summarize_agents([("m1", report.model_dump_json(by_alias=True).encode())], "h2")
    assert (summary.total, summary.on_newest) == (1, 1)
    assert summary.errors == [f"agent m1: applied without backend(s) {dropped}"]
    status = build_status(ProxyView(7, CONFIG, BackendSet(), summary, []), None, 1000.0)
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Available"] == ("True", "AgentsOnNewest")
    assert conditions["Degraded"] == ("True", "AgentFailed")


def _sources(caches: dict[str, FakeCache]) -> dict[str, tuple[str, RegistrationSource | None]]:
    return {name: (f"/services/{name}/", cache) for name, cache in caches.items()}


def _items(caches: dict[str, FakeCache]) -> dict[str, tuple[str, list[tuple[str, bytes]]]]:
    return {name: (f"/services/{name}/", sorted(cache.values.items())) for name, cache in caches.items()}


def _plain(backends: BackendSet) -> BackendSet:
    """``backends`` as :func:`collect_backends` gives them (lists; the server counts left to count)."""
    valid = {service: list(regs) for service, regs in backends.valid.items()}
    return BackendSet(valid, backends.invalid, backends.unlaunched)


def test_the_collector_reads_only_the_services_that_changed_and_gives_what_collect_backends_gives() -> None:
    caches = {
        "api": FakeCache({"/services/api/1": b"127.0.0.2:80", "/services/api/bad": b"nope"}),
        "web": FakeCache({"/services/web/1": b"127.0.0.3:80", "/services/web/2": b"good.test:81"}),
        "empty": FakeCache({}),
    }
    answers = {"good.test": _resolution("good.test", "127.0.0.4")}
    where = Destinations(answers, {name: LOOPBACK_ONLY for name in caches})
    launched = {"api": frozenset({"1"})}
    collector = BackendCollector()

    def both() -> tuple[BackendSet, BackendSet]:
        sources = _sources(caches)
        names = collector.names(sources)
        assert names == registration_names(_items(caches))
        found = collector.collect(sources, launched, where)
        expected = collect_backends(_items(caches), launched, where)
        assert found.server_counts() == expected.server_counts()
        assert all(type(regs) is tuple for regs in found.valid.values())  # shared, so never mutable
        return _plain(found), expected

    first, expected = both()
    assert first == expected and first.invalid_count == 1
    assert [c.reads for c in caches.values()] == [1, 1, 1]

    caches["empty"].write("/services/empty/1", b"127.0.0.5:80")  # 0 → 1
    found, expected = both()
    assert found == expected and [r.address for r in found.valid["empty"]] == ["127.0.0.5:80"]
    assert [c.reads for c in caches.values()] == [1, 1, 2]  # only the cache that moved is read

    launched = {"api": frozenset()}  # api's instance is no longer launched: collected again
    found, expected = both()
    assert found == expected and found.valid["api"] == [] and found.unlaunched_keys() == {"/services/api/1"}

    where = Destinations({"good.test": _resolution("good.test", "127.0.0.6")}, where.allowed)
    found, expected = both()  # a name's new answer
    assert found == expected and "127.0.0.6:81" in [r.address for r in found.valid["web"]]
    assert [c.reads for c in caches.values()] == [1, 1, 2]

    del caches["api"]  # a route removed
    found, expected = both()
    assert found == expected and "api" not in found.valid
