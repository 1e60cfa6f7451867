"""The HAProxy server model and runtime diff: pure, no processes. Configs come from the real renderer."""

from __future__ import annotations

from typing import Any

import pytest

from fleetop.discovery.addresses import Registration
from fleetop.models import ProxySpec
from fleetop.proxy.haproxy_runtime import admin_socket_of
from fleetop.proxy.haproxy_servers import (
    Command,
    LiveServer,
    Server,
    mismatch,
    parse_config,
    parse_section,
    parse_servers_state,
    plan_commands,
    runtime_change,
)
from fleetop.proxy.render import RenderPaths, render

PATHS = RenderPaths("/run/edge")


def reg(address: str) -> Registration:
    host, _, port = address.rpartition(":")
    return Registration(f"/services/x/{address}", host.strip("[]"), int(port))


def body(services: dict[str, list[str]], **spec: Any) -> str:
    doc = {"kind": "haproxy", "listen": 8080, "headers": {"handler": True}}
    doc["routes"] = [{"service": name, "path": f"/{name}"} for name in services]
    doc.update(spec)
    backends = {name: [reg(a) for a in addresses] for name, addresses in services.items()}
    return render("edge", ProxySpec.model_validate(doc), backends, paths=PATHS).text


def test_a_rendered_config_splits_into_sections_skeleton_and_servers() -> None:
    config = parse_config(body({"web": ["10.0.0.1:80", "10.0.0.2:80"], "api": ["[2001:db8::1]:81"]}))
    assert [(s.keyword, s.name) for s in config.sections] == [
        ("", ""),  # the heading comments
        ("global", ""),
        ("defaults", ""),
        ("frontend", "http_proxy"),
        ("backend", "svc_api"),
        ("backend", "svc_web"),
        ("backend", "fleetop_not_found"),
    ]
    servers = config.servers()
    assert servers["svc_web"] == {
        "10.0.0.1:80": Server("10.0.0.1:80", "10.0.0.1", 80),
        "10.0.0.2:80": Server("10.0.0.2:80", "10.0.0.2", 80),
    }
    assert servers["svc_api"] == {"2001:db8::1:81": Server("2001:db8::1:81", "2001:db8::1", 81)}
    assert servers["fleetop_not_found"] == {}
    web = parse_section(config.sections[5])
    assert web.static == "" and web.skeleton[0] == "backend svc_web"
    assert not any(line.startswith(("server ", "#")) for line in web.skeleton)


def test_only_the_changed_backend_is_reported() -> None:
    old = parse_config(body({"web": ["10.0.0.1:80"], "api": ["10.0.0.9:80"]}))
    new = parse_config(body({"web": ["10.0.0.1:80", "10.0.0.2:80"], "api": ["10.0.0.9:80"]}))
    change = runtime_change(old, new)
    assert change.reason == "" and set(change.backends) == {"svc_web"}
    assert set(change.backends["svc_web"]) == {"10.0.0.1:80", "10.0.0.2:80"}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"web": ["10.0.0.1:80"]}, {"web": ["10.0.0.1:80", "10.0.0.2:80"]}),  # added
        ({"web": ["10.0.0.1:80", "10.0.0.2:80"]}, {"web": ["10.0.0.2:80"]}),  # removed
        ({"web": []}, {"web": ["10.0.0.1:80"]}),  # first server of an empty backend
        ({"web": ["10.0.0.1:80"]}, {"web": []}),  # the last one goes
        ({"web": ["10.0.0.1:80"], "api": []}, {"web": [], "api": ["[::1]:9"]}),  # several backends
        ({"web": ["10.0.0.1:80"]}, {"web": ["10.0.0.1:80"]}),  # nothing
    ],
)
def test_server_only_changes_go_at_runtime(before: dict[str, list[str]], after: dict[str, list[str]]) -> None:
    assert runtime_change(parse_config(body(before)), parse_config(body(after))).reason == ""


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        (body({"web": ["10.0.0.1:80"], "api": []}), "sections were added"),  # a route / backend added
        (body({"web": ["10.0.0.1:80"]}, listen=8081), "frontend http_proxy changed beyond servers"),
        (body({"web": ["10.0.0.1:80"]}, headers={"handler": False}), "beyond servers"),  # an option
        (body({"web": ["db.internal:80"]}), "DNS name"),  # a runtime server would never resolve
    ],
)
def test_structural_changes_reload(after: str, reason: str) -> None:
    found = runtime_change(parse_config(body({"web": ["10.0.0.1:80"]})), parse_config(after))
    assert reason in found.reason and not found.backends


