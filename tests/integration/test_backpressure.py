"""Backpressure against a real tritonserver whose model queues hold only `QUEUE_BOUND` requests.

A spike of raw requests (tritonclient, no retries) beyond the bound is partly refused, each
refusal fast; `ubm-client score` rides the same overload out through the SDK's retries; Locust
reports refusals apart from failures; `loadtest/spike_compare.py` measures both queue policies.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from ubm import RequestTimeoutError, ServerUnavailableError, contract
from ubm._base import is_retryable
from ubm.exceptions import from_triton_error
from ubm_build.inputs import snapshot
from ubm_build.serving import repository, server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "loadtest"
RECORDS = ROOT / "examples" / "sessions.jsonl"
UBM_CLIENT = Path(sys.executable).parent / "ubm-client"

QUEUE_BOUND = 2
"""Requests each model may hold waiting: far below the spike's concurrency."""
SPIKE_CONCURRENCY = 32
SPIKE_REQUESTS = 96
RECORDS_PER_REQUEST = 4
REFUSAL_BOUND_S = 1.0
"""A refusal is answered at once: generously, within a second even on a busy machine."""
SLO_SLOWDOWN = 10
"""How much slower than alone a request may run while the spike loads every core."""
SLO_SLACK_S = 2.0
"""For a machine shared with other work (the bound of the default queue timeout)."""
UNAVAILABLE = "StatusCode.UNAVAILABLE"
QUEUE_FULL = "Exceeds maximum queue size"
QUEUE_TIMEOUT = "Request timeout expired"


@pytest.fixture(scope="module")
def small_queue_repository(tiny_model, tiny_onnx, tmp_path_factory) -> Path:
    """The tiny model with every model's queue bounded to `QUEUE_BOUND` requests."""
    model, model_dir = tiny_model
    spec = repository.RepositorySpec(
        max_length=model.spec.max_length,
        hidden_size=model.spec.hidden_size,
        n_features=len(model.spec.feature_names),
        snapshot_words=model.spec.snapshot_words,
        tuning=repository.Tuning(max_queue_size=QUEUE_BOUND),
    )
    encoder_onnx, head_onnx = tiny_onnx
    return repository.write_repository(
        tmp_path_factory.mktemp("small_queue_repository"),
        spec,
        tokenizer_json=model_dir / "tokenizer.json",
        snapshot_file=model_dir / snapshot.FILE,
        encoder=encoder_onnx,
        head_onnx=head_onnx,
    )


