"""``fleetop status`` formatting is pure: a gathered Report in, text or data out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fleetop.cli.statusview import (
    Health,
    Report,
    age,
    format_machines,
    format_status,
    format_status_data,
    format_units,
)
from fleetop.errors import SpecInvalid
from fleetop.fleet.model import Machine, Unit, UnitState
from fleetop.fleet.units import UnitOption
from fleetop.models import ProxyStatus, ServiceStatus
from fleetop.models.observed import FleetObservation, OperatorObservation
from fleetop.models.parse import encode_spec, parse_proxy, parse_service
from fleetop.models.status import AgentCount, Condition, ReplicaCounts
from fleetop.store import Entry, StatusEntry

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
M1 = Machine("a" * 32, "127.0.1.1", {"region": "sfo1"})
M2 = Machine("b" * 32, "127.0.1.2")
OPTS = (UnitOption("Service", "ExecStart", "/bin/sleep 1000"),)


def _report() -> Report:
    web = parse_service({"replicas": 3, "unit": {"execStart": "x"}})
    edge = parse_proxy({"kind": "nginx", "listen": 8080, "routes": [{"service": "web"}]})
    bad = SpecInvalid([("$.replicas", "Input should be a valid integer")], where="key /desired/services/bad")
    report = Report(
        NOW,
        Health("127.0.0.1:2379", True),
        Health("unix:///tmp/fleet.sock", True, "2 machines"),
        leader={"holderIdentity": "host-1-abc", "hostname": "host", "pid": 1},
        services=[
            Entry("services", "bad", "/desired/services/bad", b"{}", None, bad, 2, 2),
            Entry("services", "web", "/desired/services/web", encode_spec(web), web, None, 3, 9),
        ],
        proxies=[Entry("proxies", "edge", "/desired/proxies/edge", encode_spec(edge), edge, None, 4, 4)],
        machines=[M1, M2],
        units=[Unit("web@8001.service", OPTS, "launched", "launched", M1.id)],
        states=[UnitState("web@8001.service", Unit("x", OPTS).hash, M1.id, "loaded", "active", "running")],
    )
    report.service_status["web"] = StatusEntry(
        "web",
        ServiceStatus(
            observed_generation=9,
            replicas=ReplicaCounts(desired=3, launched=3, running=3, ready=2, updated=3),
            conditions=[
                Condition(type="Available", status="True", last_transition_time="2026-11-21T11:55:00Z"),
                Condition(
                    type="Degraded",
                    status="True",
                    reason="Unschedulable",
                    last_transition_time="2026-11-21T11:59:30Z",
                ),
            ],
        ),
        None,
        10,
    )
    report.proxy_status["edge"] = StatusEntry(
        "edge",
        ProxyStatus(
            config_hash="f" * 64,
            backends={"web": 3},
            agents=AgentCount(total=1, on_newest=1),
            conditions=[Condition(type="Published", status="True")],
        ),
        None,
        11,
    )
    return report


def test_one_screen() -> None:
    text = format_status(_report())
    assert text.startswith("leader    host-1-abc")
    assert "etcd      127.0.0.1:2379  healthy" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert lines["web"] == ["web", "3", "3", "2", "3", "Available,Degraded(Unschedulable)", "30s", "-"]
    assert lines["bad"][-3] == "Invalid($.replicas)"
    assert lines["edge"][:5] == ["edge", "nginx", "*:8080", "1/1", "web=3"]
    assert ["aaaaaaaa...", "127.0.1.1", "region=sfo1", "web@8001.service", "(active/running)"] in [
        line.split() for line in text.splitlines()
    ]


def test_unreachable_parts_say_why() -> None:
    report = _report()
    report.fleet = Health("unix:///nope.sock", False, "connection refused")
    report.leader = None
    text = format_status(report)
    assert "fleet     unix:///nope.sock  UNREACHABLE (connection refused)" in text
    assert "none (is `fleetop run` running?)" in text


def test_json_for_scripts() -> None:
    data = json.loads(format_status_data(_report(), "json"))
    assert data["leader"]["holderIdentity"] == "host-1-abc"
    assert data["services"][1]["status"]["replicas"]["ready"] == 2
    assert data["services"][0]["error"] == ["$.replicas: Input should be a valid integer"]
    assert data["machines"][0]["units"][0]["systemdSubState"] == "running"


def test_fleetctl_like_listings() -> None:
    report = _report()
    lingering = UnitState("gone.service", "0" * 40, M2.id, "loaded", "active", "running")
    text = format_units(
        [*report.units, Unit("pending@1.service", OPTS, "launched", "inactive")],
        [*report.states, lingering],
        report.machines,
        wide=False,
    )
    assert text.splitlines()[0].split() == ["UNIT", "MACHINE", "ACTIVE", "SUB"]
    rows = [line.split() for line in text.splitlines()[1:]]
    assert rows == [
        ["pending@1.service", "-", "-", "-"],
        ["web@8001.service", "aaaaaaaa.../127.0.1.1", "active", "running"],
    ]
    machines = format_machines(report.machines, report.states, wide=True)
    assert machines.splitlines()[1].split() == ["a" * 32, "127.0.1.1", "region=sfo1", "1"]


def test_age() -> None:
    assert age("2026-11-21T11:59:55Z", NOW) == "5s"
    assert age("2026-11-21T11:00:00Z", NOW) == "60m"
    assert age("2026-11-19T12:00:00Z", NOW) == "2d"
    assert age("", NOW) == "-"


def _seen(reachable: bool = True, written: str = "2026-11-21T11:59:58Z") -> OperatorObservation:
    fleet = FleetObservation(
        endpoints=["unix:///a.sock", "http://127.0.0.1:49153"],
        endpoint="http://127.0.0.1:49153",
        reachable=reachable,
        last_seen="2026-11-21T11:59:57Z" if reachable else "2026-11-21T11:58:00Z",
        lost_since="" if reachable else "2026-11-21T11:58:05Z",
        error="" if reachable else "GET /fleet/v1/units: timed out (ReadTimeout)",
        tried=[] if reachable else ["unix:///a.sock", "http://127.0.0.1:49153"],
    )
    return OperatorObservation(identity="host-1-abc", time=written, heartbeat=10.0, fleet=fleet)


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


def test_the_age_of_the_operators_view_is_shown() -> None:
    report = _report()
    report.observed = _seen()
    text = format_status(report)
    assert "operator  host-1-abc: fleet seen 3s ago through http://127.0.0.1:49153" in text
    assert _rows(text)["web"][-1] == "3s"
    assert "Available" in _rows(text)["web"][5]
    data = json.loads(format_status_data(report, "json"))
    assert data["operator"]["fleet"]["lastSeen"] == "2026-11-21T11:59:57Z"
    assert data["conditionsJudged"] is True

    report.observed = _seen(written="2026-11-21T11:50:00Z")  # nobody rewrote it for 10 minutes
    text = format_status(report)
    assert "record not rewritten for 10m (is `fleetop run` leading?); fleet seen 3s ago" in text


def test_a_blind_operator_and_its_unknown_conditions_are_shown_as_such() -> None:
    report = _report()
    report.observed = _seen(reachable=False)
    stored = report.service_status["web"]
    assert isinstance(stored.status, ServiceStatus)
    unknown = [
        Condition(
            type=kind,
            status="Unknown",
            reason="FleetUnreachable",
            last_transition_time="2026-11-21T11:58:05Z",
        )
        for kind in ("Available", "Progressing", "Degraded")
    ]
    status = stored.status.model_copy(update={"conditions": unknown})
    report.service_status["web"] = StatusEntry("web", status, None, 10)
    text = format_status(report)
    assert (
        "operator  host-1-abc: fleet UNREACHABLE for 1m (tried unix:///a.sock, http://127.0.0.1:49153):"
        " GET /fleet/v1/units: timed out (ReadTimeout); last seen 2m ago" in text
    )
    assert _rows(text)["web"][5:] == ["Unknown(FleetUnreachable)", "1m", "2m"]
    assert "the operator does not see fleet — services' conditions cannot be judged" in text


def test_fleet_unreachable_says_what_was_tried_and_never_shows_available() -> None:
    report = _report()
    report.fleet = Health(
        "unix:///a.sock,http://127.0.0.1:49153",
        False,
        "no fleet endpoint answered (...)",
        {"unix:///a.sock": "[Errno 111] Connection refused", "http://127.0.0.1:49153": "timed out"},
    )
    report.machines, report.units, report.states = [], [], []
    text = format_status(report)
    assert "fleet     unix:///a.sock,http://127.0.0.1:49153  UNREACHABLE\n" in text
    assert "          tried unix:///a.sock: [Errno 111] Connection refused\n" in text
    assert "          tried http://127.0.0.1:49153: timed out\n" in text
    assert (
        "fleet: UNREACHABLE (tried unix:///a.sock, http://127.0.0.1:49153) — services' conditions"
        " cannot be judged (shown as Unknown)" in text
    )
    assert _rows(text)["web"][5] == "Unknown(FleetUnreachable)"
    assert "Available" not in text
    assert text.endswith("MACHINES\n  (unknown: fleet unreachable)\n")

    report.observed = _seen()  # the operator still sees fleet through another endpoint: trust its status
    text = format_status(report)
    assert _rows(text)["web"][5] == "Available,Degraded(Unschedulable)"
    assert "cannot be judged" not in text


def test_etcd_unreachable_is_said_plainly_and_fleet_is_still_shown() -> None:
    report = _report()
    report.etcd = Health(
        "127.0.0.1:2379",
        False,
        "cannot reach etcd at 127.0.0.1:2379 within 5 s: ...: Failed to connect to remote host:"
        " Connection refused",
    )
    report.leader, report.services, report.proxies = None, [], []
    text = format_status(report)
    assert text.startswith("leader    unknown (etcd unreachable)\n")
    assert (
        "etcd: UNREACHABLE at 127.0.0.1:2379 (connection refused) — cannot show leader, services, proxies"
        in text
    )
    assert "SERVICES\n  (unknown: etcd unreachable)" in text
    assert "PROXIES\n  (unknown: etcd unreachable)" in text
    assert "(none)" not in text and "is `fleetop run` running" not in text
    assert "web@8001.service" in text  # what fleet shows


def test_changed_counts_a_scale_change_that_moved_no_condition() -> None:
    report = _report()
    entry = report.service_status["web"]
    assert entry.status is not None
    scaled = entry.status.model_copy(
        update={"observed_generation": 12, "observed_generation_time": "2026-11-21T11:59:50Z"}
    )
    report.service_status["web"] = StatusEntry("web", scaled, None, 13)
    lines = {line.split()[0]: line.split() for line in format_status(report).splitlines() if line}
    assert lines["web"][-2] == "10s", "the scale 10 s ago is the last change"
    older = scaled.model_copy(update={"observed_generation_time": "2026-11-21T10:00:00Z"})
    report.service_status["web"] = StatusEntry("web", older, None, 14)
    lines = {line.split()[0]: line.split() for line in format_status(report).splitlines() if line}
    assert lines["web"][-2] == "30s", "a later condition transition is the last change"
    bare = ServiceStatus(observed_generation=3, observed_generation_time="2026-11-21T11:58:00Z")
    report.service_status["web"] = StatusEntry("web", bare, None, 15)
    lines = {line.split()[0]: line.split() for line in format_status(report).splitlines() if line}
    assert lines["web"][-2] == "2m"


def test_a_record_written_on_change_is_current_while_its_writer_leads() -> None:
    """The leader rewrites ``/fleetop/observed`` only when it changes (no etcd write while quiet):
    such a record (``heartbeat`` 0) holds while its writer holds the leader key, however old."""
    report = _report()
    report.observed = _seen(written="2026-11-21T08:00:00Z").model_copy(update={"heartbeat": 0.0})
    text = format_status(report)
    assert "operator  host-1-abc: fleet answering through http://127.0.0.1:49153\n" in text
    assert _rows(text)["web"][-1] == "0s"
    assert "Available" in _rows(text)["web"][5]

    report.leader = {"holderIdentity": "host-2-def"}  # another operator leads now: the record is not its
    text = format_status(report)
    assert "record of host-1-abc, which no longer leads; fleet seen" in text
    assert _rows(text)["web"][-1] == "3s"

    report.leader = None
    report.fleet = Health("unix:///a.sock", False, "down", {"unix:///a.sock": "refused"})
    assert "Unknown(FleetUnreachable)" in _rows(format_status(report))["web"][5]
