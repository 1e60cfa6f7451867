"""``fleetop status`` and the fleet listings, as pure functions of a gathered report.

Gathering (etcd, fleet) lives in ``cluster.py``; this module only turns a :class:`Report` into text or
data, so the one-screen view is tested without any server.

The screen is most needed when something is down, so it says what it cannot see rather than showing
an empty or stale cluster: without etcd there is no leader, service or proxy to show (it says so and
still shows fleet's machines and units); without fleet it names the endpoints tried, and a service's
conditions that nobody can judge any more read ``Unknown(FleetUnreachable)``, never ``Available``. How
old each observation is comes from the leader's record (:mod:`fleetop.models.observed`): the SEEN
column is how long ago the fleet view behind each status was taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from fleetop.cli.output import render_table, to_json, to_yaml
from fleetop.fleet.model import Machine, Unit, UnitState
from fleetop.timefmt import parse_rfc3339

if TYPE_CHECKING:  # the text screen of judged specs is written without the models (cli/light.py)
    from fleetop.cli import light
    from fleetop.cli.output import AnyEntry, AnyStatusEntry
    from fleetop.models import ProxyStatus, ServiceStatus
    from fleetop.models.observed import OperatorObservation
    from fleetop.store import StatusEntry


@dataclass
class Health:
    endpoint: str
    healthy: bool
    detail: str = ""
    tried: dict[str, str] = field(default_factory=dict)
    """Unreachable endpoints and why (several fleet endpoints: each one tried)."""


@dataclass
class Report:
    """Everything the status screen shows, gathered at ``now``."""

    now: datetime
    etcd: Health
    fleet: Health
    leader: dict[str, Any] | None = None
    services: list[AnyEntry] = field(default_factory=list)
    service_status: dict[str, AnyStatusEntry] = field(default_factory=dict)
    proxies: list[AnyEntry] = field(default_factory=list)
    proxy_status: dict[str, AnyStatusEntry] = field(default_factory=dict)
    machines: list[Machine] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    states: list[UnitState] = field(default_factory=list)
    observed: OperatorObservation | light.OperatorObservation | None = None
    """The leader's record of how fresh its view is (None: none found, or etcd unreachable)."""


STALE_HEARTBEATS = 3
"""A leader's record older than this many heartbeats (plus a little) has nobody writing it."""


def _parse_time(text: str) -> datetime | None:
    try:
        return parse_rfc3339(text) if text else None
    except ValueError:
        return None


def record_is_stale(
    observed: OperatorObservation | light.OperatorObservation, now: datetime, leader: str | None = None
) -> bool:
    """Nobody keeps the record current: written on change only (``heartbeat`` 0), its writer no longer
    holds the leader key (``leader``); else nobody rewrote it for several heartbeats."""
    if observed.heartbeat <= 0:
        return leader is None or leader != observed.identity
    written = _parse_time(observed.time)
    if written is None:
        return True
    return (now - written).total_seconds() > STALE_HEARTBEATS * max(observed.heartbeat, 1.0) + 5


def leader_identity(report: Report) -> str | None:
    leader = report.leader
    if not leader:
        return None
    identity = leader.get("holderIdentity") or leader.get("identity")
    return str(identity) if identity else None


def _stale(report: Report) -> bool:
    return report.observed is None or record_is_stale(report.observed, report.now, leader_identity(report))


def _live(report: Report) -> bool:
    """A record kept current by its leader without rewrites, saying fleet answers: the view is now."""
    observed = report.observed
    return (
        observed is not None and observed.heartbeat <= 0 and observed.fleet.reachable and not _stale(report)
    )


def operator_sees_fleet(report: Report) -> bool:
    """The leader's record is fresh and says fleet answers it."""
    observed = report.observed
    return observed is not None and observed.fleet.reachable and not _stale(report)


def fleet_judged(report: Report) -> bool:
    """Can the services' conditions be trusted? Yes while the leader sees fleet, or (no fresh record)
    while this command does; a status written before fleet was lost is otherwise out of date."""
    if report.observed is not None and not _stale(report):
        return report.observed.fleet.reachable
    return report.fleet.healthy


def seen_age(report: Report) -> str:
    """How old the fleet view behind the statuses is: since the leader last saw fleet."""
    if _live(report):
        return "0s"  # the leader polls fleet and would have recorded a loss
    return age(report.observed.fleet.last_seen, report.now) if report.observed is not None else "-"


