"""The spike comparison's figures, without I/O: what ended in each stage, and its summary.

A request counts in the stage during which it ended. Free of Locust and of the server, so the
tests can check it on made-up outcomes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from refusals import REFUSED_TYPE
from stages import Stage


@dataclass
class Outcomes:
    """The requests that ended in one stage (or several, once merged)."""

    accepted_ms: list[float] = field(default_factory=list)
    """Latencies of the requests the server answered."""
    refused_ms: list[float] = field(default_factory=list)
    """Latencies of the requests its queue bound turned away."""
    refused_by_reason: Counter[str] = field(default_factory=Counter)
    """Refusals by `refusals.refusal_reason`: which limit turned them away."""
    failures: int = 0
    """Requests that failed otherwise (timeouts, errors)."""

    @classmethod
    def merged(cls, parts: Iterable[Outcomes]) -> Outcomes:
        total = cls()
        for part in parts:
            total.accepted_ms += part.accepted_ms
            total.refused_ms += part.refused_ms
            total.refused_by_reason.update(part.refused_by_reason)
            total.failures += part.failures
        return total


def percentile_ms(latencies_ms: Sequence[float], q: float) -> float | None:
    """The exact `q` percentile (0 to 100), rounded to 0.1 ms; None without latencies."""
    if not latencies_ms:
        return None
    return round(float(np.percentile(np.asarray(latencies_ms, dtype=np.float64), q)), 1)


def summary(outcomes: Outcomes, seconds: float) -> dict:
    """The figures reported for `outcomes`, which took `seconds`: counts, accepted requests per
    second and latency percentiles in ms."""
    return {
        "accepted": len(outcomes.accepted_ms),
        "accepted_per_s": round(len(outcomes.accepted_ms) / seconds, 1),
        "refused": len(outcomes.refused_ms),
        "refused_by_reason": dict(sorted(outcomes.refused_by_reason.items())),
        "failures": outcomes.failures,
        "accepted_p50_ms": percentile_ms(outcomes.accepted_ms, 50),
        "accepted_p99_ms": percentile_ms(outcomes.accepted_ms, 99),
        "refused_p50_ms": percentile_ms(outcomes.refused_ms, 50),
        "refused_p99_ms": percentile_ms(outcomes.refused_ms, 99),
    }


class SpikeRecorder:
    """A Locust request listener that sorts each request into the current stage's `Outcomes`.

    The driver sets `stage` as the stages pass; requests that end while it is None are dropped.
    """

    def __init__(self, n_stages: int) -> None:
        self.stages = [Outcomes() for _ in range(n_stages)]
        self.stage: int | None = None

    def on_request(
        self,
        response_time: float,
        request_type: str = "",
        exception: BaseException | None = None,
        context: Mapping[str, object] | None = None,
        **_kwargs: object,
    ) -> None:
        if self.stage is None:
            return
        outcomes = self.stages[self.stage]
        if request_type == REFUSED_TYPE:
            outcomes.refused_ms.append(response_time)
            outcomes.refused_by_reason[str((context or {}).get("refused"))] += 1
        elif exception is None:
            outcomes.accepted_ms.append(response_time)
        else:
            outcomes.failures += 1


MAX_SPAWN_RATE = 100.0
"""Users started per second at most: Locust warns that faster may misbehave."""


def scaled_stages(stages: Sequence[Stage], time_scale: float, peak_users: int) -> list[Stage]:
    """`stages` lasting `time_scale` times as long, their highest user count set to
    `peak_users`; spawn rates follow (up to `MAX_SPAWN_RATE`), so that each stage reaches its
    users as soon as before."""
    if time_scale <= 0 or peak_users < 1:
        raise ValueError(f"time_scale > 0 and peak_users >= 1, got {time_scale}, {peak_users}")
    peak = max(stage.users for stage in stages)
    return [
        replace(
            stage,
            seconds=stage.seconds * time_scale,
            users=peak_users if stage.users == peak else stage.users,
            spawn_rate=min(
                MAX_SPAWN_RATE, stage.spawn_rate * max(1.0, peak_users / peak) / time_scale
            ),
        )
        for stage in stages
    ]
