"""stub"""

from __future__ import annotations

from bench.harness import Options
from bench.report import WorkloadResult


async def run(opts: Options) -> WorkloadResult:
    return WorkloadResult("steady", error="not implemented yet")
