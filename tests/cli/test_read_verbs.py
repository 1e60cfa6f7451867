"""The read-only verbs read etcd through its HTTP/JSON gateway (``fleetop.etcd.readonly``): the same keys,
revisions and errors as the gRPC client, against a real etcd, plain and with TLS and users; a client
certificate with a CommonName (which the gateway refuses) still reads, through the gRPC client. Run
as a person runs them, they load neither grpc nor httpx (``status`` asks fleet over the standard
library), Jinja2 nor the operator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etcd_tls import SecureEtcd, secure_etcd_fixture  # noqa: F401
from fleetop.config import settings_from
from fleetop.errors import EtcdDenied, EtcdUnavailable
from fleetop.etcd.client import Etcd
from fleetop.etcd.gateway import Gateway
from fleetop.etcd.readonly import ReadOnlyEtcd
from fleetop.local.etcdserver import EtcdServer, free_port

SPEC = '{"replicas": 2, "unit": {"execStart": "/bin/true"}}'


async def test_gets_and_lists_match_the_grpc_client(etcd: Etcd) -> None:
    lease = await etcd.grant(60)
    for n in range(7):
        await etcd.put(f"/desired/services/web-{n}", f'{{"replicas": {n}}}')
    await etcd.put("/desired/services/web-3", "changed", lease=lease)  # a second version, on a lease
    await etcd.put("/desired/services/\udcff", "a key that is not UTF-8")
    await etcd.put("/desired/servicesX", "outside the prefix")
    async with await ReadOnlyEtcd.connect(etcd.settings) as reads:
        for page_size in (1000, 2, 1):
            listed = await reads.list("/desired/services/", page_size=page_size)
            assert listed == await etcd.list("/desired/services/")
        keys_only = await reads.list("/desired/services/", keys_only=True, page_size=3)
        assert keys_only == await etcd.list("/desired/services/", keys_only=True)
        assert [kv.key for kv in keys_only[0]][-1] == "/desired/services/\udcff"
        assert await reads.get("/desired/services/web-3") == await etcd.get("/desired/services/web-3")
        assert await reads.get("/desired/services/nothing") is None
        assert await reads.list("/nothing/") == ([], (await etcd.list("/nothing/"))[1])


async def test_an_unreachable_etcd_is_named_after_the_dial_timeout() -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = settings_from({"endpoints": dead, "dial_timeout": "0.3s"}, {})
    with pytest.raises(
        EtcdUnavailable, match=rf"cannot reach etcd at {dead} within 0.3 s: .*connection refused"
    ):
        await ReadOnlyEtcd.connect(settings)


async def test_users_and_client_certificates(secure_etcd: SecureEtcd) -> None:
    environ = secure_etcd.environ("root")
    environ["ETCDCTL_CERT"] = str(secure_etcd.files.anonymous_cert)
    environ["ETCDCTL_KEY"] = str(secure_etcd.files.anonymous_key)
    async with await ReadOnlyEtcd.connect(settings_from({}, environ)) as reads:
        assert (await reads.list("/"))[1] > 0
    secure_etcd.etcdctl_run("put", "/limited/x", "y", user="root")
    limited = dict(environ, ETCDCTL_USER=f"limited:{secure_etcd.limited_password}")
    async with await ReadOnlyEtcd.connect(settings_from({}, limited)) as reads:  # no admin needed
        assert [kv.value for kv in (await reads.list("/limited/"))[0]] == [b"y"]
        with pytest.raises(EtcdDenied, match="list /desired/: etcd denied the request"):
            await reads.list("/desired/")
    anonymous = {k: v for k, v in environ.items() if k != "ETCDCTL_USER"}
    async with await ReadOnlyEtcd.connect(settings_from({}, anonymous)) as reads:
        with pytest.raises(EtcdDenied, match=r"get /limited/x: etcd denied the request: .*permission denied"):
            await reads.get("/limited/x")  # as the gRPC client says it
    wrong = dict(environ, ETCDCTL_USER="root:not-the-password")
    with pytest.raises(EtcdDenied, match="rejected the user name or password of 'root'"):
        await ReadOnlyEtcd.connect(settings_from({}, wrong))


READ_VERB_HEAVY = (
    *("grpc", "etcd3aio", "jinja2", "httpx", "typer", "click", "rich"),
    *("fleetop.controller", "fleetop.node", "fleetop.proxy", "fleetop.cli.specs", "fleetop.cli.cluster"),
)
"""What ``get``, ``describe`` and ``status`` in their plain forms run without (typer, click and rich
included: :mod:`fleetop.cli.reads` parses them and lays their tables out itself)."""


def fleetop(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``fleetop ARGS`` in a fresh interpreter; stdout, then the modules it loaded on stderr's last line."""
    code = (
        "import json, sys\nfrom fleetop.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\nsys.exit(code)"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "FLEET"))}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def verb_env(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path) -> dict[str, str]:
    """The read verbs' environment: the test etcd under its prefix, fleet unreachable."""
    return {
        "ETCDCTL_ENDPOINTS": etcd_server.endpoint,
        "FLEETOP_PREFIX": etcd_prefix,
        "FLEETCTL_ENDPOINT": f"unix://{tmp_path / 'no-fleet.sock'}",
    }


