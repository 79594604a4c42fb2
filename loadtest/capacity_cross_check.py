"""The capacity step measured again by NVIDIA's perf_analyzer, the C++ load generator of the
``tritonclient`` wheel, on the same server, concurrency, batch size and records (see
``make bench-cli``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from capacity_settings import CapacitySettings
from capacity_steps import Step

STABILITY_PERCENT = 10
"""perf_analyzer stops once three measurement windows agree within this."""
MAX_TRIALS = 10


def perf_analyzer_check(
    url: str, step: Step, settings: CapacitySettings, log: Callable[[str], None]
) -> dict:
    """perf_analyzer with as many requests in flight as `step` had users, beside Locust's figure.

    Its measurement windows are half a step long. Where it cannot run or fails, the entry says
    why (``skipped`` or ``failed``) and the capacity result stands.
    """
    from ubm_build.bench import perf_analyzer
    from ubm_build.bench.workload import read_lines

    problem = perf_analyzer.problem()
    if problem:
        log(f"perf_analyzer cross-check skipped: {problem}")
        return {"skipped": problem}
    records = read_lines(settings.records_file)
    load = perf_analyzer.PerfAnalyzerSettings(
        batch_size=settings.batch_size,
        concurrency=step.users,
        measurement_interval_ms=max(500, round(step.seconds * 500)),
        max_trials=MAX_TRIALS,
        stability_percentage=STABILITY_PERCENT,
    )
    with tempfile.TemporaryDirectory(prefix="ubm_capacity_") as tmp:
        workdir = Path(tmp)
        input_data = perf_analyzer.write_input_data(records, workdir / "input_data.json")
        try:
            result = perf_analyzer.run(url, input_data, load, workdir)
        except perf_analyzer.PerfAnalyzerError as e:
            log(f"perf_analyzer cross-check failed: {e}")
            return {"failed": str(e)}
    ratio = result.records_per_s / step.records_per_s
    log(
        f"perf_analyzer, {step.users} requests in flight: {result.records_per_s:.1f} records/s,"
        f" p99 {result.p99_latency_ms or float('nan'):.1f} ms"
        f" ({ratio:.2f}x Locust's {step.records_per_s:.1f})"
    )
    return {**asdict(result), "concurrency": step.users, "over_locust": ratio}
