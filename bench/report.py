"""Pure reporting: statistics, targets, the markdown table and the JSON document.

Nothing here starts a process or reads a clock: every function takes values and returns values, so the
smoke test can check the table and the JSON without running a benchmark.

A :class:`Row` is one measured quantity of one workload: a sample (many values, summarised as median,
p90, p99 and max) or a single value (a count, a one-off duration). A row may carry a :class:`Target`,
a list of checks such as ``p50 <= 20`` and ``p99 <= 55``; the row is *met* when every check holds and
*missed* otherwise, and a missed row says by how much.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Field = Literal["median", "p90", "p99", "max", "value"]
Op = Literal["<=", ">=", "=="]
_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}
_LABEL = {"median": "p50", "p90": "p90", "p99": "p99", "max": "max", "value": ""}


@dataclass(frozen=True)
class Stats:
    """Summary of a sample. Percentiles interpolate linearly between closest ranks (numpy's default)."""

    n: int
    median: float
    p90: float
    p99: float
    max: float
    min: float
    mean: float

    def get(self, name: Field) -> float:
        return self.median if name == "value" else float(getattr(self, name))

    def to_json(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "median": self.median,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
            "min": self.min,
            "mean": self.mean,
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of an already sorted, non-empty sequence."""
    if not ordered:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats(values: Iterable[float]) -> Stats | None:
    """Median, p90, p99, max (and min, mean) of ``values``; None for an empty sample."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return None
    return Stats(
        n=len(ordered),
        median=percentile(ordered, 50),
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        max=ordered[-1],
        min=ordered[0],
        mean=sum(ordered) / len(ordered),
    )


@dataclass(frozen=True)
class Check:
    """One condition of a target: ``field op limit`` (``median <= 20``)."""

    field: Field
    op: Op
    limit: float

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)

    def describe(self, unit: str) -> str:
        label = _LABEL[self.field]
        op = self.op.replace("<=", "≤").replace(">=", "≥")
        return f"{label + ' ' if label else ''}{op} {_fmt(self.limit)}{_unit(unit)}"


@dataclass(frozen=True)
class Target:
    checks: tuple[Check, ...]

    @classmethod
    def of(cls, *checks: tuple[Field, Op, float]) -> Target:
        return cls(tuple(Check(f, o, limit) for f, o, limit in checks))


@dataclass
class Row:
    """One measured quantity. ``values`` is the sample (one element for a single value)."""

    workload: str
    metric: str
    unit: str
    values: list[float]
    target: Target | None = None
    note: str = ""
    single: bool = False
    """Show one value rather than percentiles (counts, one-off durations)."""

    @property
    def stats(self) -> Stats | None:
        return stats(self.values)

    def verdict(self) -> tuple[bool | None, str]:
        """(met, how far off). None when there is no target or no value."""
        summary = self.stats
        if self.target is None or summary is None:
            return None, ""
        missed = []
        for check in self.target.checks:
            value = summary.get(check.field)
            if not check.holds(value):
                label = _LABEL[check.field] or "value"
                over = value - check.limit
                ratio = f", {value / check.limit:.1f}x" if check.limit and check.op == "<=" else ""
                missed.append(
                    f"{label} {_fmt(value)}{_unit(self.unit)} ({over:+.3g}{_unit(self.unit)}{ratio})"
                )
        return (not missed), "; ".join(missed)

    def to_json(self) -> dict[str, Any]:
        met, off = self.verdict()
        summary = self.stats
        return {
            "workload": self.workload,
            "metric": self.metric,
            "unit": self.unit,
            "stats": summary.to_json() if summary else None,
            "values": [round(v, 6) for v in self.values],
            "target": self.target_text(),
            "met": met,
            "missedBy": off,
            "note": self.note,
        }

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return ", ".join(c.describe(self.unit) for c in self.target.checks)


@dataclass
class WorkloadResult:
    """What one workload produced: its rows, raw data worth keeping, notes, and an error if it failed."""

    name: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def add(
        self,
        metric: str,
        unit: str,
        values: Iterable[float],
        target: Target | None = None,
        note: str = "",
        *,
        single: bool = False,
    ) -> Row:
        row = Row(self.name, metric, unit, [float(v) for v in values], target, note, single)
        self.rows.append(row)
        return row

    def value(
        self, metric: str, unit: str, value: float, target: Target | None = None, note: str = ""
    ) -> Row:
        return self.add(metric, unit, [value], target, note, single=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 1),
            "error": self.error,
            "notes": self.notes,
            "rows": [r.to_json() for r in self.rows],
            "raw": self.raw,
        }


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _unit(unit: str) -> str:
    return "" if unit in ("", "count") else f" {unit}" if unit not in ("%",) else unit


