"""The python-backend models as served, run in-process against a fake `triton_python_backend_utils`.

Each model file is loaded from the tiny repository (the copy Triton would load, next to its
modules), `pb_utils` is replaced by the fake below, and `initialize` / `execute` run for real.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from ubm import contract, parse_record
from ubm_build import export
from ubm_build.inputs.behaviour_text import encode_events
from ubm_build.serving.triton_models import onnx_model

HUGE = 10_000_000
"""A 10 MB value inside a record: echoed in an error, gRPC would refuse the message."""


class FakeTensor:
    def __init__(self, name: str, data: np.ndarray) -> None:
        self._name = name
        self._data = data

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data


class FakeTritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error

    def __getitem__(self, name: str) -> np.ndarray:
        assert self.error is None, self.error.message()
        return self.outputs[name]


class FakeRequest:
    def __init__(self, cancelled: bool = False, **inputs: np.ndarray) -> None:
        self._inputs = [FakeTensor(name, data) for name, data in inputs.items()]
        self._cancelled = cancelled

    def inputs(self) -> list[FakeTensor]:
        return self._inputs

    def is_cancelled(self) -> bool:
        return self._cancelled


class FakeLogger:
    messages: ClassVar[list[str]] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.messages.append(message)

    log_warn = log_error = log_verbose = log_info


def get_input_tensor_by_name(request: FakeRequest, name: str) -> FakeTensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


FAKE_PB_UTILS = SimpleNamespace(
    Tensor=FakeTensor,
    TritonError=FakeTritonError,
    InferenceResponse=FakeResponse,
    Logger=FakeLogger,
    get_input_tensor_by_name=get_input_tensor_by_name,
)
FLAT_MODULES = ("contract", "records", "behaviour_text", "features")
"""Modules the served model files import from their own directory."""


def load_served(repository: Path, model: str) -> Any:
    """`<model>/1/model.py` of `repository`, initialized, with the fake `pb_utils`."""
    directory = repository / model / "1"
    saved = {name: sys.modules.pop(name) for name in FLAT_MODULES if name in sys.modules}
    sys.path.insert(0, str(directory))
    try:
        spec = importlib.util.spec_from_file_location(f"served_{model}", directory / "model.py")
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(directory))
        for name in FLAT_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    module.pb_utils = FAKE_PB_UTILS
    pbtxt = (repository / model / "config.pbtxt").read_text()
    config = json_format.MessageToDict(
        text_format.Parse(pbtxt, model_config_pb2.ModelConfig()),
        preserving_proto_field_name=True,
    )
    instance = module.TritonPythonModel()
    instance.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(repository / model),
            "model_version": "1",
        }
    )
    instance.module = module
    return instance


@pytest.fixture(scope="module")
def preprocess(tiny_repository):
    return load_served(tiny_repository, contract.PREPROCESS)


@pytest.fixture(scope="module")
def encoder(tiny_repository):
    return load_served(tiny_repository, contract.ENCODER)


@pytest.fixture(scope="module")
def head(tiny_repository):
    return load_served(tiny_repository, contract.HEAD)


@pytest.fixture(autouse=True)
def fresh_log() -> Iterator[list[str]]:
    FakeLogger.messages = []
    yield FakeLogger.messages


@pytest.fixture(scope="module")
def records(examples) -> list[dict]:
    return [ex.to_record() for ex in examples["test"][:12]]


def records_request(*records: dict | bytes, cancelled: bool = False) -> FakeRequest:
    rows = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
    return FakeRequest(cancelled, **{contract.RECORDS: np.array(rows, dtype=object).reshape(-1, 1)})


def with_event(record: dict, **changes: Any) -> dict:
    """`record` with its first event changed."""
    first, *rest = record["events"]
    return {**record, "events": [{**first, **changes}, *rest]}


def assert_error(response: FakeResponse, code: int, *fragments: str) -> str:
    assert response.error is not None, "expected an error response"
    message = response.error.message()
    assert response.error.code() == code, message
    assert len(message) <= onnx_model.MAX_ERROR_CHARS, f"a message of {len(message)} characters"
    for fragment in fragments:
        assert fragment in message
    return message


def token_request(tokenizer, records: list[dict], cancelled: bool = False) -> FakeRequest:
    ids, mask = encode_events(tokenizer, [parse_record(r).events for r in records], 64)
    return FakeRequest(cancelled, **{contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})


def test_both_models_cut_errors_to_the_same_bound(preprocess):
    assert preprocess.module.MAX_ERROR_CHARS == onnx_model.MAX_ERROR_CHARS
    for module in (preprocess.module, onnx_model):
        assert module.short("x" * HUGE) == "x" * (module.MAX_ERROR_CHARS - 3) + "..."
        assert module.short("short") == "short"


def test_preprocess_fails_only_the_requests_with_bad_records(preprocess, records):
    good = [records_request(*records[i : i + 3]) for i in (0, 3, 6, 9)]
    bad = [
        records_request(records[0], with_event(records[1], ts=1512172800000), records[2]),
        records_request(records[0], with_event(records[1], type="x" * HUGE)),
        records_request(records[0], with_event(records[1], ts=2**62)),
        records_request(records[0], b"not json"),
        records_request(records[0], {**records[1], "events": []}),
    ]
    batch = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], bad[4], good[3]]
    responses = preprocess.execute(batch)
    assert len(responses) == len(batch)

    alone = [preprocess.execute([request])[0] for request in good]
    for request in good:
        response = responses[batch.index(request)]
        expected = alone[good.index(request)]
        for name in (contract.INPUT_IDS, contract.ATTENTION_MASK, contract.FEATURES):
            np.testing.assert_array_equal(response[name], expected[name])
    for request in bad:
        message = assert_error(
            responses[batch.index(request)], FakeTritonError.INVALID_ARG, "record 1: "
        )
        assert "xxxxxxxxxx" * 100 not in message


@pytest.mark.parametrize(
    ("failure", "fragment"),
    [
        (OverflowError("date value out of range"), "cannot be processed (OverflowError)"),
        (None, "give non-finite features"),
    ],
)
def test_preprocess_blames_the_record_the_feature_code_cannot_take(
    preprocess, records, monkeypatch, failure, fragment
):
    """Records that pass the schema but break the feature code (as a ts in milliseconds did
    before the schema bounded it) fail their own request, naming the record."""
    real = preprocess.module.model_inputs

    def fragile(tokenizer: Any, sequences: list, max_length: int) -> Any:
        inputs = real(tokenizer, sequences, max_length)
        for row, events in enumerate(sequences):
            if any(event.item == "cursed" for event in events):
                if failure is not None:
                    raise failure
                inputs.features[row, 0] = np.nan
        return inputs

    monkeypatch.setattr(preprocess.module, "model_inputs", fragile)
    cursed = with_event(records[4], item="cursed")
    good = records_request(*records[:3])
    responses = preprocess.execute([good, records_request(records[3], cursed, records[5])])
    assert responses[0].error is None
    assert_error(responses[1], FakeTritonError.INVALID_ARG, f"record 1: its events {fragment}")


def test_preprocess_reports_a_server_bug_briefly(preprocess, records, monkeypatch, fresh_log):
    def broken(*args: Any) -> None:
        raise RuntimeError("/srv/secret/path.py exploded " + "y" * 2000)

    monkeypatch.setattr(preprocess.module, "model_inputs", broken)
    response = preprocess.execute([records_request(records[0])])[0]
    message = assert_error(response, FakeTritonError.INTERNAL, "preprocess")
    assert "/srv/secret" not in message and "Traceback" not in message
    assert any("Traceback" in line and "exploded" in line for line in fresh_log)


def test_preprocess_skips_a_cancelled_request(preprocess, records, monkeypatch):
    calls = []
    real = preprocess.module.model_inputs
    monkeypatch.setattr(
        preprocess.module, "model_inputs", lambda *a: calls.append(len(a[1])) or real(*a)
    )
    responses = preprocess.execute(
        [records_request(records[0]), records_request(*records[1:4], cancelled=True)]
    )
    assert responses[0].error is None
    assert_error(responses[1], FakeTritonError.CANCELLED)
    assert calls == [1]


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