SKELETON = """global
    stats socket /run/a.sock mode 600 level admin
defaults
    mode http
{defaults}
backend b
{backend}
    server s1 10.0.0.1:80{opts}
"""


def custom(defaults: str = "", backend: str = "", opts: str = "", extra: str = "") -> str:
    return SKELETON.format(defaults=defaults, backend=backend, opts=opts) + extra


def test_a_custom_config_with_checks_adds_them_and_enables_health() -> None:
    old = parse_config(custom(opts=" check inter 2s"))
    new = parse_config(custom(opts=" check inter 2s", extra="    server s2 10.0.0.2:80 check inter 2s\n"))
    change = runtime_change(old, new)
    assert change.reason == ""
    plan = plan_commands(change.backends, {"b": {"s1": LiveServer("b", "s1", "10.0.0.1", 80, False)}})
    assert [c.text for c in plan.commands] == [
        "add server b/s2 10.0.0.2:80 check inter 2s",
        "enable health b/s2",
        "enable server b/s2",
    ]


GROWN = "    server s2 10.0.0.2:80\n"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (custom(backend="    balance source"), custom(backend="    balance source", extra=GROWN), "balances"),
        (custom(defaults=" balance static-rr"), custom(defaults=" balance static-rr", extra=GROWN), "balan"),
        (
            custom(defaults=" default-server check"),
            custom(defaults=" default-server check", extra=GROWN),
            "default-",
        ),
        (custom(opts=" cookie a"), custom(opts=" cookie a", extra=GROWN), "option 'cookie'"),
        (custom(opts=" weight"), custom(opts=" weight", extra=GROWN), "option 'weight'"),
        (custom(), custom(opts=" weight 5"), "changed its options"),
        (custom(), custom(extra="    server s;x 10.0.0.2:80\n"), "runtime API cannot take"),
        (custom(), custom(extra="    server s2 unix@/run/s.sock\n"), "plain host:port"),
        (custom(), custom(extra="    server s1 10.0.0.9:80\n"), "twice"),
    ],
)
def test_configs_whose_servers_cannot_change_at_runtime(old: str, new: str, reason: str) -> None:
    assert reason in runtime_change(parse_config(old), parse_config(new)).reason


def test_hash_balancing_is_dynamic_only_with_consistent_hashing() -> None:
    new = custom(backend="    balance source\n    hash-type consistent", extra="    server s2 10.0.0.2:80\n")
    old = custom(backend="    balance source\n    hash-type consistent")
    assert runtime_change(parse_config(old), parse_config(new)).reason == ""


def live(backend: str, name: str, addr: str, port: int, maint: bool = False) -> LiveServer:
    return LiveServer(backend, name, addr, port, maint)


def test_plan_adds_first_then_moves_then_drains() -> None:
    desired = {
        "b": {
            "keep": Server("keep", "10.0.0.1", 80),
            "new": Server("new", "2001:db8::2", 81),
            "moved": Server("moved", "10.0.0.3", 83),
            "back": Server("back", "10.0.0.4", 84),
        }
    }
    actual = {
        "b": {
            "keep": live("b", "keep", "10.0.0.1", 80),
            "moved": live("b", "moved", "10.0.0.9", 80),
            "back": live("b", "back", "10.0.0.4", 84, maint=True),  # was draining, wanted again
            "old": live("b", "old", "10.0.0.5", 85),
            "leaving": live("b", "leaving", "10.0.0.6", 86, maint=True),  # already draining
        }
    }
    plan = plan_commands(desired, actual)
    assert [c.text for c in plan.commands] == [
        "add server b/new [2001:db8::2]:81",
        "enable server b/new",
        "set server b/back state ready",
        "set server b/moved addr 10.0.0.3 port 83",
        "set server b/old state maint",
    ]
    assert plan.drain == {("b", "old"), ("b", "leaving")}