def _cell(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{_fmt(value)}{_unit(unit)}"


def _result(met: bool | None, off: str) -> str:
    if met is None:
        return ""
    return "met" if met else f"**missed**: {off}"


def markdown_table(results: Sequence[WorkloadResult]) -> str:
    """One table, a row per measured quantity, with the target and met/missed."""
    lines = [
        "| workload | metric | n | p50 | p90 | p99 | max | target | result |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        if result.error is not None:
            lines.append(f"| {result.name} | **failed**: {_escape(result.error)} | | | | | | | |")
        for row in result.rows:
            summary = row.stats
            met, off = row.verdict()
            metric = row.metric + (f" ({row.note})" if row.note else "")
            if summary is None:
                cells = ["0", "-", "-", "-", "-"]
            elif row.single:
                cells = [str(summary.n), _cell(summary.median, row.unit), "", "", ""]
            else:
                cells = [
                    str(summary.n),
                    _cell(summary.median, row.unit),
                    _cell(summary.p90, row.unit),
                    _cell(summary.p99, row.unit),
                    _cell(summary.max, row.unit),
                ]
            lines.append(
                "| "
                + " | ".join(
                    [result.name, _escape(metric), *cells, row.target_text(), _escape(_result(met, off))]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_counts(results: Sequence[WorkloadResult]) -> tuple[int, int, int]:
    """(targets met, targets missed, workloads failed)."""
    met = missed = 0
    for result in results:
        for row in result.rows:
            verdict, _ = row.verdict()
            if verdict is True:
                met += 1
            elif verdict is False:
                missed += 1
    return met, missed, sum(1 for r in results if r.error is not None)


def document(
    results: Sequence[WorkloadResult], *, started: str, seconds: float, machine: Mapping[str, Any], mode: str
) -> dict[str, Any]:
    """The JSON written to ``bench/results/``."""
    met, missed, failed = summary_counts(results)
    return {
        "date": started,
        "seconds": round(seconds, 1),
        "mode": mode,
        "machine": dict(machine),
        "summary": {"met": met, "missed": missed, "failedWorkloads": failed},
        "workloads": [r.to_json() for r in results],
    }


def markdown(
    results: Sequence[WorkloadResult], *, started: str, seconds: float, machine: Mapping[str, Any], mode: str
) -> str:
    """``latest.md``: a heading with date and machine, the table, and each workload's notes."""
    met, missed, failed = summary_counts(results)
    head = [
        f"# fleetop benchmark, {started}",
        "",
        f"Machine: {machine.get('cpus', '?')} CPU(s), {machine.get('memoryMB', '?')} MB RAM, "
        f"{machine.get('kernel', '?')}; Python {machine.get('python', '?')}, "
        f"etcd {machine.get('etcd', '?')}, "
        f"nginx {machine.get('nginx', '?')}, HAProxy {machine.get('haproxy', '?')}. "
        f"Mode: {mode}; run took {seconds / 60:.1f} min. Targets: {met} met, {missed} missed"
        + (f", {failed} workload(s) failed" if failed else "")
        + ".",
        "",
    ]
    notes: list[str] = []
    for result in results:
        for note in result.notes:
            notes.append(f"- **{result.name}**: {note}")
    tail = ["", "Notes:", "", *notes, ""] if notes else []
    return "\n".join(head) + markdown_table(results) + "\n".join(tail)


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"
