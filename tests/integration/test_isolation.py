"""A bad request fails alone: the real server, good and bad clients at the same time.

Bad requests go to the ensemble (records the schema or the feature code cannot take) and
straight to `encoder` and `head` (ids outside the vocabulary, NaN features), while other
threads send good ones. The dynamic batchers mix them into the same batches; every good request
must still succeed with the right scores, every bad one fail with INVALID_ARGUMENT and a short
message.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import islice

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ubm import contract
from ubm_build.serving.triton_models import responses

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ENSEMBLE_PREFIX = f"in ensemble '{contract.ENSEMBLE}', "
"""Triton puts this before the error message of a step of the ensemble."""
MAX_MESSAGE = responses.MAX_ERROR_CHARS + len(ENSEMBLE_PREFIX)
HUGE = 10_000_000
GOOD_REQUESTS = 48
BAD_REPEATS = 4
THREADS = 12


def tensor(name: str, array: np.ndarray) -> grpcclient.InferInput:
    datatype = {"O": "BYTES", "i": "INT64", "f": "FP32"}[array.dtype.kind]
    infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def records_inputs(*records: dict) -> list[grpcclient.InferInput]:
    rows = np.array([orjson.dumps(r) for r in records], dtype=object).reshape(-1, 1)
    return [tensor(contract.RECORDS, rows)]


def with_event(record: dict, **changes: object) -> dict:
    """`record` with its first event changed."""
    first, *rest = record["events"]
    return {**record, "events": [{**first, **changes}, *rest]}


@dataclass(frozen=True)
class Call:
    model: str
    inputs: list[grpcclient.InferInput]
    expected: str
    """For a good call, the output to compare; for a bad one, a fragment of the error."""
    reference: np.ndarray | None = None


def send(
    client: grpcclient.InferenceServerClient, call: Call
) -> grpcclient.InferResult | InferenceServerException:
    try:
        return client.infer(call.model, call.inputs, client_timeout=120)
    except InferenceServerException as e:
        return e


def run_concurrently(url: str, calls: list[Call]) -> list:
    """Each call's result or error, sent from `THREADS` threads with a client each."""
    local = threading.local()
    clients: list[grpcclient.InferenceServerClient] = []

    def send_from_this_thread(call: Call) -> grpcclient.InferResult | InferenceServerException:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
            clients.append(local.client)
        return send(local.client, call)

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(send_from_this_thread, calls))
    finally:
        for client in clients:
            client.close()


@pytest.fixture(scope="module")
def good_calls(triton, examples) -> list[Call]:
    """Ensemble and direct head calls, each with the answer it gets when sent alone."""
    records = [ex.to_record() for ex in examples["test"][: GOOD_REQUESTS * 2]]
    calls = []
    with closing(grpcclient.InferenceServerClient(triton.grpc_url)) as client:
        for i in range(GOOD_REQUESTS):
            pair = records[2 * i : 2 * i + 2]
            alone = client.infer(contract.ENSEMBLE, records_inputs(*pair))
            probability = alone.as_numpy(contract.PURCHASE_PROBABILITY)
            calls.append(
                Call(
                    contract.ENSEMBLE,
                    records_inputs(*pair),
                    contract.PURCHASE_PROBABILITY,
                    probability,
                )
            )
            if i % 4 == 0:  # the head, called directly with what preprocess and encoder gave
                features = client.infer(contract.PREPROCESS, records_inputs(*pair))
                inputs = [
                    tensor(contract.EMBEDDING, alone.as_numpy(contract.EMBEDDING)),
                    tensor(contract.FEATURES, features.as_numpy(contract.FEATURES)),
                ]
                calls.append(
                    Call(contract.HEAD, inputs, contract.PURCHASE_PROBABILITY, probability)
                )
    return calls