def modules(done: subprocess.CompletedProcess[str]) -> set[str]:
    return set(json.loads(done.stderr.splitlines()[-1]))


def test_a_common_name_certificate_reads_through_grpc(secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    secure_etcd.etcdctl_run("put", "/limited/x", "y", user="root")
    with_name = secure_etcd.environ("root")  # its client certificate has a CommonName
    anonymous = dict(
        with_name,
        ETCDCTL_CERT=str(secure_etcd.files.anonymous_cert),
        ETCDCTL_KEY=str(secure_etcd.files.anonymous_key),
    )
    shown = {}
    no_fleet = {"FLEETCTL_ENDPOINT": f"unix://{tmp_path / 'no-fleet.sock'}"}
    for label, environ in (("gateway", anonymous), ("grpc", with_name)):
        done = fleetop({**environ, **no_fleet}, "get", "services")
        assert done.returncode == 0, done.stderr
        shown[label] = done.stdout
        assert ("grpc" in modules(done)) == (label == "grpc")
    assert shown["gateway"] == shown["grpc"] == "No resources found.\n"


def test_the_read_verbs_load_no_grpc(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path) -> None:
    env = verb_env(etcd_server, etcd_prefix, tmp_path)
    with Gateway(settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})) as gateway:
        gateway.put("/desired/services/web", SPEC)
    heavy = (*READ_VERB_HEAVY, "fleetop.etcd.client")
    for args, code, also in (
        (("get", "services"), 0, ("httpx",)),
        (("get", "services", "web", "-o", "json"), 0, ("httpx",)),
        (("describe", "service", "web"), 0, ("httpx",)),
        (("status",), 1, ("httpx",)),  # fleet unreachable: exit 1, etcd's part shown
    ):
        done = fleetop(env, *args)
        assert done.returncode == code, done.stderr
        assert "web" in done.stdout
        absent = (*heavy, *also)
        assert sorted(m for m in modules(done) if any(m == a or m.startswith(a + ".") for a in absent)) == []


def test_unjudged_service_specs_build_only_the_service_models(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """``get services`` of specs no operator has judged validates them with the models (one shows
    invalid), and builds the service models only: no proxy, status or event model, and no event loop
    (it reads etcd without one), nor logging. ``describe`` reads without an event loop too."""
    env = verb_env(etcd_server, etcd_prefix, tmp_path)
    with Gateway(settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})) as gateway:
        gateway.put("/desired/services/web", SPEC)
        gateway.put("/desired/services/bad", '{"replicas": "2"}')
    done = fleetop(env, "get", "services")
    assert done.returncode == 0, done.stderr
    assert "Invalid: $.replicas: Input should be a valid integer" in done.stdout
    assert "web   2        -      -           -        Pending" in done.stdout
    loaded = modules(done)
    assert "fleetop.models.service" in loaded
    absent = ("fleetop.models.proxy", "fleetop.models.status", "fleetop.models.events", "asyncio", "logging")
    assert sorted(m for m in loaded if any(m == a or m.startswith(a + ".") for a in absent)) == []
    described = fleetop(env, "describe", "service", "web")
    assert described.returncode == 0, described.stderr
    assert "web" in described.stdout
    assert sorted(m for m in modules(described) if m == "asyncio" or m.startswith("asyncio.")) == []