def test_a_converged_proxy_needs_no_command() -> None:
    desired = {"b": {"s": Server("s", "::1", 80)}, "empty": {}}
    plan = plan_commands(desired, {"b": {"s": live("b", "s", "0:0::1", 80)}})
    assert plan.commands == () and plan.drain == frozenset()


def test_mismatch_names_what_differs() -> None:
    desired = {"b": {"s": Server("s", "10.0.0.1", 80)}}
    assert mismatch(desired, {"b": {"s": live("b", "s", "10.0.0.1", 80)}}) == ""
    assert "missing" in mismatch(desired, {})
    assert "maintenance" in mismatch(desired, {"b": {"s": live("b", "s", "10.0.0.1", 80, maint=True)}})
    assert "not 10.0.0.1:80" in mismatch(desired, {"b": {"s": live("b", "s", "10.0.0.1", 81)}})
    extra = {"b": {"s": live("b", "s", "10.0.0.1", 80), "x": live("b", "x", "10.0.0.2", 80, maint=True)}}
    assert "b/x is in HAProxy but not in the config" in mismatch(desired, extra)
    assert mismatch(desired, extra, {("b", "x")}) == ""  # being drained, in maintenance


STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 svc_web 1 127.0.0.1:18601 127.0.0.1 2 0 1 1 3 1 0 2 0 0 0 0 - 18601 - 0 0 - - 0
3 svc_web 2 127.0.0.1:18602 127.0.0.1 0 1 1 1 1 1 0 0 0 0 0 0 - 18602 - 0 0 - - 0
3 svc_web 4 y - 0 1 1 1 1 1 0 0 0 0 0 0 localhost 18603 - 0 0 - - 0

"""  # noqa: E501 - HAProxy 2.6's own answer, verbatim


def test_show_servers_state_parses() -> None:
    found = parse_servers_state(STATE)
    assert found["svc_web"]["127.0.0.1:18601"] == live("svc_web", "127.0.0.1:18601", "127.0.0.1", 18601)
    assert found["svc_web"]["127.0.0.1:18602"].maint
    assert found["svc_web"]["y"].fqdn == "localhost" and found["svc_web"]["y"].at(
        Server("y", "localhost", 18603)
    )
    with pytest.raises(ValueError, match="not a 'show servers state' table"):
        parse_servers_state("Unknown command.\n")


def test_command_answers() -> None:
    add = Command("add server b/s 10.0.0.1:80", ("New server registered.",))
    assert add.succeeded("New server registered.\n\n")
    assert not add.succeeded("Backend must use a dynamic load balancing to support dynamic servers.\n")
    enable = Command("enable server b/s", ("",))
    assert enable.succeeded("\n") and not enable.succeeded("No such server.\n")


def test_the_admin_socket_is_read_from_the_config() -> None:
    assert str(admin_socket_of(body({"web": []}))) == "/run/edge/admin.sock"
    assert admin_socket_of("global\n    stats socket /run/x.sock mode 600 level user\n") is None
    assert admin_socket_of("global\n    stats socket ipv4@127.0.0.1:9999 level admin\n") is None


def test_comments_and_spacing_are_not_changes() -> None:
    old = parse_config(custom())
    new = parse_config(custom().replace("    mode http", "  # a note\n    mode   http"))
    assert runtime_change(old, new) == runtime_change(old, old)
    assert runtime_change(old, new).reason == "" and not runtime_change(old, new).backends
