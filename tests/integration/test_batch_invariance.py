"""Through the real server, a record scores the same alone and inside any batch.

The encoder stacks the requests of a dynamic batch, right-pads their token ids and runs them
8 records at a time, so a record shares its run with whatever else is in flight. Its score must
not depend on that: within float rounding for the fp32 encoder, within
`export.INT8_BATCH_BOUND` for the static int8 one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from conftest import write_tiny_repository

from ubm import contract
from ubm_build import export
from ubm_build.model.train import events_of
from ubm_build.serving import server, triton_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RECORDS = 48
REQUEST_SIZES = (1, 2, 3, 5, 8, 13)
ROUNDS = 3
CONCURRENCY = 8


def score(url: str, payloads: list[bytes]) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    records = grpcclient.InferInput(contract.RECORDS, [len(payloads), 1], "BYTES")
    records.set_data_from_numpy(np.array(payloads, dtype=object).reshape(-1, 1))
    result = client.infer(contract.ENSEMBLE, [records])
    return result.as_numpy(contract.PURCHASE_PROBABILITY)[:, 0]


def payloads_of(examples) -> list[bytes]:
    """Short and long sessions, so that batches mix padding widths."""
    test = sorted(examples["test"], key=lambda ex: len(ex.events))
    picked = test[:: max(1, len(test) // RECORDS)][:RECORDS]
    return [orjson.dumps(ex.to_record()) for ex in picked]


def largest_batch_dependence(triton: server.TritonServer, payloads: list[bytes]) -> float:
    """max |p alone - p in a batch|: one request per record, then shuffled requests of mixed
    sizes sent concurrently, so that the server's dynamic batcher stacks them."""
    url = triton.grpc_url
    alone = np.array([score(url, [payload])[0] for payload in payloads])
    before = triton_metrics.scrape(triton.metrics_url)
    worst = 0.0
    for seed in range(ROUNDS):
        order = random.Random(seed).sample(range(len(payloads)), len(payloads))
        requests, start = [], 0
        while start < len(order):
            size = REQUEST_SIZES[(seed + len(requests)) % len(REQUEST_SIZES)]
            requests.append(order[start : start + size])
            start += size
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = pool.map(lambda rows: score(url, [payloads[i] for i in rows]), requests)
            for rows, batched in zip(requests, results, strict=True):
                worst = max(worst, float(np.abs(batched - alone[rows]).max()))
    encoder = triton_metrics.split(before, triton_metrics.scrape(triton.metrics_url))[
        contract.ENCODER
    ]
    assert encoder.executions < encoder.requests, "no requests were batched together"
    return worst


def test_fp32_scores_a_record_the_same_alone_and_in_any_batch(triton, examples):
    assert largest_batch_dependence(triton, payloads_of(examples)) <= 1e-6


@pytest.fixture(scope="module")
def int8_static_server(
    tiny_model, tiny_onnx, tiny_reader, examples, tmp_path_factory
) -> Iterator[server.TritonServer]:
    """The tiny repository with the static int8 encoder, calibrated on train-window records."""
    model, model_dir = tiny_model
    encoder_fp32, head = tiny_onnx
    picked = random.Random(0).sample(examples["train"], 32)
    calibration = export.TokenCalibration(tiny_reader, events_of(picked))
    directory = tmp_path_factory.mktemp("int8_static")
    encoder = export.derive_variant(
        export.Variant.INT8_STATIC, encoder_fp32, model, directory / "encoder.onnx", calibration
    )
    repository_dir = write_tiny_repository(
        directory / "model_repository", model, model_dir, (encoder, head), canary=[]
    )
    ports = server.Ports.free()
    with server.TritonServer(repository_dir, workdir=directory / "triton", ports=ports) as triton:
        yield triton


def test_static_int8_scores_a_record_the_same_alone_and_in_any_batch(int8_static_server, examples):
    dependence = largest_batch_dependence(int8_static_server, payloads_of(examples))
    assert dependence <= export.INT8_BATCH_BOUND
