"""The python-backend model `preprocess` as served, run in-process against a fake
`triton_python_backend_utils` (tests/fake_python_backend.py) on hand-made records.

Its model file is loaded from a repository that `write_repository` wrote with the packaged
tokenizer (the copy Triton would load, next to its modules); `initialize` / `execute` run for
real. `encoder` and `head` need real graphs: tests/integration/test_onnx_models.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fake_python_backend import (
    FakeLogger,
    FakeTritonError,
    assert_error,
    load_served,
    records_request,
    with_event,
)

from ubm import contract
from ubm_build.inputs.features import FEATURE_NAMES
from ubm_build.model.network import DEFAULT_BASE_MODEL
from ubm_build.serving import repository
from ubm_build.serving.triton_models import responses

HUGE = 10_000_000
"""A 10 MB value inside a record: echoed in an error, gRPC would refuse the message."""
T0 = 1_512_172_800


@pytest.fixture(scope="module")
def preprocess(tmp_path_factory) -> Any:
    """`preprocess` of a repository whose graphs are placeholders: it never reads them."""
    out = tmp_path_factory.mktemp("repository")
    placeholder = out / "placeholder.onnx"
    placeholder.write_bytes(b"not read by preprocess")
    spec = repository.RepositorySpec(max_length=64, hidden_size=32, n_features=len(FEATURE_NAMES))
    written = repository.write_repository(
        out / "repository",
        spec,
        tokenizer_json=DEFAULT_BASE_MODEL / "tokenizer.json",
        encoder_onnx=placeholder,
        head_onnx=placeholder,
    )
    return load_served(written, contract.PREPROCESS)


@pytest.fixture(autouse=True)
def fresh_log() -> Iterator[list[str]]:
    yield FakeLogger.fresh()


def event(ts: int, kind: str, item: int) -> dict:
    return {"ts": ts, "type": kind, "item": str(item), "category": "7"}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """12 valid records of 1 to 5 events."""
    kinds = ("view", "cart", "fav", "buy")
    return [
        {
            "id": f"u{i}",
            "events": [event(T0 + 60 * j, kinds[(i + j) % 4], 100 + j) for j in range(1 + i % 5)],
        }
        for i in range(12)
    ]


def test_errors_are_cut_short():
    assert responses.short("x" * HUGE) == "x" * (responses.MAX_ERROR_CHARS - 3) + "..."
    assert responses.short("short") == "short"


def test_a_logged_traceback_leaves_out_the_message_that_may_quote_a_record():
    item = "SENTINEL-ITEM-918273645"
    try:
        int(item)
    except ValueError as e:
        logged = responses.traceback_without_values(e)
    assert "ValueError" in logged and "test_triton_models.py" in logged
    assert "SENTINEL" not in logged and "918273645" not in logged


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
    detail = "/srv/secret/path.py exploded " + "y" * 2000

    def broken(*args: Any) -> None:
        raise RuntimeError(detail)

    monkeypatch.setattr(preprocess.module, "model_inputs", broken)
    response = preprocess.execute([records_request(records[0])])[0]
    message = assert_error(response, FakeTritonError.INTERNAL, "preprocess")
    assert "/srv/secret" not in message and "Traceback" not in message
    # The log says where it failed, not the exception's message, which could quote a record.
    assert any("RuntimeError" in line and "broken" in line for line in fresh_log)
    assert not any("exploded" in line for line in fresh_log)


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
