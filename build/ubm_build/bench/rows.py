"""One measured row (records/s and latency), and what is derived from rows: rounds and their
median, ratios, the latency target, a one-line description."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Row:
    """One way of scoring the records, measured once (or the median of its rounds)."""

    name: str
    description: str
    records_per_call: int
    """Records per model call (seeds' way, in process) or per request (served)."""
    latency_of: str
    """What p50/p99 measure: one "record", one "batch" in process, one "request" served."""
    records: int
    seconds: float
    records_per_s: float
    p50_ms: float
    p99_ms: float
    server: dict[str, dict] | None = None
    """Served rows: per model, `triton_metrics.ModelSplit` as a dict."""
    round_records_per_s: list[float] | None = None
    """Rows measured in rounds: records/s of each round (the row is the median round's)."""

    def to_dict(self) -> dict:
        return asdict(self)


def time_calls(
    calls: Sequence[Any], score: Callable[[Any], object], sync: Callable[[], None] = lambda: None
) -> tuple[list[float], float]:
    """`score` on each of `calls` after one untimed warm-up call, each timed until `sync`
    returns (a GPU's work ends there): each call's seconds, and all's."""
    score(calls[0])
    sync()
    latencies = []
    started = time.perf_counter()
    for call in calls:
        t = time.perf_counter()
        score(call)
        sync()
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - started


def summarise(
    name: str,
    description: str,
    records_per_call: int,
    latency_of: str,
    latencies_s: Sequence[float],
    records: int,
    seconds: float,
) -> Row:
    """A row from the latency of every call and the wall time of them all."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    return Row(
        name=name,
        description=description,
        records_per_call=records_per_call,
        latency_of=latency_of,
        records=records,
        seconds=round(seconds, 3),
        records_per_s=records / seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )


def summarise_batches(
    name: str,
    description: str,
    latency_of: str,
    batches: Sequence[Sized],
    latencies_s: Sequence[float],
    seconds: float,
) -> Row:
    """A row of batches scored one call (or request) each; the first batch's size is the row's."""
    records = sum(len(batch) for batch in batches)
    return summarise(name, description, len(batches[0]), latency_of, latencies_s, records, seconds)


def describe(row: Row) -> str:
    """One line for the log: records/s and latency."""
    return (
        f"{row.name}: {row.records_per_s:.1f} records/s, p50 {row.p50_ms:.1f} ms,"
        f" p99 {row.p99_ms:.1f} ms per {row.latency_of}"
    )


def median_row(rows: Sequence[Row]) -> Row:
    """The row of the median round by records/s (the lower middle one for an even count),
    carrying every round's records/s."""
    ordered = sorted(rows, key=lambda row: row.records_per_s)
    middle = ordered[(len(ordered) - 1) // 2]
    return replace(middle, round_records_per_s=[row.records_per_s for row in rows])


def in_rounds(
    groups: Sequence[Sequence[Callable[[], Row]]], rounds: int, log: Callable[[str], None]
) -> dict[str, Row]:
    """Every measure of `groups` `rounds` times, the groups in order in odd rounds and in
    reverse in even ones (so that a drift of the machine's speed favours no group); the
    median round of each row, by name, in the order first measured."""
    measured: dict[str, list[Row]] = {}
    for round_ in range(rounds):
        for group in groups if round_ % 2 == 0 else groups[::-1]:
            for measure in group:
                row = measure()
                measured.setdefault(row.name, []).append(row)
                log(f"round {round_ + 1}: {describe(row)}")
                gc.collect()
    return {name: median_row(rows) for name, rows in measured.items()}


def ratio(numerator: Row | None, denominator: Row | None) -> float | None:
    """records/s of one row over another's, None when either is missing."""
    if numerator is None or denominator is None:
        return None
    return numerator.records_per_s / denominator.records_per_s


def latency_target(served: Row | None, in_process: Row | None) -> dict | None:
    """Served p99 at concurrency 1 against twice the in-process median plus 5 ms (one record)."""
    if served is None or in_process is None:
        return None
    target = 2 * in_process.p50_ms + 5
    return {
        "served_c1_single_p99_ms": served.p99_ms,
        "inprocess_single_p50_ms": in_process.p50_ms,
        "target_ms": target,
        "met": served.p99_ms < target,
    }
