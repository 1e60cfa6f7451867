"""``fleetop status`` and the fleet listings, as pure functions of a gathered report.

Gathering (etcd, fleet) lives in ``cluster.py``; this module only turns a :class:`Report` into text or
data, so the one-screen view is tested without any server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetop.cli.output import render_table, to_json, to_yaml
from fleetop.fleet.model import Machine, Unit, UnitState
from fleetop.models import ProxyStatus, ServiceStatus
from fleetop.store import Entry, StatusEntry


@dataclass
class Health:
    endpoint: str
    healthy: bool
    detail: str = ""


@dataclass
class Report:
    """Everything the status screen shows, gathered at ``now``."""

    now: datetime
    etcd: Health
    fleet: Health
    leader: dict[str, Any] | None = None
    services: list[Entry] = field(default_factory=list)
    service_status: dict[str, StatusEntry] = field(default_factory=dict)
    proxies: list[Entry] = field(default_factory=list)
    proxy_status: dict[str, StatusEntry] = field(default_factory=dict)
    machines: list[Machine] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    states: list[UnitState] = field(default_factory=list)


def age(since: str, now: datetime) -> str:
    """``2026-11-21T11:00:00Z`` → ``5m`` (kubectl's AGE style); ``-`` when unknown."""
    if not since:
        return "-"
    try:
        then = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _conditions(status: ServiceStatus | ProxyStatus | None) -> str:
    if status is None:
        return "Pending"
    parts = []
    for cond in status.conditions:
        if cond.type in ("Available", "Published"):
            parts.append(cond.type if cond.status == "True" else f"Not{cond.type}")
        elif cond.status == "True" and cond.type in ("Degraded", "Invalid"):
            parts.append(f"{cond.type}({cond.reason})")
        elif cond.type == "Progressing" and cond.status == "False":
            parts.append(f"Stalled({cond.reason})")
    return ",".join(parts) or "Progressing"


def _last_change(status: ServiceStatus | ProxyStatus | None, now: datetime) -> str:
    """The latest of a condition's transition and (services) the spec's last change, a scale included."""
    if status is None:
        return "-"
    times = [c.last_transition_time for c in status.conditions]
    if isinstance(status, ServiceStatus):
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
    for entry in report.services:
        st = report.service_status.get(entry.name)
        status = st.status if st and isinstance(st.status, ServiceStatus) else None
        if entry.error is not None:
            rows.append([entry.name, "-", "-", "-", "-", f"Invalid({entry.error.path})", "-"])
            continue
        r = status.replicas if status else None
        desired = str(getattr(entry.spec, "replicas", "-"))
        rows.append(
            [
                entry.name,
                desired,
                str(r.running) if r else "-",
                str(r.ready) if r else "-",
                str(r.updated) if r else "-",
                _conditions(status),
                _last_change(status, report.now),
            ]
        )
    return rows


def proxy_rows(report: Report) -> list[list[str]]:
    rows = []
    for entry in report.proxies:
        st = report.proxy_status.get(entry.name)
        status = st.status if st and isinstance(st.status, ProxyStatus) else None
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
    extra = f" ({health.detail})" if health.healthy and health.detail else ""
    return f"{label:<9} {health.endpoint}  {state}{extra}\n"


def format_status(report: Report) -> str:
    leader = report.leader
    if leader:
        identity = leader.get("holderIdentity") or leader.get("identity") or "?"
        leader_text = str(identity)
    else:
        leader_text = "none (is `fleetop run` running?)"
    out = [
        f"{'leader':<9} {leader_text}\n",
        _health("etcd", report.etcd),
        _health("fleet", report.fleet),
        "\n",
    ]
    out.append("SERVICES\n")
    out.append(
        render_table(
            ["NAME", "DESIRED", "RUNNING", "READY", "UPDATED", "CONDITIONS", "CHANGED"], service_rows(report)
        )
        if report.services
        else "  (none)\n"
    )
    out.append("\nPROXIES\n")
    out.append(
        render_table(["NAME", "KIND", "LISTEN", "AGENTS", "BACKENDS", "STATUS"], proxy_rows(report))
        if report.proxies
        else "  (none)\n"
    )
    out.append("\nMACHINES\n")
    out.append(
        render_table(["MACHINE", "IP", "METADATA", "UNITS"], machine_rows(report))
        if report.machines
        else "  (none)\n"
    )
    return "".join(out)


def status_data(report: Report) -> dict[str, Any]:
    def status_json(entries: dict[str, StatusEntry], name: str) -> Any:
        st = entries.get(name)
        return st.status.model_dump(mode="json", by_alias=True) if st and st.status else None

    states_by_machine: dict[str, list[dict[str, Any]]] = {}
    for s in report.states:
        states_by_machine.setdefault(s.machine_id, []).append(s.to_json())
    return {
        "time": report.now.isoformat().replace("+00:00", "Z"),
        "leader": report.leader,
        "etcd": vars(report.etcd),
        "fleet": vars(report.fleet),
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