async def test_plaintext_to_a_tls_server_hints_at_https(secure_etcd: SecureEtcd) -> None:
    settings = settings_from({"endpoints": secure_etcd.server.endpoint, "dial_timeout": "1s"}, {})
    with pytest.raises(EtcdUnavailable, match="https://"):
        await ReadOnlyEtcd.connect(settings)


STATUS = {
    "observedGeneration": 2,
    "replicas": {"desired": 2, "launched": 2, "running": 2, "ready": 1, "updated": 2},
    "conditions": [
        {"type": "Available", "status": "True", "reason": "Ready", "lastTransitionTime": "2026-01-01T00:00Z"}
    ],
    "units": [{"name": "web@1.service", "machine": "abc", "desiredState": "launched", "ready": True}],
    "backends": [{"key": "/services/web/1", "address": "127.0.0.1:8001"}],
}  # fmt: skip
EVENT = {"name": "web", "reason": "Scaled", "message": "to 2", "time": "2026-01-01T00:00:01Z"}
JUDGED_EVENTS = (
    {"kind": "Service", "name": "judged", "type": "Warning", "reason": "BackOff", "message": "restarting",
     "time": "2026-01-01T00:00:09Z", "count": 3},
    {"kind": "Service", "name": "judged", "type": "Normal", "reason": "Created",
     "message": "judged@1.service", "time": "2026-01-01T00:00:02Z", "count": 1},
)  # fmt: skip
"""Events as the operator writes them (every field), out of time order in their keys."""
READ_FORMS = (
    ("get", "services"), ("get", "svc", "-o", "wide"), ("get", "services", "--output=json"),
    ("get", "services", "web", "-o", "yaml"), ("get", "proxies"), ("get", "px", "-o", "wide"),
    ("get", "services", "bad-type"), ("get", "services", "nothing"), ("get", "gadgets"),
    ("get", "services", "-o", "JSON"), ("get", "services", "--fleet-endpoint", "unix:///none", "web"),
    ("describe", "service", "web"), ("describe", "service", "bad-json"), ("describe", "service", "BadName"),
    ("describe", "proxy", "edge"), ("describe", "proxy", "bad-kind"), ("describe", "service", "nothing"),
    ("describe", "service"), ("status",), ("status", "-o", "text"), ("status", "--output", "html"),
    ("get", "services", "--help"), ("describe", "--help"), ("status", "--help"),
    ("get", "services", "judged"), ("get", "services", "older"), ("get", "services", "judged-invalid"),
    ("get", "services", "unreadable"), ("get", "services", "web"), ("get", "svc", "judged", "-o", "wide"),
    ("get", "services", "judged", "-o", "json"), ("describe", "service", "judged"), ("get", "svc", "fresh"),
    ("describe", "service", "older"), ("describe", "service", "fresh"),
    ("describe", "service", "judged-invalid"), ("describe", "service", "unreadable"),
    ("describe", "service", "stale-hash"), ("describe", "service", "not-normal"),
    ("describe", "service", "unicode"), ("describe", "svc", "web"), ("describe", "proxy", "edge-normal"),
    ("describe", "px", "edge-typed"), ("describe", "proxy", "edge-older"), ("describe", "proxy", "judged"),
    ("describe", "service", "edge-normal"), ("describe", "svc", "sparse-event"),
)  # fmt: skip
LIGHT_FORMS = {
    ("get", "services", "judged"),
    ("describe", "service", "judged"),
    ("describe", "service", "unicode"),
    ("describe", "proxy", "edge-normal"),
}
"""The forms above read without pydantic: the operator judged the spec shown at its revision (and, for
``describe``, the spec is stored in the models' normal form: its ``specHash``)."""


