"""``python -m bench``: run the benchmark workloads, print the table, write the results.

    python -m bench                                  # everything (about 12 minutes on 2 cores)
    python -m bench --only registration,burst --quick
    python -m bench --only scale --reps 3

Each workload starts its own etcd, ``fleetop node``, operator(s), proxies, agents and backends on
loopback, in a scratch directory, and stops every one of them by PID before the next starts.
Results go to ``bench/results/<timestamp>.json`` and ``bench/results/latest.json`` /
``latest.md`` (``--out`` chooses another directory).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import burst, lean, recovery, registration, report, scale, spec_to_running, steady
from bench.harness import Options, machine_info
from bench.report import WorkloadResult

Workload = Callable[[Options], Coroutine[Any, Any, WorkloadResult]]
WORKLOADS: dict[str, Workload] = {
    "registration": registration.run,
    "burst": burst.run,
    "scale": scale.run,
    "spec": spec_to_running.run,
    "steady": steady.run,
    "recovery": recovery.run,
    "lean": lean.run,
}
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help=f"comma-separated workloads (default all): {','.join(WORKLOADS)}"
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions and small sizes")
    parser.add_argument("--reps", type=int, default=None, help="override repetitions per workload")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args(argv)
    chosen = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    args.chosen = chosen
    return args


def run_workload(name: str, opts: Options) -> WorkloadResult:
    started = time.monotonic()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    try:
        result = asyncio.run(WORKLOADS[name](opts))
    except Exception as exc:
        traceback.print_exc()
        result = WorkloadResult(name, error=f"{type(exc).__name__}: {exc}")
    result.seconds = time.monotonic() - started
    print(f"bench: {name} done in {result.seconds:.0f} s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC)
    started = stamp.strftime("%Y-%m-%d %H:%M UTC")
    scratch = Path(tempfile.mkdtemp(prefix="fleetop-bench-"))
    opts = Options(base=scratch, quick=args.quick, reps=args.reps)
    clock = time.monotonic()
    results: list[WorkloadResult] = []
    try:
        for name in args.chosen:
            results.append(run_workload(name, opts))
    finally:
        if args.keep:
            print(f"bench: logs kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - clock
    machine = machine_info()
    mode = ("quick" if args.quick else "full") + (
        "" if args.chosen == list(WORKLOADS) else f" ({','.join(args.chosen)})"
    )
    doc = report.document(results, started=started, seconds=seconds, machine=machine, mode=mode)
    text = report.markdown(results, started=started, seconds=seconds, machine=machine, mode=mode)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stamp.strftime('%Y%m%dT%H%M%SZ')}.json").write_text(report.dumps(doc))
    (args.out / "latest.json").write_text(report.dumps(doc))
    (args.out / "latest.md").write_text(text)
    print(text)
    print(f"bench: wrote {args.out / 'latest.md'} and {args.out / 'latest.json'}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
