"""The python-backend model `preprocess` as served, run in-process against a fake
`triton_python_backend_utils` (tests/fake_python_backend.py) on hand-made records.

Its model file is loaded from a repository that `write_repository` wrote with the packaged
tokenizer and a small hand-made snapshot (the copies Triton would load, next to its modules);
`initialize` / `execute` run for real. `encoder` and `head` need real graphs:
tests/integration/test_onnx_models.py.
"""

from __future__ import annotations

import dataclasses
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
from ubm.records import Event
from ubm_build.inputs.model_inputs import FEATURE_NAMES, RecordReader
from ubm_build.inputs.snapshot import SNAPSHOT_FEATURE_NAMES
from ubm_build.model.network import DEFAULT_BASE_MODEL, load_tokenizer
from ubm_build.serving import repository
from ubm_build.serving.triton_models import responses

HUGE = 10_000_000
"""A 10 MB value inside a record: echoed in an error, gRPC would refuse the message."""
T0 = 1_512_172_800


MAX_LENGTH = 64


@pytest.fixture(scope="module")
def preprocess(tmp_path_factory, snapshot_file) -> Any:
    """`preprocess` of a repository whose graphs are placeholders (it never reads them), with
    the snapshot's words in the text."""
    out = tmp_path_factory.mktemp("repository")
    placeholder = out / "placeholder.onnx"
    placeholder.write_bytes(b"not read by preprocess")
    spec = repository.RepositorySpec(
        max_length=MAX_LENGTH,
        hidden_size=32,
        n_features=len(FEATURE_NAMES),
        snapshot_words=True,
    )
    written = repository.write_repository(
        out / "repository",
        spec,
        tokenizer_json=DEFAULT_BASE_MODEL / "tokenizer.json",
        snapshot_file=snapshot_file,
        encoder=placeholder,
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
    real = preprocess.reader

    def fragile(sequences: list) -> Any:
        inputs = real(sequences)
        for row, events in enumerate(sequences):
            if any(event.item == "cursed" for event in events):
                if failure is not None:
                    raise failure
                inputs.features[row, 0] = np.nan
        return inputs

    monkeypatch.setattr(preprocess, "reader", fragile)
    cursed = with_event(records[4], item="cursed")
    good = records_request(*records[:3])
    responses = preprocess.execute([good, records_request(records[3], cursed, records[5])])
    assert responses[0].error is None
    assert_error(responses[1], FakeTritonError.INVALID_ARG, f"record 1: its events {fragment}")


def test_preprocess_reports_a_server_bug_briefly(preprocess, records, monkeypatch, fresh_log):
    detail = "/srv/secret/path.py exploded " + "y" * 2000

    def broken(*args: Any) -> None:
        raise RuntimeError(detail)

    monkeypatch.setattr(preprocess, "reader", broken)
    response = preprocess.execute([records_request(records[0])])[0]
    message = assert_error(response, FakeTritonError.INTERNAL, "preprocess")
    assert "/srv/secret" not in message and "Traceback" not in message
    # The log says where it failed, not the exception's message, which could quote a record.
    assert any("RuntimeError" in line and "broken" in line for line in fresh_log)
    assert not any("exploded" in line for line in fresh_log)


def test_preprocess_skips_a_cancelled_request(preprocess, records, monkeypatch):
    calls = []
    real = preprocess.reader
    monkeypatch.setattr(
        preprocess, "reader", lambda events: calls.append(len(events)) or real(events)
    )
    responses = preprocess.execute(
        [records_request(records[0]), records_request(*records[1:4], cancelled=True)]
    )
    assert responses[0].error is None
    assert_error(responses[1], FakeTritonError.CANCELLED)
    assert calls == [1]


def test_preprocess_reads_records_as_training_does_with_the_served_snapshot(
    preprocess, records, small_snapshot
):
    """The served inputs are the training reader's with the repository's snapshot and words,
    for ids the snapshot knows and ids it never saw."""
    unseen = {"id": "new", "events": [event(T0, "view", 999), event(T0 + 60, "cart", 105)]}
    batch = [
        *records[:4],
        unseen,
        {**unseen, "events": [{**e, "category": "x"} for e in unseen["events"]]},
    ]
    (response,) = preprocess.execute([records_request(*batch)])
    reader = RecordReader(load_tokenizer(DEFAULT_BASE_MODEL), MAX_LENGTH, small_snapshot, True)
    expected_events = [[Event(**e) for e in record["events"]] for record in batch]
    expected = reader(expected_events)
    np.testing.assert_array_equal(response[contract.INPUT_IDS], expected.ids)
    np.testing.assert_array_equal(response[contract.ATTENTION_MASK], expected.mask)
    np.testing.assert_array_equal(response[contract.FEATURES], expected.features)
    without_words = dataclasses.replace(reader, snapshot_words=False)(expected_events)
    # the words are in the served text: more tokens
    assert (expected.mask.sum(1) > without_words.mask.sum(1)).all()
    served = response[contract.FEATURES][:, -len(SNAPSHOT_FEATURE_NAMES) :]
    unseen_item = SNAPSHOT_FEATURE_NAMES.index("last_item_unseen")
    unseen_category = SNAPSHOT_FEATURE_NAMES.index("last_category_unseen")
    assert served[:, unseen_item].tolist() == [0, 0, 0, 0, 1, 1]
    assert served[:, unseen_category].tolist() == [0, 0, 0, 0, 0, 1]
