"""When a Locust run fails a pipeline: too large a share of failed requests, or too slow a p99.

The decision is here, free of Locust, so the tests can check it. `locustfile.py` adds the
options ``--max-fail-ratio`` and ``--max-p99-ms`` and applies `verdict` when Locust quits.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DEFAULT_MAX_FAIL_RATIO = 0.0
"""No request may fail, as under Locust's own rule."""


@dataclass(frozen=True)
class Thresholds:
    """The most a run may fail and the slowest it may be and still pass."""

    max_fail_ratio: float = DEFAULT_MAX_FAIL_RATIO
    """Largest share of failed requests, 0 to 1."""
    max_p99_ms: float | None = None
    """Largest p99 latency over all requests, in ms; None: no limit."""


def verdict(
    thresholds: Thresholds,
    requests: int,
    failures: int,
    p99_ms: float | None,
    *,
    user_code_raised: bool = False,
) -> tuple[int | None, list[str]]:
    """The exit code for a run with these totals, and why it fails (empty when it passes).

    1 when no request was made or a threshold is passed. 0 when within them, so that failures
    the ratio allows do not fail the run. None when within them but user code raised outside a
    request: Locust's own rule (``--exit-code-on-error``) decides then.
    """
    reasons = []
    if requests == 0:
        reasons.append("no request was made")
    elif failures / requests > thresholds.max_fail_ratio:
        reasons.append(
            f"{failures} of {requests} requests failed ({failures / requests:.2%}),"
            f" over --max-fail-ratio {thresholds.max_fail_ratio:g}"
        )
    if thresholds.max_p99_ms is not None and p99_ms is not None and p99_ms > thresholds.max_p99_ms:
        reasons.append(f"p99 {p99_ms:g} ms, over --max-p99-ms {thresholds.max_p99_ms:g}")
    if reasons:
        return 1, reasons
    return (None if user_code_raised else 0), reasons


def fail_ratio(text: str) -> float:
    """argparse type of ``--max-fail-ratio``: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share of requests from 0 to 1, got {text}")
    return value


def positive_ms(text: str) -> float:
    """argparse type of ``--max-p99-ms``: milliseconds above 0."""
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"milliseconds above 0, got {text}")
    return value