@pytest.fixture(scope="module")
def bounded_triton(small_queue_repository, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bounded_triton")
    ports = server.Ports.free()
    with server.TritonServer(small_queue_repository, workdir=workdir, ports=ports) as triton:
        yield triton


def record_lines(n: int) -> list[bytes]:
    return RECORDS.read_bytes().splitlines()[:n]


def infer_raw(
    client: triton_grpc.InferenceServerClient, rows: list[bytes]
) -> tuple[float, InferenceServerException | None]:
    """One request straight through tritonclient, no retries: (seconds, its error or None)."""
    records = triton_grpc.InferInput(contract.RECORDS, [len(rows), 1], "BYTES")
    records.set_data_from_numpy(np.array(rows, dtype=np.object_).reshape(-1, 1))
    started = time.perf_counter()
    try:
        client.infer(contract.ENSEMBLE, [records], client_timeout=30)
    except InferenceServerException as e:
        return time.perf_counter() - started, e
    return time.perf_counter() - started, None


def run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def failed_requests(triton: server.TritonServer) -> int:
    """The ensemble's failed requests so far, from Triton's statistics (refusals included)."""
    client = triton_grpc.InferenceServerClient(triton.grpc_url)
    try:
        [stats] = client.get_inference_statistics(contract.ENSEMBLE).model_stats
        return stats.inference_stats.fail.count
    finally:
        client.close()


def test_a_spike_beyond_the_bound_is_refused_fast_and_the_rest_meets_the_slo(bounded_triton):
    lines = record_lines(RECORDS_PER_REQUEST * SPIKE_REQUESTS)  # the file holds fewer: reused
    batches = [
        [lines[(i * RECORDS_PER_REQUEST + j) % len(lines)] for j in range(RECORDS_PER_REQUEST)]
        for i in range(SPIKE_REQUESTS)
    ]
    client = triton_grpc.InferenceServerClient(bounded_triton.grpc_url)
    try:
        alone_s = statistics.median(infer_raw(client, batches[0])[0] for _ in range(5))
        with ThreadPoolExecutor(SPIKE_CONCURRENCY) as pool:
            outcomes = list(pool.map(lambda rows: infer_raw(client, rows), batches))
    finally:
        client.close()

    accepted_s = [seconds for seconds, error in outcomes if error is None]
    refusals = [(seconds, error) for seconds, error in outcomes if error is not None]
    assert accepted_s and refusals, f"{len(accepted_s)} accepted, {len(refusals)} refused"
    assert len(accepted_s) + len(refusals) == SPIKE_REQUESTS
    assert any(QUEUE_FULL in error.message() for _, error in refusals)
    for seconds, error in refusals:
        # e.g. "in ensemble 'ubm', [request id: <id_unknown>] Exceeds maximum queue size"
        assert error.status() == UNAVAILABLE, error
        assert error.message().startswith(f"in ensemble '{contract.ENSEMBLE}', "), error
        assert error.message().endswith((QUEUE_FULL, QUEUE_TIMEOUT)), error
        # The SDK retries it (a queue timeout only while the client still waits)...
        assert is_retryable(error, model_was_served=True, shed=True), error
        if QUEUE_FULL in error.message():  # ...and a full queue is overload once it gives up
            assert isinstance(from_triton_error(error), ServerUnavailableError)
        assert seconds < REFUSAL_BOUND_S, f"refused after {seconds:.3f} s"
    # An accepted request waited behind at most QUEUE_BOUND others in each model's queue.
    slo_s = SLO_SLACK_S + SLO_SLOWDOWN * (QUEUE_BOUND + 1) * alone_s
    accepted_p99_s = float(np.percentile(accepted_s, 99))
    assert accepted_p99_s < slo_s, f"p99 {accepted_p99_s:.3f} s over the SLO {slo_s:.3f} s"
    print(
        f"{len(accepted_s)} accepted (p99 {accepted_p99_s * 1000:.0f} ms, SLO"
        f" {slo_s * 1000:.0f} ms), {len(refusals)} refused"
        f" (slowest {max(s for s, _ in refusals) * 1000:.0f} ms)"
    )


def test_the_cli_scores_every_line_once_through_the_overload(bounded_triton, tmp_path):
    lines = record_lines(60)
    records_file = tmp_path / "records.jsonl"
    records_file.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "scores.jsonl"
    refused_before = failed_requests(bounded_triton)

    # 16 requests in flight against queues of 2: the CLI overloads the server by itself.
    done = run(
        str(UBM_CLIENT),
        *("score", str(records_file), "--url", bounded_triton.grpc_url, "--batch-size", "1"),
        *("--concurrency", "16", "-o", str(out), "-q"),
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row.get("id") for row in rows] == [json.loads(line)["id"] for line in lines]
    assert all("error" not in row and 0 <= row["purchase_probability"] <= 1 for row in rows)
    # The server refused some of the CLI's requests, which the SDK retried until answered.
    assert failed_requests(bounded_triton) > refused_before


def test_locust_reports_refusals_apart_from_failures(bounded_triton, tmp_path):
    done = run(
        sys.executable,
        *(str(LOADTEST / "run.py"), "--url", bounded_triton.grpc_url, "--users", "16"),
        *("--run-time", "3s", "--out", str(tmp_path), "--", "--retry-deadline", "0"),
    )
    # Refusals are no failures: the run passes the default --max-fail-ratio 0.
    assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "ubm_stats.csv") as f:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
    accepted = rows[("grpc", "score_batch[1]")]
    assert int(accepted["Request Count"]) > 0 and int(accepted["Failure Count"]) == 0
    refused = rows[("refused", "score_batch[1] (queue full)")]
    assert int(refused["Request Count"]) > 0 and int(refused["Failure Count"]) == 0
    assert "refused by the server's queue bound, not failures" in done.stderr


