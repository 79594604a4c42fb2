"""Where the served time goes, from Triton's per-model counters on the metrics port.

`scrape` reads the cumulative ``nv_inference_*`` counters; `split` turns two scrapes (before and
after a run) into, per model, requests, executions (batches the model ran), records, and the mean
milliseconds per request spent queued and computing, so a benchmark can say whether a slow
served row waits in a queue, in preprocessing, in the encoder or in the head.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_exec_count": "executions",
    "nv_inference_count": "records",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
"""Triton's counter names and what we call them."""

Scrape = dict[str, dict[str, float]]
"""model -> counter (our name) -> cumulative value."""


def parse(text: str) -> Scrape:
    """The `COUNTERS` of every model (summed over versions) in a Prometheus text exposition."""
    values: Scrape = defaultdict(lambda: dict.fromkeys(COUNTERS.values(), 0.0))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = COUNTERS.get(sample.name.removesuffix("_total"))
            if name and "model" in sample.labels:
                values[sample.labels["model"]][name] += sample.value
    return dict(values)


def scrape(metrics_url: str, timeout_s: float = 5.0) -> Scrape:
    """Read ``<metrics_url>/metrics`` (e.g. ``http://127.0.0.1:8002``)."""
    with urllib.request.urlopen(f"{metrics_url.rstrip('/')}/metrics", timeout=timeout_s) as r:
        return parse(r.read().decode())


def scrape_after(
    metrics_url: str,
    before: Scrape,
    models: Iterable[str],
    requests: int,
    timeout_s: float = 5.0,
) -> Scrape:
    """A scrape once each of `models` has counted `requests` more successes than in `before`.

    A python-backend model reports its statistics after it has sent its response, so the
    client can see the ensemble's answer before a step's counters move. Gives up waiting after
    `timeout_s` and returns the last scrape.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        after = scrape(metrics_url)
        counted = all(
            after.get(m, {}).get("requests", 0.0) - before.get(m, {}).get("requests", 0.0)
            >= requests
            for m in models
        )
        if counted or time.monotonic() >= deadline:
            return after
        time.sleep(0.05)


@dataclass(frozen=True)
class ModelSplit:
    """One model's share of a run: counts, and mean milliseconds per request."""

    requests: int
    executions: int
    records: int
    records_per_execution: float
    request_ms: float
    """Queue + compute + the backend's own overhead, per request."""
    queue_ms: float
    compute_ms: float
    """Input copy + inference + output copy, per request."""

    def to_dict(self) -> dict:
        return asdict(self)


def split(before: Scrape, after: Scrape) -> dict[str, ModelSplit]:
    """Per model, what happened between two scrapes (models with no requests are left out)."""
    result = {}
    for model, now in sorted(after.items()):
        then = before.get(model, {})
        delta = {name: now[name] - then.get(name, 0.0) for name in now}
        requests = int(delta["requests"])
        if requests <= 0:
            continue
        compute_us = (
            delta["compute_input_us"] + delta["compute_infer_us"] + delta["compute_output_us"]
        )
        executions = int(delta["executions"])
        result[model] = ModelSplit(
            requests=requests,
            executions=executions,
            records=int(delta["records"]),
            records_per_execution=delta["records"] / executions if executions else 0.0,
            request_ms=delta["request_us"] / requests / 1000.0,
            queue_ms=delta["queue_us"] / requests / 1000.0,
            compute_ms=compute_us / requests / 1000.0,
        )
    return result