def age(since: str, now: datetime) -> str:
    """``2026-11-21T11:00:00Z`` → ``5m`` (kubectl's AGE style); ``-`` when unknown."""
    if not since:
        return "-"
    try:
        then = parse_rfc3339(since)
    except ValueError:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _conditions(status: ServiceStatus | ProxyStatus | light.ServiceStatus | light.ProxyStatus | None) -> str:
    if status is None:
        return "Pending"
    parts = []
    for cond in status.conditions:
        if cond.status == "Unknown" and cond.reason != "Paused":
            text = f"Unknown({cond.reason})"
            if text not in parts:
                parts.append(text)
        elif cond.type in ("Available", "Published"):
            parts.append(cond.type if cond.status == "True" else f"Not{cond.type}")
        elif cond.status == "True" and cond.type in ("Degraded", "Invalid"):
            parts.append(f"{cond.type}({cond.reason})")
        elif cond.type == "Progressing" and cond.status == "False":
            parts.append(f"Stalled({cond.reason})")
    return ",".join(parts) or "Progressing"


def _last_change(status: ServiceStatus | light.ServiceStatus | None, now: datetime) -> str:
    """The latest of a condition's transition and the spec's last change, a scale included."""
    if status is None:
        return "-"
    times = [c.last_transition_time for c in status.conditions]
    times.append(status.observed_generation_time)
    times = [t for t in times if t]
    return age(max(times), now) if times else "-"


def short_machine(machine_id: str | None, machines: dict[str, Machine]) -> str:
    """fleetctl's ``8c9b7c2b.../127.0.0.1`` form."""
    if not machine_id:
        return "-"
    machine = machines.get(machine_id)
    return f"{machine_id[:8]}.../{machine.primary_ip}" if machine else f"{machine_id[:8]}..."


def service_rows(report: Report) -> list[list[str]]:
    rows = []
    judged = fleet_judged(report)
    for entry in report.services:
        st = report.service_status.get(entry.name)
        status = cast("ServiceStatus | light.ServiceStatus | None", st.status if st else None)
        if entry.error is not None:
            rows.append([entry.name, "-", "-", "-", "-", f"Invalid({entry.error.path})", "-", "-"])
            continue
        r = status.replicas if status else None
        desired = str(getattr(entry.spec, "replicas", "-"))
        conditions = _conditions(status)
        if not judged and status is not None and "Unknown(FleetUnreachable)" not in conditions:
            conditions = "Unknown(FleetUnreachable)"
        rows.append(
            [
                entry.name,
                desired,
                str(r.running) if r else "-",
                str(r.ready) if r else "-",
                str(r.updated) if r else "-",
                conditions,
                _last_change(status, report.now),
                seen_age(report) if status is not None else "-",
            ]
        )
    return rows


def proxy_rows(report: Report) -> list[list[str]]:
    rows = []
    for entry in report.proxies:
        st = report.proxy_status.get(entry.name)
        status = cast("ProxyStatus | light.ProxyStatus | None", st.status if st else None)
        if entry.error is not None:
            rows.append([entry.name, "-", "-", "-", "-", f"Invalid({entry.error.path})"])
            continue
        kind = str(getattr(entry.spec, "kind", "-"))
        listen = str(getattr(entry.spec, "listen", "-"))
        agents = f"{status.agents.on_newest}/{status.agents.total}" if status else "-"
        backends = ",".join(f"{k}={v}" for k, v in sorted(status.backends.items())) if status else "-"
        state = (
            f"Error: {status.last_error.splitlines()[0][:50]}"
            if status and status.last_error
            else (_conditions(status))
        )
        rows.append([entry.name, kind, listen, agents, backends or "-", state])
    return rows


def machine_rows(report: Report) -> list[list[str]]:
    by_machine: dict[str, list[str]] = {}
    for state in report.states:
        by_machine.setdefault(state.machine_id, []).append(
            f"{state.name} ({state.active_state}/{state.sub_state})"
        )
    rows = []
    for machine in report.machines:
        meta = ",".join(f"{k}={v}" for k, v in sorted(machine.metadata.items())) or "-"
        units = by_machine.get(machine.id, [])
        rows.append([f"{machine.short_id}...", machine.primary_ip, meta, "\n".join(units) or "-"])
    return rows


