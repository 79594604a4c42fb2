"""`capacity.png`: the ramp's throughput, and its p50 and p99 against the SLO, per user count."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from capacity_steps import Step


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def plot(steps: Sequence[Step], slo_ms: float, best: Step | None, path: Path) -> Path:
    """Draw records/s (top) and p50, p99 and the SLO (bottom) against users; save as `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [step.users for step in steps]
    throughput = [step.records_per_s for step in steps]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    top.plot(users, throughput, "o-", color="tab:blue")
    top.set_ylabel("records / s")
    top.set_ylim(0, 1.25 * max(throughput, default=1.0) or 1.0)
    top.set_title("ubm ensemble: throughput and latency against concurrent users")
    if best is not None:
        top.plot([best.users], [best.records_per_s], "*", color="tab:green", markersize=14)
        top.annotate(
            f"capacity {best.records_per_s:.0f} records/s",
            (best.users, best.records_per_s),
            textcoords="offset points",
            xytext=(8, 8),
        )
    bottom.plot(users, [_or_nan(step.p50_ms) for step in steps], "o-", label="p50")
    bottom.plot(users, [_or_nan(step.p99_ms) for step in steps], "o-", label="p99")
    bottom.axhline(slo_ms, color="tab:red", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    bottom.set_ylim(bottom=0)
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(users, [str(count) for count in users])
    bottom.minorticks_off()
    bottom.set_xlabel("concurrent users (requests in flight)")
    bottom.set_ylabel("latency per request, ms")
    bottom.legend()
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
