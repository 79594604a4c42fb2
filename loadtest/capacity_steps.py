"""The capacity ramp's decisions, without I/O: one `Step` per user count, when to stop, the best.

Kept free of Locust and of the server, so the tests can check every rule on made-up latencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Step:
    """One measured step: `users` users sending requests back to back."""

    users: int
    seconds: float
    requests: int
    failures: int
    records_per_s: float
    """Records in successful requests per second."""
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    """Latency percentiles of the successful requests; None when none succeeded."""
    within_slo: bool
    locust_cpu_percent: float
    """CPU time of the load generator's process over the step, in % of one core: near 100, it
    is the limit rather than the server."""


def measure(
    users: int,
    latencies_ms: Sequence[float],
    failures: int,
    seconds: float,
    batch_size: int,
    slo_ms: float,
    locust_cpu_percent: float = 0.0,
) -> Step:
    """A `Step` from the latencies of the step's successful requests and its failure count."""
    succeeded = np.asarray(latencies_ms, dtype=np.float64)
    p50 = float(np.percentile(succeeded, 50)) if succeeded.size else None
    p99 = float(np.percentile(succeeded, 99)) if succeeded.size else None
    return Step(
        users=users,
        seconds=round(seconds, 3),
        requests=int(succeeded.size) + failures,
        failures=failures,
        records_per_s=succeeded.size * batch_size / seconds,
        requests_per_s=(succeeded.size + failures) / seconds,
        p50_ms=p50,
        p99_ms=p99,
        within_slo=failures == 0 and p99 is not None and p99 <= slo_ms,
        locust_cpu_percent=locust_cpu_percent,
    )


def stop_reason(step: Step, slo_ms: float) -> str | None:
    """Why the ramp ends after `step`, or None to go on."""
    if step.failures:
        return f"{step.failures} of {step.requests} requests failed at {step.users} users"
    if step.p99_ms is None:
        return f"no request completed at {step.users} users"
    if step.p99_ms > slo_ms:
        return f"p99 {step.p99_ms:.1f} ms > SLO {slo_ms:g} ms at {step.users} users"
    return None


def best_step(steps: Sequence[Step]) -> Step | None:
    """The step with the highest records/s among those within the SLO."""
    passing = [step for step in steps if step.within_slo]
    return max(passing, key=lambda step: step.records_per_s) if passing else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def describe(step: Step) -> str:
    """One line of the ramp's log for `step`."""
    return (
        f"{step.users:>3} users: {step.records_per_s:8.1f} records/s, p50 {_ms(step.p50_ms)} ms,"
        f" p99 {_ms(step.p99_ms)} ms, {step.requests} requests, {step.failures} failed"
        f"{'' if step.within_slo else '  (over the SLO)'}"
    )


def describe_capacity(best: Step | None, first: Step, slo_ms: float, batch_size: int) -> str:
    """The ramp's conclusion: the capacity step, or that even the `first` step missed the SLO."""
    if best is None:
        return f"capacity: none, even {first.users} user(s) missed the SLO"
    return (
        f"capacity: {best.records_per_s:.1f} records/s sustained under p99 <= {slo_ms:g} ms,"
        f" at {best.users} users (p50 {_ms(best.p50_ms)} ms, p99 {_ms(best.p99_ms)} ms,"
        f" {batch_size} record(s) per request)"
    )
