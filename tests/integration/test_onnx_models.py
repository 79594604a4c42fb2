"""The python-backend models `encoder` and `head` as served from the tiny model's repository, run
in-process against a fake `triton_python_backend_utils` (tests/fake_python_backend.py) on real
test-window records.

`preprocess`, which needs no graph: tests/unit/test_triton_models.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_python_backend import (
    FakeLogger,
    FakeRequest,
    FakeTritonError,
    assert_error,
    get_input_tensor_by_name,
    load_served,
)

from ubm import contract, parse_record
from ubm_build import export
from ubm_build.inputs.behaviour_text import encode_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder(tiny_repository):
    return load_served(tiny_repository, contract.ENCODER)


@pytest.fixture(scope="module")
def head(tiny_repository):
    return load_served(tiny_repository, contract.HEAD)


@pytest.fixture(autouse=True)
def fresh_log() -> Iterator[list[str]]:
    yield FakeLogger.fresh()


@pytest.fixture(scope="module")
def records(examples) -> list[dict]:
    return [ex.to_record() for ex in examples["test"][:12]]


def token_request(tokenizer, records: list[dict], cancelled: bool = False) -> FakeRequest:
    ids, mask, _ = encode_events(tokenizer, [parse_record(r).events for r in records], 64)
    return FakeRequest(cancelled, **{contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})


def run_alone(path: Path, request: FakeRequest, names: list[str], output: str) -> np.ndarray:
    feeds = {name: get_input_tensor_by_name(request, name).as_numpy() for name in names}
    return export.ort_session(path).run([output], feeds)[0]


def test_encoder_stacks_a_ragged_batch(encoder, tokenizer, records, tiny_onnx):
    one_event = {**records[0], "events": records[0]["events"][-1:]}
    requests = [
        token_request(tokenizer, [one_event]),
        token_request(tokenizer, records[1:6]),
        token_request(tokenizer, [one_event, one_event]),
        token_request(tokenizer, records[6:12]),  # 14 rows in all: more than rows_per_run
    ]
    lengths = {r.inputs()[0].as_numpy().shape[1] for r in requests}
    assert len(lengths) > 1, "the test needs requests of different sequence lengths"
    responses = encoder.execute(requests)
    for request, response in zip(requests, responses, strict=True):
        expected = run_alone(tiny_onnx[0], request, encoder.inputs, contract.EMBEDDING)
        np.testing.assert_allclose(response[contract.EMBEDDING], expected, atol=1e-5)


def tokens(ids: np.ndarray, mask: np.ndarray | None = None) -> FakeRequest:
    mask = np.ones_like(ids) if mask is None else mask
    return FakeRequest(**{contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})


def test_encoder_rejects_bad_tokens_for_their_own_request(encoder, tokenizer, records):
    ids = np.array([[101, 2000, 102]], dtype=np.int64)
    vocab = encoder.vocab_size
    bad = {
        "must lie in [0, ": tokens(ids * -1),
        f"[0, {vocab})": tokens(np.array([[101, vocab, 102]])),
        "only 0 and 1": tokens(ids, np.array([[1, 2, 1]])),
        "shape of input_ids": tokens(ids, np.ones((1, 2), dtype=np.int64)),
        "attend to a token": tokens(np.repeat(ids, 2, 0), np.array([[1, 1, 1], [0, 0, 0]])),
        "length <= 64": tokens(np.full((1, 65), 2000)),
    }
    good = [token_request(tokenizer, records[:3]), token_request(tokenizer, records[3:4])]
    batch = [good[0], *bad.values(), good[1]]
    responses = encoder.execute(batch)
    for fragment, request in bad.items():
        assert_error(responses[batch.index(request)], FakeTritonError.INVALID_ARG, fragment)
    for request in good:
        alone = encoder.execute([request])[0][contract.EMBEDDING]
        np.testing.assert_allclose(
            responses[batch.index(request)][contract.EMBEDDING], alone, atol=1e-5
        )


def features_request(embedding: np.ndarray, features: np.ndarray) -> FakeRequest:
    return FakeRequest(**{contract.EMBEDDING: embedding, contract.FEATURES: features})


def test_head_rejects_non_finite_and_misshapen_inputs(head, tiny_model):
    model, _ = tiny_model
    hidden, n_features = model.spec.hidden_size, len(model.spec.feature_names)
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(2, hidden)).astype(np.float32)
    features = rng.normal(size=(2, n_features)).astype(np.float32)
    nan_features, inf_embedding = features.copy(), embedding.copy()
    nan_features[1, 3] = np.nan
    inf_embedding[0, 0] = np.inf
    good = features_request(embedding, features)
    bad = {
        "features must be finite": features_request(embedding, nan_features),
        "embedding must be finite": features_request(inf_embedding, features),
        f"[n, {n_features}]": features_request(embedding, features[:, :-1]),
    }
    responses = head.execute([*bad.values(), good])
    for response, fragment in zip(responses[:-1], bad, strict=True):
        assert_error(response, FakeTritonError.INVALID_ARG, fragment)
    alone = head.execute([good])[0]
    np.testing.assert_allclose(
        responses[-1][contract.PURCHASE_PROBABILITY],
        alone[contract.PURCHASE_PROBABILITY],
        atol=1e-6,
    )


class CountingSession:
    """Wraps an ONNX Runtime session: counts the rows it runs, fails on a poisoned token id."""

    def __init__(self, session: Any, poison: int | None = None) -> None:
        self.session = session
        self.poison = poison
        self.rows = 0

    def run(self, outputs: list[str], feeds: dict) -> list[np.ndarray]:
        ids = feeds[contract.INPUT_IDS]
        if self.poison is not None and (ids == self.poison).any():
            raise RuntimeError("/srv/onnx/model.onnx: node Gather_7 failed")
        self.rows += len(ids)
        return self.session.run(outputs, feeds)


def test_encoder_skips_a_cancelled_request(encoder, tokenizer, records, monkeypatch):
    counting = CountingSession(encoder.session)
    monkeypatch.setattr(encoder, "session", counting)
    requests = [
        token_request(tokenizer, records[:2]),
        token_request(tokenizer, records[2:7], cancelled=True),
    ]
    responses = encoder.execute(requests)
    assert responses[0].error is None
    assert_error(responses[1], FakeTritonError.CANCELLED)
    assert counting.rows == 2


def test_a_failing_batch_is_rerun_request_by_request(
    encoder, tokenizer, records, monkeypatch, fresh_log
):
    poison = 2000
    monkeypatch.setattr(encoder, "session", CountingSession(encoder.session, poison))
    poisoned = tokens(np.array([[101, poison, 102]]))
    good = [token_request(tokenizer, records[:3]), token_request(tokenizer, records[3:5])]
    assert not any((r.inputs()[0].as_numpy() == poison).any() for r in good)
    responses = encoder.execute([good[0], poisoned, good[1]])
    assert responses[0].error is None and responses[2].error is None
    assert responses[2][contract.EMBEDDING].shape[0] == 2
    message = assert_error(responses[1], FakeTritonError.INTERNAL, "encoder")
    assert "/srv" not in message and "Gather" not in message
    assert any("Gather_7" in line for line in fresh_log)  # the details stay in the server log
