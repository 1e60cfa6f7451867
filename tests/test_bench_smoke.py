"""The benchmark suite stays runnable: its pure report code, and a tiny ``--quick`` run end to end.

Only the shape of the results is checked, never a time: measurements belong in ``bench/results``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.harness import fetch_raw, first_answer_by, first_of_run  # noqa: E402
from bench.registration import slow_fsyncs  # noqa: E402
from bench.report import Row, Target, WorkloadResult  # noqa: E402


def test_stats_are_median_and_interpolated_percentiles() -> None:
    summary = report.stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary is not None
    assert (summary.n, summary.median, summary.max, summary.min) == (5, 3.0, 5.0, 1.0)
    assert summary.p90 == pytest.approx(4.6)
    assert summary.p99 == pytest.approx(4.96)
    assert report.stats([]) is None
    single = report.stats([7.0])
    assert single is not None and single.median == single.p99 == 7.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        report.percentile([], 50)
    with pytest.raises(ValueError):
        report.percentile([1.0], 101)


def test_a_row_is_met_or_says_by_how_much_it_missed() -> None:
    target = Target.of(("median", "<=", 20.0), ("p99", "<=", 55.0))
    met = Row("w", "latency", "ms", [10.0, 12.0, 15.0], target)
    assert met.verdict() == (True, "")
    missed = Row("w", "latency", "ms", [30.0, 30.0, 90.0], target)
    ok, off = missed.verdict()
    assert ok is False and "p50 30 ms" in off and "p99" in off
    assert Row("w", "info", "ms", [1.0]).verdict() == (None, "")
    assert Row("w", "empty", "ms", [], target).verdict() == (None, "")
    exact = Row("w", "writes", "count", [0.0], Target.of(("value", "==", 0)), single=True)
    assert exact.verdict() == (True, "")


def test_table_and_json_are_well_formed() -> None:
    one = WorkloadResult("registration")
    one.add("nginx: key put → served", "ms", [10.0, 20.0, 30.0], Target.of(("median", "<=", 20.0)))
    one.value("reloads", "count", 3, Target.of(("value", "<=", 5)))
    one.notes.append("a note | with a pipe")
    failed = WorkloadResult("scale", error="RuntimeError: boom")
    machine = {"cpus": 2, "memoryMB": 1024}
    table = report.markdown_table([one, failed])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| workload | metric |")
    assert all(line.count("|") - line.count("\\|") == 10 for line in lines), table
    assert "met" in table and "**failed**" in table
    text = report.markdown(
        [one, failed], started="2026-01-01 00:00 UTC", seconds=60, machine=machine, mode="quick"
    )
    assert "2 CPU(s)" in text and "a note" in text
    doc = report.document([one, failed], started="x", seconds=1.0, machine=machine, mode="quick")
    again = json.loads(report.dumps(doc))
    assert again["summary"] == {"met": 2, "missed": 0, "failedWorkloads": 1}
    row = again["workloads"][0]["rows"][0]
    assert set(row["stats"]) == {"n", "median", "p90", "p99", "max", "min", "mean"}
    assert row["met"] is True and row["target"]


@pytest.mark.slow
def test_the_probe_decides_on_the_new_backend_or_a_run_of_the_remaining_one() -> None:
    added = first_answer_by("127.0.0.2:80")
    assert added(200, "127.0.0.99:80", 1.0) is None
    assert added(502, "127.0.0.2:80", 2.0) is None
    assert added(200, "127.0.0.2:80", 3.0) == 3.0
    removed = first_of_run("127.0.0.99:80", 3)
    answers = [(200, "127.0.0.99:80"), (200, "127.0.0.2:80"), (200, "127.0.0.99:80"), (0, "")]
    answers += [(200, "127.0.0.99:80"), (200, "127.0.0.99:80"), (200, "127.0.0.99:80")]
    decided = [removed(status, who, float(at)) for at, (status, who) in enumerate(answers)]
    assert decided == [None, None, None, None, None, None, 4.0]  # the run's first, not its last


def test_the_bare_socket_request_reads_status_and_backend() -> None:
    """fetch_raw against a one-shot HTTP server on loopback: the status and X-Backend, and 0 for an
    answer that is not HTTP."""

    def serve(answer: bytes) -> tuple[int, str]:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]

            def reply() -> None:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)

            thread = threading.Thread(target=reply)
            thread.start()
            try:
                return fetch_raw(port)
            finally:
                thread.join()

    ok = b"HTTP/1.1 200 OK\r\nx-backend: 127.0.0.2:8080\r\nContent-Length: 2\r\n\r\nok"
    assert serve(ok) == (200, "127.0.0.2:8080")
    assert serve(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") == (503, "")
    assert serve(b"garbage") == (0, "")


def test_slow_fsyncs_are_counted_from_the_histogram_between_two_scrapes() -> None:
    name = "etcd_disk_wal_fsync_duration_seconds"
    before = {f"{name}_count": 10.0, f'{name}_bucket{{le="0.016"}}': 9.0}
    after = {f"{name}_count": 25.0, f'{name}_bucket{{le="0.016"}}': 21.0}
    assert slow_fsyncs(before, after, 0.016) == (15.0, 3.0)
    assert slow_fsyncs({}, after, 0.016) == (25.0, 4.0)  # a first scrape before any fsync
    with pytest.raises(RuntimeError, match=r'le="0\.01"'):
        slow_fsyncs(before, after, 0.01)  # not a bound of etcd's histogram


def test_a_tiny_quick_run_writes_results(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "--only", "registration,burst", "--quick", "--reps", "1"]
    argv += ["--out", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert [w["name"] for w in doc["workloads"]] == ["registration", "burst"]
    assert doc["machine"]["cpus"] >= 1
    raw = doc["workloads"][0]["raw"]["haproxy"]
    assert raw["walFsyncs"] >= len(raw["addMs"]) and 0 <= raw["slowWalFsyncs"] <= raw["walFsyncs"]
    for workload in doc["workloads"]:
        assert workload["error"] is None
        assert workload["rows"]
        for row in workload["rows"]:
            assert row["metric"] and row["unit"]
            if row["stats"] is not None:
                assert row["stats"]["n"] >= 1
                assert row["stats"]["median"] <= row["stats"]["max"]
            assert row["met"] in (True, False, None)
    assert (tmp_path / "latest.md").read_text().startswith("# fleetop benchmark")
    assert len(list(tmp_path.glob("2*.json"))) == 1