def operator_status(raw: str, name: str, revision: int) -> str:
    """The status the operator writes when it first judges ``raw`` at ``revision`` with fleet empty:
    its planner's status, stamped and encoded as its executor does."""
    from fleetop.controller.runtime.executor import status_bytes
    from fleetop.controller.services.memory import PlanMemory
    from fleetop.controller.services.planner import plan
    from fleetop.controller.world import FleetIndex
    from fleetop.models import parse_service
    from fleetop.timefmt import rfc3339

    judged = plan(name, parse_service(raw, name=name), revision, FleetIndex(), {}, 1767225600.0, PlanMemory())
    assert judged.status is not None
    return status_bytes(
        judged.status.model_copy(update={"observed_generation_time": rfc3339(1767225600.0)})
    ).decode()


def proxy_status(raw: str, name: str, revision: int) -> str:
    """The status the operator writes when it judges proxy ``raw`` at ``revision`` valid, before
    anything is published: its status builder's, encoded as its executor does."""
    from fleetop.controller.proxies.status import AgentSummary, ProxyView, build_status
    from fleetop.controller.runtime.executor import status_bytes
    from fleetop.models.parse import parse_proxy, spec_hash
    from fleetop.proxy.backends import BackendSet

    judged = spec_hash(parse_proxy(raw, name=name))
    view = ProxyView(revision, None, BackendSet(), AgentSummary(0, 0, []), [], spec_hash=judged)
    return status_bytes(build_status(view, None, 1767225600.0)).decode()


def judged_invalid(revision: int) -> str:
    """The status the operator writes for a spec the models refuse (its reconciler's form)."""
    from fleetop.controller.runtime.executor import status_bytes
    from fleetop.models import Condition, ServiceStatus

    condition = Condition(type="Invalid", status="True", reason="SpecInvalid", message="$.replicas: bad")
    status = ServiceStatus(observed_generation=revision, conditions=[condition], last_error="bad")
    return status_bytes(status).decode()


def put_judged(gateway: Gateway, name: str, raw: str, kind: str = "services") -> int:
    """Put a spec of ``kind`` (``services`` or ``proxies``) and the status the operator writes for it;
    its revision."""
    gateway.put(f"/desired/{kind}/{name}", raw)
    kv = gateway.get(f"/desired/{kind}/{name}")
    assert kv is not None
    judge = operator_status if kind == "services" else proxy_status
    gateway.put(f"/status/{kind}/{name}", judge(raw, name, kv.mod_revision))
    return kv.mod_revision


def put_judged_proxy(gateway: Gateway, name: str, raw: str) -> int:
    return put_judged(gateway, name, raw, "proxies")


