"""Triton's metrics text -> per-model split of a run."""

import pytest

from ubm_build.serving import triton_metrics

BEFORE = """\
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="encoder",version="1"} 10
nv_inference_request_success{model="head",version="1"} 10
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="encoder",version="1"} 10
# TYPE nv_inference_count counter
nv_inference_count{model="encoder",version="1"} 40
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="encoder",version="1"} 1000
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="encoder",version="1"} 50000
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""

AFTER = """\
nv_inference_request_success{model="encoder",version="1"} 14
nv_inference_request_success{model="head",version="1"} 10
nv_inference_exec_count{model="encoder",version="1"} 12
nv_inference_count{model="encoder",version="1"} 72
nv_inference_queue_duration_us{model="encoder",version="1"} 9000
nv_inference_compute_input_duration_us{model="encoder",version="1"} 400
nv_inference_compute_infer_duration_us{model="encoder",version="1"} 90000
nv_inference_compute_output_duration_us{model="encoder",version="1"} 1600
nv_inference_request_duration_us{model="encoder",version="1"} 120000
"""


def test_parse_reads_each_models_counters():
    scraped = triton_metrics.parse(BEFORE)
    assert set(scraped) == {"encoder", "head"}
    assert scraped["encoder"]["requests"] == 10
    assert scraped["encoder"]["compute_infer_us"] == 50000
    assert scraped["head"]["queue_us"] == 0


def test_split_gives_means_per_request_between_two_scrapes():
    split = triton_metrics.split(triton_metrics.parse(BEFORE), triton_metrics.parse(AFTER))
    assert set(split) == {"encoder"}  # the head had no requests in between
    encoder = split["encoder"]
    assert (encoder.requests, encoder.executions, encoder.records) == (4, 2, 32)
    assert encoder.records_per_execution == 16
    assert encoder.queue_ms == pytest.approx(2.0)
    assert encoder.compute_ms == pytest.approx((400 + 40000 + 1600) / 4 / 1000)
    assert encoder.to_dict()["requests"] == 4


def counts(**requests: float) -> triton_metrics.Scrape:
    return {model: {"requests": n} for model, n in requests.items()}


def test_scrape_after_waits_until_every_step_counted_the_requests(monkeypatch):
    scrapes = iter([counts(ubm=5, head=4), counts(ubm=5, head=4), counts(ubm=5, head=5)])
    monkeypatch.setattr(triton_metrics, "scrape", lambda url: next(scrapes))
    after = triton_metrics.scrape_after("http://m", counts(ubm=1, head=1), ["ubm", "head"], 4)
    assert after == counts(ubm=5, head=5)


def test_scrape_after_gives_up_waiting_at_its_timeout(monkeypatch):
    monkeypatch.setattr(triton_metrics, "scrape", lambda url: counts(ubm=5, head=4))
    after = triton_metrics.scrape_after(
        "http://m", counts(ubm=1, head=1), ["ubm", "head"], 4, timeout_s=0.1
    )
    assert after == counts(ubm=5, head=4)