def _health(label: str, health: Health) -> str:
    state = "healthy" if health.healthy else f"UNREACHABLE ({health.detail})"
    if not health.healthy and health.tried:
        state = "UNREACHABLE"
    extra = f" ({health.detail})" if health.healthy and health.detail else ""
    lines = [f"{label:<9} {health.endpoint}  {state}{extra}\n"]
    if not health.healthy and health.tried:
        lines += [f"{'':<9} tried {where}: {why}\n" for where, why in health.tried.items()]
    return "".join(lines)


def _operator_line(report: Report) -> str:
    """What the leader's record says about fleet, and how old that is."""
    observed = report.observed
    if observed is None:
        return "" if not report.etcd.healthy else f"{'operator':<9} no record of its view yet\n"
    fleet = observed.fleet
    if _stale(report):
        head = (
            f"record of {observed.identity}, which no longer leads;"
            if observed.heartbeat <= 0
            else f"record not rewritten for {age(observed.time, report.now)} (is `fleetop run` leading?);"
        )
    else:
        head = f"{observed.identity}:"
    if fleet.reachable and _live(report):
        where = f" through {fleet.endpoint}" if fleet.endpoint else ""
        return f"{'operator':<9} {head} fleet answering{where}\n"
    if fleet.reachable:
        where = f" through {fleet.endpoint}" if fleet.endpoint else ""
        return f"{'operator':<9} {head} fleet seen {age(fleet.last_seen, report.now)} ago{where}\n"
    tried = f" (tried {', '.join(fleet.tried)})" if fleet.tried else ""
    return (
        f"{'operator':<9} {head} fleet UNREACHABLE for {age(fleet.lost_since, report.now)}{tried}:"
        f" {fleet.error}; last seen {age(fleet.last_seen, report.now)} ago\n"
    )


_BRIEF = (
    ("connection refused", "connection refused"),
    ("no such file", "no such socket"),
    ("timed out", "timed out"),
    ("deadline", "timed out"),
    ("within", "timed out"),
    ("permission denied", "permission denied"),
)


def brief(detail: str) -> str:
    """The gist of a long transport error (``connection refused``, ``timed out``...), else the text."""
    lowered = detail.lower()
    return next((gist for needle, gist in _BRIEF if needle in lowered), detail)


def _notes(report: Report) -> str:
    """Plain sentences for what cannot be shown, right under the header."""
    notes = []
    if not report.etcd.healthy:
        notes.append(
            f"etcd: UNREACHABLE at {report.etcd.endpoint} ({brief(report.etcd.detail)})"
            " — cannot show leader, services, proxies"
        )
    if report.etcd.healthy and not fleet_judged(report):
        if report.fleet.healthy:
            who = "the operator does not see fleet"
        else:
            tried = ", ".join(report.fleet.tried or [report.fleet.endpoint])
            who = f"fleet: UNREACHABLE (tried {tried})" + (
                ", and the operator does not see it either" if report.observed is not None else ""
            )
        notes.append(f"{who} — services' conditions cannot be judged (shown as Unknown)")
    return "".join(f"{note}\n" for note in notes)


def _section(title: str, report: Report, table: str, present: bool) -> str:
    if not report.etcd.healthy:
        return f"{title}\n  (unknown: etcd unreachable)\n"
    return f"{title}\n" + (table if present else "  (none)\n")


def format_status(report: Report) -> str:
    leader = report.leader
    if not report.etcd.healthy:
        leader_text = "unknown (etcd unreachable)"
    elif leader:
        leader_text = leader_identity(report) or "?"
    else:
        leader_text = "none (is `fleetop run` running?)"
    out = [
        f"{'leader':<9} {leader_text}\n",
        _health("etcd", report.etcd),
        _health("fleet", report.fleet),
        _operator_line(report),
        "\n",
    ]
    notes = _notes(report)
    if notes:
        out += [notes, "\n"]
    services = ["NAME", "DESIRED", "RUNNING", "READY", "UPDATED", "CONDITIONS", "CHANGED", "SEEN"]
    out.append(
        _section("SERVICES", report, render_table(services, service_rows(report)), bool(report.services))
    )
    proxies = render_table(["NAME", "KIND", "LISTEN", "AGENTS", "BACKENDS", "STATUS"], proxy_rows(report))
    out.append("\n" + _section("PROXIES", report, proxies, bool(report.proxies)))
    out.append("\nMACHINES\n")
    if not report.fleet.healthy:
        out.append("  (unknown: fleet unreachable)\n")
    else:
        out.append(
            render_table(["MACHINE", "IP", "METADATA", "UNITS"], machine_rows(report))
            if report.machines
            else "  (none)\n"
        )
    return "".join(out)