def test_the_read_verbs_print_what_the_typer_app_prints(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """Run through :func:`fleetop.cli.main.main` (plain forms without typer; help, errors and bad values
    through it) and through the typer app, every form prints the same on both streams and exits alike:
    valid and invalid specs, a status, events, fleet unreachable. The typer app reads through the models;
    the plain forms read a spec the operator judged at its revision without them (:mod:`fleetop.cli.light`)
    and fall back to them for one judged at an older revision, one without a status, one judged
    invalid, and one whose status does not read. ``describe`` also reads without them a spec judged
    at its revision and stored in the models' normal form (its ``specHash``), a proxy's too, with its
    events, and falls back for one stored otherwise (fields in another order, a ``listen`` to
    normalise) or whose status names another document."""
    from typer.testing import CliRunner

    from fleetop.cli.main import app

    env = {**verb_env(etcd_server, etcd_prefix, tmp_path), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    with Gateway(settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})) as gateway:
        gateway.put("/desired/services/web", SPEC)  # revision-independent: STATUS judges another one
        gateway.put("/desired/services/bad-type", '{"replicas": "2", "unit": {"execStart": "/bin/true"}}')
        gateway.put("/desired/services/bad-json", '{"replicas": ')
        gateway.put("/desired/services/BadName", SPEC)
        edge = {"kind": "nginx", "listen": 8080, "routes": [{"service": "web"}]}
        gateway.put("/desired/proxies/edge", json.dumps(edge))
        gateway.put("/desired/proxies/bad-kind", '{"kind": "apache"}')
        gateway.put("/status/services/web", json.dumps(STATUS))
        gateway.put("/status/services/bad-type", '{"observedGeneration": "x"}')
        gateway.put("/fleetop/events/services/web/1", json.dumps(EVENT))
        gateway.put("/fleetop/events/services/judged/0", json.dumps({**EVENT, "name": "judged"}))  # before it
        put_judged(gateway, "judged", SPEC)
        for n, event in enumerate(JUDGED_EVENTS, start=1):
            gateway.put(f"/fleetop/events/services/judged/{n}", json.dumps(event))
        put_judged(gateway, "unicode", '{"replicas": 3, "unit": {"execStart": "/bin/echo é ✓ \\u00e8"}}')
        put_judged(gateway, "not-normal", '{"unit": {"execStart": "/bin/true"}, "replicas": 2}')  # order
        revision = put_judged(gateway, "stale-hash", SPEC)
        stale = json.loads(operator_status(SPEC, "stale-hash", revision))
        stale["specHash"] = stale["specHash"][::-1]  # judged another document
        gateway.put("/status/services/stale-hash", json.dumps(stale))
        edge_normal = '{"kind":"nginx","listen":"*:8080","routes":[{"service":"web"}],"wait":{"min":"500ms"}}'
        put_judged_proxy(gateway, "edge-normal", edge_normal)
        proxy_event = {**JUDGED_EVENTS[1], "kind": "Proxy", "name": "edge-normal", "reason": "Published"}
        gateway.put("/fleetop/events/proxies/edge-normal/1", json.dumps(proxy_event))
        put_judged(gateway, "sparse-event", SPEC)  # an event without the fields the models default
        gateway.put("/fleetop/events/services/sparse-event/1", json.dumps({**EVENT, "name": "sparse-event"}))
        put_judged_proxy(gateway, "edge-typed", json.dumps(edge))  # listen 8080 is "*:8080" normalised
        older = put_judged_proxy(gateway, "edge-older", edge_normal)
        gateway.put("/desired/proxies/edge-older", edge_normal.replace("8080", "8081"))
        gateway.put("/status/proxies/edge-older", proxy_status(edge_normal, "edge-older", older))
        gateway.put("/desired/services/fresh", SPEC)  # no status: no operator has judged it
        first = put_judged(gateway, "older", SPEC)
        gateway.put("/desired/services/older", SPEC.replace("2", "3"))  # a revision not judged yet
        gateway.put("/status/services/older", operator_status(SPEC, "older", first))
        gateway.put("/desired/services/judged-invalid", '{"replicas": -1}')
        kv = gateway.get("/desired/services/judged-invalid")
        assert kv is not None
        gateway.put("/status/services/judged-invalid", judged_invalid(kv.mod_revision))
        gateway.put("/desired/services/unreadable", SPEC)
        kv = gateway.get("/desired/services/unreadable")
        assert kv is not None
        gateway.put(
            "/status/services/unreadable", f'{{"observedGeneration": {kv.mod_revision}, "replicas": 1}}'
        )
    runner = CliRunner()
    shown_by_form: dict[tuple[str, ...], str] = {}
    for form in READ_FORMS:
        done = fleetop(env, *form)
        shown = runner.invoke(app, list(form), env=env)
        assert not shown.exception or isinstance(shown.exception, SystemExit), form
        assert (done.returncode, done.stdout) == (shown.exit_code, shown.stdout), form
        assert done.stderr.splitlines()[:-1] == shown.stderr.splitlines(), form
        to_typer = done.returncode == 2 or any(word in form for word in ("--help", "JSON", "html"))
        assert ("typer" in modules(done)) == to_typer, form
        if form in LIGHT_FORMS or (form[0] in ("get", "describe") and done.returncode == 0):
            assert ("pydantic" in modules(done)) != (form in LIGHT_FORMS), form
        shown_by_form[form] = done.stdout
    assert "Invalid: $.replicas: Input should be a valid integer" in fleetop(env, "get", "services").stdout
    judged = shown_by_form[("describe", "service", "judged")]
    assert judged.index("Created") < judged.index("BackOff") and "x3" in judged  # time order, counts
    assert judged.count("Scaled") == 0, "an event of an earlier spec of the name is not this one's"
    assert "é ✓ è" in shown_by_form[("describe", "service", "unicode")]
    assert "Scaled" in shown_by_form[("describe", "svc", "sparse-event")]
    assert "Published" in shown_by_form[("describe", "proxy", "edge-normal")]
    assert "listen: '*:8080'" in shown_by_form[("describe", "px", "edge-typed")]
    assert "Observed revision:    " in shown_by_form[("describe", "proxy", "edge-older")]
    assert "(spec is at" in shown_by_form[("describe", "proxy", "edge-older")]
    assert "UNREACHABLE" in fleetop(env, "status").stdout