def test_spike_compare_measures_both_queue_policies(tiny_model, tiny_onnx, tmp_path):
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    encoder_onnx, head_onnx = tiny_onnx
    shutil.copy2(encoder_onnx, onnx_dir / "encoder-fp32.onnx")
    shutil.copy2(head_onnx, onnx_dir / "head.onnx")
    out = tmp_path / "spike.json"
    done = run(
        sys.executable,
        *(str(LOADTEST / "spike_compare.py"), "--model-dir", str(tiny_model[1])),
        *("--onnx-dir", str(onnx_dir), "--encoder-variant", "fp32", "--rounds", "1"),
        *("--time-scale", "0.05", "--max-queue-size", "1", "--queue-timeout-ms", "500"),
        *("--run-dir", str(tmp_path / "run"), "--out", str(out)),
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    variants = {variant["name"]: variant for variant in result["variants"]}
    assert variants["bounded"]["queue"] == {"max_queue_size": 1, "queue_timeout_ms": 500}
    assert variants["unbounded"]["queue"] == {"max_queue_size": 0, "queue_timeout_ms": 300000}
    assert [stage["users"] for stage in result["stages"]] == [2, 32, 2]
    for variant in variants.values():
        assert variant["total"]["accepted"] > 0 and variant["total"]["failures"] == 0
        assert len(variant["stages"]) == 3 and len(variant["rounds"]) == 1
    assert variants["unbounded"]["total"]["refused"] == 0  # nothing to refuse with
    assert "unbounded" in done.stdout and f"wrote {out}" in done.stdout


def test_refusals_are_told_from_other_errors(loadtest_module):
    refusals = loadtest_module("refusals")
    full = f"in ensemble 'ubm', [request id: <id_unknown>] {QUEUE_FULL}"
    timed_out = f"in ensemble 'ubm', {QUEUE_TIMEOUT}"
    shed = f"the server stayed overloaded: {timed_out}"
    assert refusals.refusal_reason(ServerUnavailableError(full)) == refusals.QUEUE_FULL
    assert refusals.refusal_reason(ServerUnavailableError(shed)) == refusals.QUEUE_TIMEOUT
    # The client's own timeout passed: nobody waits for the answer, a failure.
    assert refusals.refusal_reason(RequestTimeoutError(timed_out)) is None
    assert refusals.refusal_reason(ServerUnavailableError("failed to connect")) is None
    assert refusals.refusal_reason(None) is None


def test_the_spike_recorder_sorts_requests_by_stage_and_outcome(loadtest_module):
    spike_stats = loadtest_module("spike_stats")
    recorder = spike_stats.SpikeRecorder(2)
    recorder.on_request(response_time=1.0, request_type="grpc")  # before the first stage
    recorder.stage = 0
    recorder.on_request(response_time=10.0, request_type="grpc")
    recorder.on_request(
        response_time=2.0, request_type="refused", context={"refused": "queue full"}
    )
    recorder.stage = 1
    recorder.on_request(response_time=30.0, request_type="grpc", exception=RuntimeError())
    recorder.on_request(response_time=20.0, request_type="grpc")
    first, second = recorder.stages
    assert (first.accepted_ms, first.refused_ms, first.failures) == ([10.0], [2.0], 0)
    assert (second.accepted_ms, second.refused_ms, second.failures) == ([20.0], [], 1)
    total = spike_stats.summary(spike_stats.Outcomes.merged(recorder.stages), seconds=2.0)
    assert total == {
        "accepted": 2,
        "accepted_per_s": 1.0,
        "refused": 1,
        "refused_by_reason": {"queue full": 1},
        "failures": 1,
        "accepted_p50_ms": 15.0,
        "accepted_p99_ms": 19.9,
        "refused_p50_ms": 2.0,
        "refused_p99_ms": 2.0,
    }
    assert spike_stats.summary(spike_stats.Outcomes(), 1.0)["accepted_p99_ms"] is None


def test_the_spike_scales_in_time_and_users(loadtest_module):
    stages = loadtest_module("stages")
    scaled = loadtest_module("spike_stats").scaled_stages(stages.SPIKE, 0.5, 64)
    assert [stage.users for stage in scaled] == [2, 64, 2]
    assert [stage.seconds for stage in scaled] == [s.seconds * 0.5 for s in stages.SPIKE]
    assert scaled[1].spawn_rate == 100.0  # 32 * 2 / 0.5, capped
    assert loadtest_module("spike_stats").scaled_stages(stages.SPIKE, 1.0, 32) == list(stages.SPIKE)
