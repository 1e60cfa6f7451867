"""Which nginx configs are proven without ``nginx -t``: only upstream server address literals changed."""

from __future__ import annotations

import pytest

from fleetop.discovery.addresses import Registration
from fleetop.models import ProxySpec
from fleetop.proxy.render import RenderPaths, render
from fleetop.proxy.serverdiff import servers_only_change

PATHS = RenderPaths("/var/lib/fleetop/proxies/edge")
SPEC = ProxySpec.model_validate(
    {
        "kind": "nginx",
        "listen": 8080,
        "headers": {"handler": True},
        "routes": [{"service": "web"}, {"service": "api", "host": "api.example.com"}],
    }
)


def conf(web: list[str], api: list[str], spec: ProxySpec = SPEC) -> str:
    def regs(service: str, addresses: list[str]) -> list[Registration]:
        out = []
        for i, address in enumerate(addresses):
            host, _, port = address.rpartition(":")
            out.append(Registration(f"/services/{service}/{i}", host.strip("[]"), int(port)))
        return out

    return render("edge", spec, {"web": regs("web", web), "api": regs("api", api)}, paths=PATHS).text


BASE = conf(["10.0.0.1:80", "10.0.0.2:80"], ["10.0.1.1:9000"])
MOVED = "    upstream svc_api {\n        server 1.2.3.4:80;\n    }\n"


@pytest.mark.parametrize(
    "new",
    [
        conf(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], ["10.0.1.1:9000"]),  # one added
        conf(["10.0.0.2:80"], ["10.0.1.1:9000"]),  # one removed
        conf(["10.0.0.9:8080"], ["[2001:db8::1]:9000", "10.0.1.2:9000"]),  # replaced, IPv6
        BASE,
    ],
)
def test_server_address_changes_are_proven(new: str) -> None:
    assert servers_only_change(BASE, new)


@pytest.mark.parametrize(
    ("new", "why"),
    [
        (conf(["10.0.0.1:80"], []), "an upstream emptied (its server block changes to 503 as well)"),
        (conf(["localhost:80"], ["10.0.1.1:9000"]), "a host name: nginx resolves it at load"),
        (conf(["10.0.0.1:80"], ["10.0.1.1:9000"], SPEC.model_copy(update={"listen": "8081"})), "directive"),
        (BASE.replace("server 10.0.0.1:80;", "server 10.0.0.1:80 weight=5;"), "a server with parameters"),
        (BASE.replace("server 10.0.0.1:80;", "server 10.0.0.1:0;"), "port out of range"),
        (BASE.replace("server 10.0.0.1:80;", "server 10.0.0.256:80;"), "not an address"),
        (BASE.replace("server 10.0.0.1:80;", "server 10.0.0.1:080;"), "leading zero"),
        (BASE.replace("server 10.0.0.1:80;", "server 010.0.0.1:80;"), "leading zero in the address"),
        (BASE.replace("server 10.0.0.1:80;", "server [fe80::1%eth0]:80;"), "an IPv6 zone"),
        (BASE.replace("server 10.0.0.1:80;", "server 10.0.0.1;"), "no port"),
        (BASE.replace("server 10.0.0.1:80;", "server unix:/run/app.sock;"), "a unix socket"),
        (BASE.replace("keepalive_timeout 65;", "keepalive_timeout 65;\n    include /etc/x.conf;"), "include"),
        (
            BASE.replace(
                "    upstream svc_api {", "    upstream svc_api {\n        server 1.2.3.4:80;\n    }\n"
            ),
            "moved",
        ),
    ],
)
def test_anything_else_needs_the_check(new: str, why: str) -> None:
    assert not servers_only_change(BASE, new), why


def test_a_server_line_outside_an_upstream_is_part_of_the_skeleton() -> None:
    old = "http {\n    server 10.0.0.1:80;\n}\n"
    new = "http {\n    server 10.0.0.2:80;\n}\n"
    assert not servers_only_change(old, new)
