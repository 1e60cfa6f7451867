"""The declarative CLI against a real etcd, checked with the real etcdctl as a user would."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetop.cli.main import app
from fleetop.local.etcdserver import EtcdServer

WEB_YAML = """\
kind: Service
name: web
spec:
  replicas: 3
  ports: {base: 8001}
  unit:
    execStart: "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i"
  discovery: {sidekick: true, check: {http: /}}
---
kind: Proxy
name: edge
spec:
  kind: nginx
  listen: "127.0.0.1:8080"
  routes: [{service: web}]
  headers: {handler: true}
"""


class Cli:
    """Runs ``fleetop`` in-process with etcdctl's environment, and the real etcdctl next to it."""

    def __init__(self, server: EtcdServer, prefix: str, etcdctl: str) -> None:
        self.env = {"ETCDCTL_ENDPOINTS": server.endpoint, "FLEETOP_PREFIX": prefix}
        self.prefix = prefix
        self.server = server
        self.etcdctl_bin = etcdctl
        self.runner = CliRunner()

    def __call__(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = self.runner.invoke(app, list(args), env=self.env, input=stdin)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    def etcdctl(self, *args: str) -> str:
        out = subprocess.run(
            [self.etcdctl_bin, "--endpoints", self.server.endpoint, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout

    def raw(self, key: str) -> str | None:
        out = self.etcdctl("get", "--print-value-only", self.prefix + key).rstrip("\n")
        return out or None


@pytest.fixture
def cli(etcd_server: EtcdServer, etcd_prefix: str, etcdctl_bin: str) -> Iterator[Cli]:
    yield Cli(etcd_server, etcd_prefix, etcdctl_bin)


@pytest.fixture
def web_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "web.yaml"
    path.write_text(WEB_YAML)
    return path


def test_apply_then_etcdctl_get_shows_the_json(cli: Cli, web_yaml: Path) -> None:
    code, out, _ = cli("apply", "-f", str(web_yaml))
    assert code == 0, out
    assert out.splitlines() == ["service/web created", "proxy/edge created"]
    stored = json.loads(cli.raw("/desired/services/web") or "")
    assert stored == {
        "replicas": 3,
        "unit": {"execStart": "python3 -m http.server --bind ${COREOS_PRIVATE_IPV4} %i"},
        "ports": {"base": 8001},
        "discovery": {"sidekick": True, "check": {"http": "/"}},
    }
    assert json.loads(cli.raw("/desired/proxies/edge") or "")["kind"] == "nginx"
    code, out, _ = cli("apply", "-f", str(web_yaml))
    assert out.splitlines() == ["service/web unchanged", "proxy/edge unchanged"]


def test_raw_etcdctl_put_reads_like_apply(cli: Cli) -> None:
    cli.etcdctl(
        "put",
        cli.prefix + "/desired/services/web",
        '{"replicas": 2, "unit": {"execStart": "/bin/sleep 1000"}}',
    )
    code, out, _ = cli("get", "services", "-o", "json")
    assert code == 0
    listing = json.loads(out)
    assert listing["kind"] == "List"
    [item] = listing["items"]
    assert item["kind"] == "Service" and item["name"] == "web"
    assert item["spec"] == {"replicas": 2, "unit": {"execStart": "/bin/sleep 1000"}}
    code, out, _ = cli("get", "services")
    assert code == 0 and out.split("\n")[1].split()[:3] == ["web", "2", "-"]


def test_get_yaml_output_applies_back_unchanged(cli: Cli, web_yaml: Path, tmp_path: Path) -> None:
    cli("apply", "-f", str(web_yaml))
    code, out, _ = cli("get", "services", "web", "-o", "yaml")
    assert code == 0
    again = tmp_path / "again.yaml"
    again.write_text(out)
    code, out, _ = cli("apply", "-f", str(again))
    assert (code, out) == (0, "service/web unchanged\n")


def test_patch_and_scale_change_only_what_they_name(cli: Cli) -> None:
    raw = (
        '{"replicas": 2, "unit": {"execStart": "/bin/sleep 1000", "restart": "on-failure"}, "paused": false}'
    )
    cli.etcdctl("put", cli.prefix + "/desired/services/web", raw)
    code, out, err = cli("scale", "service", "web", "--replicas", "5")
    assert (code, out) == (0, "service/web scaled\n"), err
    assert json.loads(cli.raw("/desired/services/web") or "") == {**json.loads(raw), "replicas": 5}
    code, out, err = cli(
        "patch", "service", "web", "--type", "merge", "-p", '{"unit": {"execStart": "/bin/sleep 5"}}'
    )
    assert code == 0, err
    doc = json.loads(cli.raw("/desired/services/web") or "")
    assert doc["unit"] == {"execStart": "/bin/sleep 5", "restart": "on-failure"} and doc["replicas"] == 5
    code, out, err = cli(
        "patch",
        "service",
        "web",
        "--type",
        "json",
        "-p",
        '[{"op": "replace", "path": "/paused", "value": true}]',
    )
    assert code == 0, err
    assert json.loads(cli.raw("/desired/services/web") or "")["paused"] is True
    code, out, _ = cli(
        "patch",
        "service",
        "web",
        "--type",
        "json",
        "-p",
        '[{"op": "replace", "path": "/paused", "value": true}]',
    )
    assert out == "service/web patched (no change)\n"


def test_patch_that_breaks_the_spec_writes_nothing(cli: Cli) -> None:
    raw = '{"replicas": 2, "unit": {"execStart": "/bin/sleep 1000"}}'
    cli.etcdctl("put", cli.prefix + "/desired/services/web", raw)
    code, _, err = cli("patch", "service", "web", "-p", '{"replicas": "many"}')
    assert code == 1 and "$.replicas" in err
    code, _, err = cli(
        "patch", "service", "web", "--type", "json", "-p", '[{"op": "remove", "path": "/nope"}]'
    )
    assert code == 1 and "does not apply" in err
    assert cli.raw("/desired/services/web") == raw


def test_dry_run_and_diff(cli: Cli, web_yaml: Path, tmp_path: Path) -> None:
    code, out, _ = cli("apply", "-f", str(web_yaml), "--dry-run")
    assert code == 0 and "+replicas: 3" in out and "(dry run)" in out
    assert cli.raw("/desired/services/web") is None
    code, out, _ = cli("diff", "-f", str(web_yaml))
    assert code == 1 and "+replicas: 3" in out
    cli("apply", "-f", str(web_yaml))
    code, out, _ = cli("diff", "-f", str(web_yaml))
    assert (code, out) == (0, "")
    changed = tmp_path / "changed.yaml"
    changed.write_text(WEB_YAML.replace("replicas: 3", "replicas: 4"))
    code, out, _ = cli("diff", "-f", str(changed))
    assert code == 1 and "-replicas: 3" in out and "+replicas: 4" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Service\nname: web\nspec: {replicas: [\n")
    code, _, err = cli("diff", "-f", str(broken))
    assert code == 2 and "line" in err


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "kind: Service\nname: web\nspec:\n  replicas: 3\n  unit: {execStart: x\n",
            ["bad.yaml", "invalid YAML", "line"],
        ),
        (
            '{"kind": "Service", "name": "web", "spec": {"replicas": 3, "unit": {"execStart": "x"}',
            ["bad.yaml", "invalid JSON", "line 1"],
        ),
        (
            WEB_YAML.replace("execStart:", "execstart:"),
            ["bad.yaml (document 1)", "$.spec.unit.execstart", "unknown"],
        ),
        (WEB_YAML.replace("replicas: 3", "replicas: three"), ["(document 1)", "$.spec.replicas"]),
        (WEB_YAML.replace("name: edge", "name: Edge_1"), ["(document 2)", "$.name"]),
        (
            WEB_YAML.replace("  routes:", "  name: other\n  routes:"),
            ["(document 2)", "$.spec.name", "differs"],
        ),
        (WEB_YAML.replace("kind: Proxy", "kind: Ingress"), ["(document 2)", "$.kind"]),
    ],
)
def test_bad_input_names_the_place_and_writes_nothing(
    cli: Cli, tmp_path: Path, text: str, fragments: list[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, out, err = cli("apply", "-f", str(bad))
    assert code == 1, out
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    assert cli.etcdctl("get", "--prefix", "--keys-only", cli.prefix + "/") == ""


def test_apply_from_stdin(cli: Cli) -> None:
    code, _, err = cli("apply", "-f", "-", stdin=WEB_YAML)
    assert code == 0, err
    assert cli.raw("/desired/proxies/edge") is not None


def test_garbage_in_etcd_is_reported_not_raised(cli: Cli) -> None:
    cli.etcdctl("put", cli.prefix + "/desired/services/broken", "{not json")
    cli.etcdctl("put", cli.prefix + "/desired/services/typo", '{"replicas": 1, "unit": {"exec": "x"}}')
    cli.etcdctl("put", cli.prefix + "/desired/services/fine", '{"unit": {"execStart": "/bin/true"}}')
    code, out, err = cli("get", "services")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "Invalid: $: invalid JSON" in lines["broken"]
    assert "Invalid: $.unit" in lines["typo"]
    assert "Invalid" not in lines["fine"]
    code, out, err = cli("describe", "service", "typo")
    assert code == 0 and "$.unit.exec: unknown field" in out and "Traceback" not in err
    code, out, _ = cli("get", "services", "broken", "-o", "json")
    assert code == 0 and json.loads(out)["metadata"]["invalid"]


def test_delete(cli: Cli, web_yaml: Path) -> None:
    cli("apply", "-f", str(web_yaml))
    code, out, _ = cli("delete", "service", "web")
    assert (code, out) == (0, 'service "web" deleted\n')
    assert cli.raw("/desired/services/web") is None
    code, _, err = cli("delete", "service", "web")
    assert code == 1 and "NotFound" in err
    code, _, _ = cli("delete", "service", "web", "--ignore-not-found")
    assert code == 0
    code, _, err = cli("get", "deployments")
    assert code == 1 and "unknown resource type" in err


def test_unreachable_etcd_is_a_clear_error(cli: Cli) -> None:
    cli.env["ETCDCTL_ENDPOINTS"] = "127.0.0.1:9"
    cli.env["ETCDCTL_COMMAND_TIMEOUT"] = "1s"
    cli.env["ETCDCTL_DIAL_TIMEOUT"] = "1s"
    code, _, err = cli("get", "services")
    assert code == 1 and "etcd" in err and "Traceback" not in err


def test_events_are_listed_oldest_first(cli: Cli) -> None:
    for key, reason, time in (
        ("b", "Destroyed", "2026-11-21T10:00:05Z"),
        ("a", "Created", "2026-11-21T10:00:01Z"),
    ):
        event = {
            "kind": "Service",
            "name": "web",
            "type": "Normal",
            "reason": reason,
            "message": f"{reason} web@8001.service",
            "time": time,
        }
        cli.etcdctl("put", f"{cli.prefix}/fleetop/events/web/{key}", json.dumps(event))
    cli.etcdctl("put", f"{cli.prefix}/fleetop/events/web/c", "{garbage")
    code, out, err = cli("events", "--service", "web")
    assert code == 0, err
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert rows == [["Normal", "Created", "service/web"], ["Normal", "Destroyed", "service/web"]]
    code, out, _ = cli("events", "--service", "api")
    assert (code, out) == (0, "Events: <none>\n")


def test_describe_lists_no_event_of_an_earlier_service_of_the_same_name(cli: Cli) -> None:
    def event(key: str, message: str) -> None:
        body = {"kind": "Service", "name": "web", "type": "Normal", "reason": "Created", "message": message}
        body["time"] = "2026-11-21T10:00:01Z"
        cli.etcdctl("put", f"{cli.prefix}/fleetop/events/web/{key}", json.dumps(body))

    spec = json.dumps({"replicas": 1, "unit": {"execStart": "/bin/sleep 1000"}})
    cli.etcdctl("put", f"{cli.prefix}/desired/services/web", spec)
    event("a", "Created web@1.service of the first web")
    code, out, err = cli("describe", "service", "web")
    assert code == 0 and "of the first web" in out, err
    assert cli("delete", "service", "web")[0] == 0
    cli.etcdctl("put", f"{cli.prefix}/desired/services/web", spec)  # declared again: a new object
    code, out, err = cli("describe", "service", "web")
    assert code == 0 and "of the first web" not in out and "Events: <none>" in out, out
    event("b", "Created web@1.service of the second web")
    event("a", "Created web@1.service of the first web, again")  # a repeat keeps its first revision
    cli.etcdctl("put", f"{cli.prefix}/desired/services/web", spec.replace("1000", "1001"))  # an update
    code, out, err = cli("describe", "service", "web")
    assert code == 0 and "of the second web" in out and "of the first web" not in out, out
    code, out, _ = cli("events", "--service", "web")  # the hour's log still has both
    assert "of the first web" in out and "of the second web" in out


def test_events_follow_prints_new_events_as_they_come(cli: Cli) -> None:
    import os
    import sys

    def put_event(key: str, reason: str, time: str) -> None:
        event = {
            "kind": "Service",
            "name": "web",
            "type": "Warning",
            "reason": reason,
            "message": "fleet answered 409",
            "time": time,
        }
        cli.etcdctl("put", f"{cli.prefix}/fleetop/events/web/{key}", json.dumps(event))

    put_event("a", "Earlier", "2026-11-21T10:00:01Z")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetop.cli.main", "events", "--follow", "--service", "web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **cli.env},
    )
    try:
        assert proc.stdout is not None
        # The earlier event is printed from the listing; the watch follows from that listing's
        # revision, so whatever is written once it is printed comes next, however slow the start.
        line = proc.stdout.readline()
        assert line.split()[:3] == ["Warning", "Earlier", "service/web"], line
        put_event("z", "FleetAPIError", "2026-11-21T10:00:09Z")
        line = proc.stdout.readline()
        assert line.split()[:3] == ["Warning", "FleetAPIError", "service/web"], line
    finally:
        proc.terminate()
        proc.wait(10)


def test_apply_patch_scale_and_etcd_share_one_validation(cli: Cli, tmp_path: Path) -> None:
    """What the operator refuses, the CLI refuses too, with the same path and message."""
    twice = tmp_path / "twice.yaml"
    twice.write_text(
        "kind: Service\nname: web\nspec:\n  unit: {execStart: /bin/true}\n  unit: {execStart: x}\n"
    )
    code, _, err = cli("apply", "-f", str(twice))
    assert code == 1 and "duplicate key 'unit'" in err and "line 5" in err
    deep = tmp_path / "deep.json"
    deep.write_text(
        json.dumps({"kind": "Service", "name": "web", "spec": {"unit": {"execStart": "x"}}})[:-1]
        + ', "status": '
        + "[" * 1000
        + "]" * 1000
        + "}"
    )
    code, _, err = cli("apply", "-f", str(deep))
    assert code == 1 and "nested deeper than" in err and "Traceback" not in err
    bounded = tmp_path / "bounded.yaml"
    bounded.write_text("kind: Proxy\nname: edge\nspec: {kind: nginx, listen: 'evil.com:80'}\n")
    code, _, err = cli("apply", "-f", str(bounded))
    assert code == 1 and "$.spec.listen" in err and "is not an IP address" in err
    assert cli.etcdctl("get", "--prefix", "--keys-only", cli.prefix + "/") == ""
    # a key written with etcdctl under a name apply refuses: patch and scale refuse it the same way
    cli.etcdctl("put", cli.prefix + "/desired/services/UPPER", '{"unit": {"execStart": "/bin/true"}}')
    code, _, err = cli("scale", "service", "UPPER", "--replicas", "2")
    assert code == 1 and "$.name" in err and "must be 1-63 lowercase letters" in err
    code, out, err = cli("get", "services")
    assert code == 0 and "Invalid: $.name" in out, err
    # a patch is read like a spec: duplicate keys and bounds
    cli.etcdctl("put", cli.prefix + "/desired/services/web", '{"unit": {"execStart": "/bin/true"}}')
    code, _, err = cli("patch", "service", "web", "-p", '{"replicas": 1, "replicas": 2}')
    assert code == 1 and "$.replicas: duplicate key" in err
    code, _, err = cli("patch", "service", "web", "-p", '{"rollout": {"minReadySeconds": 1000000000000}}')
    assert code == 1 and "$.rollout.minReadySeconds" in err
    assert cli.raw("/desired/services/web") == '{"unit": {"execStart": "/bin/true"}}'


def test_apply_refuses_a_proxy_named_like_a_service(cli: Cli, tmp_path: Path) -> None:
    cli.etcdctl("put", cli.prefix + "/desired/services/edge", '{"unit": {"execStart": "/bin/true"}}')
    proxy = tmp_path / "edge.yaml"
    proxy.write_text("kind: Proxy\nname: edge\nspec: {kind: nginx, listen: 8080}\n")
    code, _, err = cli("apply", "-f", str(proxy))
    assert code == 1 and "service 'edge' exists" in err
    assert cli.raw("/desired/proxies/edge") is None
