"""Rendering: golden files byte for byte, every golden output accepted by the real nginx / HAProxy,
injection attempts kept out of the text, custom templates, errors, determinism and scale.

Regenerate the golden files with ``FLEETOP_REGEN_GOLDEN=1 pytest tests/proxy/test_render.py`` and
review the diff by eye.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetop.discovery.addresses import Registration, parse_registrations
from fleetop.errors import PermanentError, RenderError
from fleetop.models import ProxySpec
from fleetop.proxy.apply import find_binary
from fleetop.proxy.render import RenderPaths, render

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_RUNTIME = "/var/lib/fleetop/proxies/edge"
REGEN = os.environ.get("FLEETOP_REGEN_GOLDEN") == "1"


def regs(service: str, *values: str) -> list[Registration]:
    valid, invalid = parse_registrations(
        (f"/services/{service}/{i}", v.encode()) for i, v in enumerate(values)
    )
    assert not invalid
    return valid


CASES: dict[str, tuple[dict[str, Any], dict[str, list[Registration]]]] = {
    "basic": (
        {"listen": 8080, "headers": {"handler": True}, "routes": [{"service": "web"}]},
        {"web": regs("web", "127.0.0.1:8001", "127.0.0.1:8002")},
    ),
    "hosts-paths": (
        {
            "listen": "127.0.0.1:8080",
            "headers": {"handler": True},
            "routes": [
                {"service": "web", "host": "www.example.com"},
                {"service": "api", "host": "www.example.com", "path": "/api"},
                {"service": "api-v2", "host": "www.example.com", "path": "/api/v2"},
                {"service": "shop", "host": "*.shop.example"},
                {"service": "web", "path": "/static"},
                {"service": "api", "host": "api.example.com", "path": "/v1"},
            ],
        },
        {
            "web": regs("web", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.1:80"),
            "api": regs("api", "localhost:9000", "[::1]:9001"),
            "api-v2": regs("api-v2", "127.0.0.1:9100"),
            "shop": [],
        },
    ),
    "no-backends": (
        {"listen": 80, "routes": [{"service": "web"}, {"service": "admin", "host": "admin.example.com"}]},
        {},
    ),
    "ipv6": (
        {"listen": "[::1]:8443", "headers": {"handler": True}, "routes": [{"service": "web", "path": "/"}]},
        {"web": regs("web", "[::1]:8001", "[2001:db8::10]:80", "127.0.0.1:8002")},
    ),
    "no-routes": ({"listen": 8080}, {}),
}
KINDS = ["nginx", "haproxy"]


def render_case(kind: str, case: str, runtime: str = GOLDEN_RUNTIME) -> str:
    data, backends = CASES[case]
    spec = ProxySpec.model_validate({"kind": kind, **data})
    return render("edge", spec, backends, paths=RenderPaths(runtime)).text


def golden_path(kind: str, case: str) -> Path:
    return GOLDEN / f"{case}.{kind}.conf"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(kind: str, case: str) -> None:
    text = render_case(kind, case)
    path = golden_path(kind, case)
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.read_bytes() == text.encode()


def run_check(kind: str, conf: Path) -> subprocess.CompletedProcess[str]:
    if kind == "nginx":
        argv = [find_binary("nginx"), "-t", "-q", "-e", "stderr", "-p", str(conf.parent), "-c", str(conf)]
    else:
        argv = [find_binary("haproxy"), "-c", "-q", "-f", str(conf)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_output_passes_the_real_check(kind: str, case: str, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    text = render_case(kind, case, str(runtime))
    assert text == golden_path(kind, case).read_text().replace(GOLDEN_RUNTIME, str(runtime))
    conf = tmp_path / f"{kind}.conf"
    conf.write_text(text)
    result = run_check(kind, conf)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_config_fails_the_real_check(kind: str, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    conf = tmp_path / "broken.conf"
    conf.write_text(render_case(kind, "basic", str(tmp_path / "run")) + "\nbogus_directive on;\n")
    assert run_check(kind, conf).returncode != 0


INJECTIONS = [
    b"127.0.0.1:80; } server { listen 9999; location / { return 200 pwned; } } #",
    b"127.0.0.1:80;\nserver pwned.example:80",
    b"127.0.0.1:80 backup",
    b'"127.0.0.1:80"',
    b"127.0.0.1:80#pwned",
    b"$pwned:80",
    b'{"host": "pwned.example;", "port": 80}',
    b"::1:80",
]


@pytest.mark.parametrize("kind", KINDS)
def test_injection_attempts_never_reach_the_text(kind: str) -> None:
    items = [("/services/web/good", b"10.0.0.1:80")] + [
        (f"/services/web/bad{i}", value) for i, value in enumerate(INJECTIONS)
    ]
    valid, invalid = parse_registrations(items)
    assert len(invalid) == len(INJECTIONS)
    spec = ProxySpec.model_validate({"kind": kind, "listen": 8080, "routes": [{"service": "web"}]})
    text = render("edge", spec, {"web": valid}, paths=RenderPaths(GOLDEN_RUNTIME)).text
    assert "pwned" not in text and "9999" not in text and "backup" not in text
    assert "10.0.0.1:80" in text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("host", ["10.0.0.1;", "a b", "x}", "evil\nserver", "$x", "'q'", "a#b"])
def test_unvalidated_values_are_refused_by_the_last_line_of_defence(kind: str, host: str) -> None:
    spec = ProxySpec.model_validate({"kind": kind, "listen": 8080, "routes": [{"service": "web"}]})
    forged = Registration("/services/web/x", host, 80)  # built by hand, never parsed
    with pytest.raises(RenderError, match="refusing to print"):
        render("edge", spec, {"web": [forged]}, paths=RenderPaths(GOLDEN_RUNTIME))


@pytest.mark.parametrize("runtime", ["relative/dir", "/tmp/a b", "/tmp/x;y", "/tmp/../etc", ""])
def test_runtime_paths_are_validated(runtime: str) -> None:
    with pytest.raises(RenderError):
        RenderPaths(runtime)


def custom_spec(template: str) -> ProxySpec:
    return ProxySpec.model_validate(
        {
            "kind": "nginx",
            "listen": 8080,
            "template": template,
            "routes": [{"service": "web", "host": "www.example.com"}, {"service": "api", "path": "/api"}],
        }
    )


def test_custom_template_sees_the_same_context() -> None:
    # The environment trims the newline after a block tag (trim_blocks), as in the built-in templates.
    template = (
        "# {{ proxy }} {{ spec.kind }} {{ listen.port }} {{ paths.pid_file }}\n"
        "{% for s in services %}\n"
        "{{ s.name }} {{ s.upstream }}"
        "{% for b in s.backends %} {{ b.host }} {{ b.port }} {{ b.address }}{% endfor %}\n\n"
        "{% endfor %}\n"
        "{% for r in routes %}\n"
        "{{ r.service }} {{ r.host or '*' }} {{ r.path }}\n"
        "{% endfor %}\n"
    )
    backends = {"web": regs("web", "[::1]:80"), "api": regs("api", "10.0.0.1:81")}
    text = render("edge", custom_spec(template), backends, paths=RenderPaths("/run/p")).text
    assert text == (
        "# edge nginx 8080 /run/p/proxy.pid\n"
        "api svc_api 10.0.0.1 81 10.0.0.1:81\n"
        "web svc_web ::1 80 [::1]:80\n"
        "web www.example.com /\n"
        "api * /api\n"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for x in services %}", "syntax error at line 1"),
        ("{{ nope }}", "undefined"),
        ("{{ spec.nope }}", "undefined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ 'a;b' }}", "refusing"),
        ("{{ 'a b' | conf }}", "refusing"),
        ("{{ spec.__class__.__mro__ }}", "template"),
        ("{{ routes.append(1) }}", "template"),
        ("{{ none }}", "refusing"),
    ],
)
def test_custom_template_errors_are_render_errors(template: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        render("edge", custom_spec(template), {}, paths=RenderPaths("/run/p"))
    assert message in str(info.value)
    assert isinstance(info.value, PermanentError)  # the same template fails the same way: not retried


def test_rendering_is_deterministic_and_dedupes_addresses() -> None:
    spec = ProxySpec.model_validate({"kind": "haproxy", "listen": 80, "routes": [{"service": "web"}]})
    backends = regs("web", *[f"10.0.0.{i}:80" for i in range(1, 30)], "10.0.0.1:80")
    first = render("edge", spec, {"web": backends}, paths=RenderPaths(GOLDEN_RUNTIME))
    shuffled = list(backends)
    random.Random(7).shuffle(shuffled)
    second = render("edge", spec, {"web": shuffled}, paths=RenderPaths(GOLDEN_RUNTIME))
    assert first == second
    assert first.text.count("server 10.0.0.1:80 10.0.0.1:80") == 1
    assert len(first.hash) == 64


def big_inputs(
    kind: str, services: int, per_service: int
) -> tuple[ProxySpec, Mapping[str, Sequence[Registration]]]:
    routes = [{"service": f"svc-{i}", "host": f"svc-{i}.example.com"} for i in range(services)]
    spec = ProxySpec.model_validate(
        {"kind": kind, "listen": 8080, "routes": routes, "headers": {"handler": True}}
    )
    backends = {
        f"svc-{i}": [
            Registration(f"/services/svc-{i}/{j}", f"10.{i // 250}.{i % 250}.{j + 1}", 8000 + j)
            for j in range(per_service)
        ]
        for i in range(services)
    }
    return spec, backends


@pytest.mark.parametrize("kind", KINDS)
def test_render_scales_linearly(kind: str, tmp_path: Path) -> None:
    spec, backends = big_inputs(kind, 1000, 10)
    paths = RenderPaths(str(tmp_path))
    render("edge", spec, backends, paths=paths)  # warm the template cache
    started = time.perf_counter()
    rendered = render("edge", spec, backends, paths=paths)
    elapsed = time.perf_counter() - started
    print(
        f"\n{kind}: rendered 1000 services x 10 backends in {elapsed * 1000:.1f} ms "
        f"({len(rendered.text) // 1024} KiB)"
    )
    assert rendered.text.count("server 10.") == 10_000
    conf = tmp_path / "big.conf"
    conf.write_text(rendered.text)
    result = run_check(kind, conf)
    assert result.returncode == 0, result.stderr


def test_rendered_config_is_published_with_the_spec_commands() -> None:
    spec = ProxySpec.model_validate(
        {
            "kind": "nginx",
            "listen": 80,
            "checkCmd": "nginx -t -c {config}",
            "reloadCmd": ["nginx", "-s", "reload"],
            "configPath": "/etc/nginx/nginx.conf",
        }
    )
    rendered = render("edge", spec, {}, paths=RenderPaths(GOLDEN_RUNTIME))
    published = rendered.published(spec, generation=4)
    assert (published.hash, published.body, published.generation, published.kind) == (
        rendered.hash, rendered.text, 4, "nginx"
    )  # fmt: skip
    assert published.check_cmd == "nginx -t -c {config}"
    assert published.reload_cmd == ["nginx", "-s", "reload"]
    assert published.config_path == "/etc/nginx/nginx.conf"
