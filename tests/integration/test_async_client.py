"""`UbmClient` and `AsyncUbmClient` against the real tritonserver: the same cases for both."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SEGMENTS

from ubm import InvalidRecordError, contract, parse_record
from ubm_build.model.train import events_of, predict

pytestmark = pytest.mark.integration


def test_scores_equal_the_in_process_model(connect, triton, tiny_model, tiny_reader, examples):
    model, _ = tiny_model
    sample = examples["test"][:40]
    with connect(triton.grpc_url, batch_size=16) as client:
        assert client.is_ready()
        scores = client.score([ex.to_record() for ex in sample], embedding=True)
    assert [s.id for s in scores] == [ex.id for ex in sample]
    expected = predict(model, tiny_reader, events_of(sample))
    np.testing.assert_allclose([s.purchase_probability for s in scores], expected, atol=1e-5)
    assert {len(s.embedding) for s in scores} == {model.spec.hidden_size}


def test_score_iter_equals_score(connect, triton, examples):
    records = [ex.to_record() for ex in examples["test"][:50]]
    with connect(triton.grpc_url, batch_size=7) as client:
        streamed = list(client.score_iter(iter(records), max_in_flight=3))
        at_once = client.score(records)
    assert [s.id for s in streamed] == [s.id for s in at_once]
    np.testing.assert_allclose(
        [s.purchase_probability for s in streamed],
        [s.purchase_probability for s in at_once],
        atol=1e-5,
    )


def test_score_iter_stops_at_an_invalid_record(connect, triton, examples):
    records = [ex.to_record() for ex in examples["test"][:5]]
    records.insert(3, {"id": "bad", "events": []})
    with (
        connect(triton.grpc_url, batch_size=2) as client,
        pytest.raises(InvalidRecordError, match="record 3"),
    ):
        list(client.score_iter(records))


def test_score_batch_metadata_and_config(connect, triton, examples):
    record = parse_record(examples["test"][0].to_record())
    with connect(triton.grpc_url) as client:
        [score] = client.score_batch([record])
        [segmented] = client.score_batch([record], segment=True)
        metadata = client.metadata()
        config = client.config()
    assert score.id == record.id and 0 < score.purchase_probability < 1
    assert score.segment is None and score.segment_distance is None
    assert segmented.purchase_probability == score.purchase_probability
    assert 0 <= segmented.segment < TINY_SEGMENTS and segmented.segment_distance > 0
    assert metadata["name"] == contract.ENSEMBLE
    assert {t["name"] for t in metadata["outputs"]} == {
        contract.PURCHASE_PROBABILITY,
        contract.EMBEDDING,
        contract.SEGMENT,
        contract.SEGMENT_DISTANCE,
    }
    assert config["name"] == contract.ENSEMBLE
    assert config["max_batch_size"] == contract.MAX_BATCH_SIZE


def test_a_dead_endpoint_beside_a_live_one_is_skipped(connect, triton, examples):
    records = [ex.to_record() for ex in examples["test"][:8]]
    # 127.0.0.1:9 (discard) refuses connections on loopback.
    url = f"127.0.0.1:9,{triton.grpc_url}"
    with connect(url, batch_size=1, backoff_s=0.01, cooldown_s=60) as client:
        assert client.is_ready()
        scores = client.score(records)
    assert [s.id for s in scores] == [r["id"] for r in records]