def test_judged_specs_read_without_pydantic(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """Every spec judged at its revision: ``get services``, ``status`` and ``describe`` print what the
    models would (the typer app reads through them) without importing pydantic, nor typer, rich, grpc,
    httpx, Jinja2 or the operator (nor PyYAML, but for ``describe``); a spec no operator has judged is
    validated with the models, so it shows invalid while the operator is not running."""
    from typer.testing import CliRunner

    from fleetop.cli.main import app
    from fleetop.models.observed import FleetObservation, OperatorObservation

    env = {**verb_env(etcd_server, etcd_prefix, tmp_path), "COLUMNS": "200"}
    observed = OperatorObservation(
        identity="op-1",
        time="2026-01-01T00:00:00Z",
        heartbeat=0,
        fleet=FleetObservation(last_seen="2026-01-01T00:00:00Z"),
    )
    forms = (
        ("get", "services"),
        ("get", "svc", "api"),
        ("status",),
        ("status", "-o", "text"),
        ("get", "proxies"),
        ("describe", "service", "web"),
        ("describe", "proxy", "edge"),
    )
    runner = CliRunner()

    def compare(light: set[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
        shown = {}
        for form in forms:
            done = fleetop(env, *form)
            typer_shown = runner.invoke(app, list(form), env=env)
            assert (done.returncode, done.stdout) == (typer_shown.exit_code, typer_shown.stdout), form
            assert ("pydantic" in modules(done)) != (form in light), form
            if form in light:
                loaded = modules(done)
                heavy = (*READ_VERB_HEAVY, "pydantic", "yaml" if form[0] != "describe" else "pydantic")
                assert sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in heavy)) == []
            shown[form] = done.stdout
        return shown

    with Gateway(settings_from({"endpoints": etcd_server.endpoint, "prefix": etcd_prefix}, {})) as gateway:
        put_judged(gateway, "web", SPEC)
        put_judged(gateway, "api", SPEC.replace("2", "3"))
        gateway.put("/fleetop/leader", json.dumps({"holderIdentity": "op-1"}))
        gateway.put("/fleetop/observed", observed.model_dump_json(by_alias=True))
        shown = compare(light=set(forms) - {("describe", "proxy", "edge")})  # not found: the store says so
        assert "api   3        0/3" in shown[("get", "services")]
        assert "operator  op-1:" in shown[("status",)]
        assert "Replicas:             2 desired" in shown[("describe", "service", "web")]
        gateway.put("/desired/services/new", '{"replicas": "2"}')  # the operator is not running
        unchanged = {("get", "svc", "api"), ("describe", "service", "web")}
        shown = compare(light={*unchanged, ("get", "proxies")})
        assert "Invalid: $.replicas: Input should be a valid integer" in shown[("get", "services")]
        assert "Invalid($.replicas)" in shown[("status",)]
        put_judged_proxy(
            gateway, "edge", '{"kind":"haproxy","listen":"127.0.0.1:8081","routes":[{"service":"web"}]}'
        )
        shown = compare(light={*unchanged, ("describe", "proxy", "edge")})  # listing a proxy needs the models
        assert "listen: 127.0.0.1:8081" in shown[("describe", "proxy", "edge")]