def status_data(report: Report) -> dict[str, Any]:
    """``status -o json|yaml``: read through the models (:mod:`fleetop.store`)."""

    def status_json(entries: dict[str, AnyStatusEntry], name: str) -> Any:
        st = cast("StatusEntry | None", entries.get(name))
        return st.status.model_dump(mode="json", by_alias=True) if st and st.status else None

    observed = cast("OperatorObservation | None", report.observed)

    states_by_machine: dict[str, list[dict[str, Any]]] = {}
    for s in report.states:
        states_by_machine.setdefault(s.machine_id, []).append(s.to_json())
    return {
        "time": report.now.isoformat().replace("+00:00", "Z"),
        "leader": report.leader,
        "etcd": vars(report.etcd),
        "fleet": vars(report.fleet),
        "operator": observed.model_dump(mode="json", by_alias=True) if observed else None,
        "conditionsJudged": fleet_judged(report),
        "services": [
            {
                "name": e.name,
                "valid": e.valid,
                "error": e.error.all_messages() if e.error else None,
                "status": status_json(report.service_status, e.name),
            }
            for e in report.services
        ],
        "proxies": [
            {
                "name": e.name,
                "valid": e.valid,
                "error": e.error.all_messages() if e.error else None,
                "status": status_json(report.proxy_status, e.name),
            }
            for e in report.proxies
        ],
        "machines": [{**m.to_json(), "units": states_by_machine.get(m.id, [])} for m in report.machines],
    }


def format_status_data(report: Report, fmt: str) -> str:
    data = status_data(report)
    return to_json(data) if fmt == "json" else to_yaml(data)


def format_units(units: list[Unit], states: list[UnitState], machines: list[Machine], wide: bool) -> str:
    """``fleetctl list-units``: one row per (unit, machine) state, plus units with no state."""
    known = {m.id: m for m in machines}
    unit_by_name = {u.name: u for u in units}
    rows = []
    seen = set()
    for s in sorted(states, key=lambda s: (s.name, s.machine_id)):
        unit = unit_by_name.get(s.name)
        if unit is None or unit.hash != s.hash:
            continue  # a state lingering after a delete or replace
        seen.add(s.name)
        row = [s.name, short_machine(s.machine_id, known), s.active_state, s.sub_state]
        if wide:
            row += [s.load_state, s.hash[:7], unit.desired_state, unit.current_state or "-"]
        rows.append(row)
    for unit in units:
        if unit.name not in seen:
            row = [unit.name, short_machine(unit.machine_id, known), "-", "-"]
            if wide:
                row += ["-", unit.hash[:7], unit.desired_state, unit.current_state or "-"]
            rows.append(row)
    rows.sort(key=lambda r: r[0])
    columns = ["UNIT", "MACHINE", "ACTIVE", "SUB"] + (["LOAD", "HASH", "DSTATE", "STATE"] if wide else [])
    return render_table(columns, rows) if rows else "No units found.\n"


def format_machines(machines: list[Machine], states: list[UnitState], wide: bool) -> str:
    """``fleetctl list-machines``: MACHINE IP METADATA."""
    counts: dict[str, int] = {}
    for s in states:
        counts[s.machine_id] = counts.get(s.machine_id, 0) + 1
    rows = []
    for m in machines:
        meta = ",".join(f"{k}={v}" for k, v in sorted(m.metadata.items())) or "-"
        row = [m.id if wide else f"{m.short_id}...", m.primary_ip or "-", meta]
        if wide:
            row.append(str(counts.get(m.id, 0)))
        rows.append(row)
    return (
        render_table(["MACHINE", "IP", "METADATA"] + (["UNITS"] if wide else []), rows)
        if rows
        else ("No machines found.\n")
    )


def now_utc() -> datetime:
    return datetime.now(UTC)