def bad_ensemble_calls(record: dict) -> list[Call]:
    """Records the schema or the feature code cannot take, each beside a good record."""

    def ensemble(bad: dict) -> Call:
        return Call(contract.ENSEMBLE, records_inputs(record, bad), "record 1: ")

    return [
        ensemble(with_event(record, ts=1512172800000)),  # milliseconds
        ensemble(with_event(record, ts=2**62)),
        ensemble(with_event(record, type="x" * HUGE)),
        ensemble(with_event(record, item="7" * HUGE)),
    ]


def bad_direct_calls(vocab_size: int, hidden: int, n_features: int) -> list[Call]:
    """Direct encoder and head calls with ids outside the vocabulary or non-finite floats."""
    ids = np.array([[101, 2000, 2001, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    embedding = np.zeros((1, hidden), dtype=np.float32)
    features = np.zeros((1, n_features), dtype=np.float32)
    nan_features, inf_embedding = features.copy(), embedding.copy()
    nan_features[0, 5] = np.nan
    inf_embedding[0, 1] = -np.inf

    def encoder(bad_ids: np.ndarray) -> Call:
        inputs = [tensor(contract.INPUT_IDS, bad_ids), tensor(contract.ATTENTION_MASK, mask)]
        return Call(contract.ENCODER, inputs, contract.INPUT_IDS)

    def head(bad_embedding: np.ndarray, bad_features: np.ndarray) -> Call:
        inputs = [
            tensor(contract.EMBEDDING, bad_embedding),
            tensor(contract.FEATURES, bad_features),
        ]
        return Call(contract.HEAD, inputs, "must be finite")

    return [
        encoder(-ids),
        encoder(np.where(ids == 2000, vocab_size, ids)),
        head(embedding, nan_features),
        head(inf_embedding, features),
    ]


def test_bad_requests_fail_alone_while_good_ones_succeed(
    triton, examples, tokenizer, tiny_model, good_calls
):
    model, _ = tiny_model
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    bad = BAD_REPEATS * [
        *bad_ensemble_calls(examples["test"][0].to_record()),
        *bad_direct_calls(vocab_size, model.spec.hidden_size, len(model.spec.feature_names)),
    ]
    # Interleaved, so that bad requests arrive while good ones queue, and the other way round.
    step = max(1, len(good_calls) // len(bad))
    remaining_bad = iter(bad)
    calls: list[Call] = []
    for i, call in enumerate(good_calls):
        calls.append(call)
        if i % step == 0:
            calls.extend(islice(remaining_bad, 1))
    calls.extend(remaining_bad)

    outcomes = run_concurrently(triton.grpc_url, calls)

    failed_good = [
        f"{call.model}: {outcome}"[:300]
        for call, outcome in zip(calls, outcomes, strict=True)
        if call.reference is not None and isinstance(outcome, InferenceServerException)
    ]
    assert failed_good == []
    for call, outcome in zip(calls, outcomes, strict=True):
        if call.reference is not None:
            np.testing.assert_allclose(outcome.as_numpy(call.expected), call.reference, atol=1e-4)
        else:
            assert isinstance(outcome, InferenceServerException), f"{call.model} accepted"
            message = outcome.message()
            assert outcome.status() == "StatusCode.INVALID_ARGUMENT", message[:300]
            assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:300]}"
            assert call.expected in message, message


def test_a_request_is_dropped_once_it_waited_longer_than_its_timeout(triton, examples):
    """The request's own timeout (µs) reaches every step's queue; one of 1 µs has always
    expired by the time a batcher looks at it, so it is rejected without being computed."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inputs = records_inputs(examples["test"][0].to_record())
    with pytest.raises(InferenceServerException) as info:
        client.infer(contract.ENSEMBLE, inputs, timeout=1)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "Request timeout expired" in info.value.message()
    result = client.infer(contract.ENSEMBLE, inputs, timeout=60_000_000)
    assert result.as_numpy(contract.PURCHASE_PROBABILITY).shape == (1, 1)
