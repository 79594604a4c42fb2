"""The real Triton ensemble against the in-process PyTorch model."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch
import tritonclient.grpc as grpcclient
from conftest import TINY_SEGMENTS
from tritonclient.utils import InferenceServerException

from ubm import UbmClient, contract
from ubm_build.model.train import embed, events_of, predict

pytestmark = pytest.mark.integration


def infer(triton, payloads: list[bytes]) -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    records = grpcclient.InferInput(contract.RECORDS, [len(payloads), 1], "BYTES")
    records.set_data_from_numpy(np.array(payloads, dtype=object).reshape(-1, 1))
    return client.infer(contract.ENSEMBLE, [records])


def test_every_model_is_ready(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    assert client.is_server_ready()
    for name in (contract.ENSEMBLE, contract.PREPROCESS, contract.ENCODER, contract.HEAD):
        assert client.is_model_ready(name), name


def test_scores_match_in_process_pytorch(triton, tiny_model, tiny_reader, examples):
    model, _ = tiny_model
    sample = examples["test"][:100]
    result = infer(triton, [orjson.dumps(ex.to_record()) for ex in sample])
    served = result.as_numpy(contract.PURCHASE_PROBABILITY)
    assert served.shape == (len(sample), 1)
    expected = predict(model, tiny_reader, events_of(sample))
    np.testing.assert_allclose(served[:, 0], expected, atol=1e-5)

    embedding = result.as_numpy(contract.EMBEDDING)
    assert embedding.shape == (len(sample), model.spec.hidden_size)
    with torch.inference_mode():
        ids, mask = torch.tensor([[101, 102]]), torch.tensor([[1, 1]])
        assert model.encoder(ids, mask).shape[1] == embedding.shape[1]


def test_server_sorts_events_by_time(triton, examples):
    record = examples["test"][0].to_record()
    shuffled = {**record, "events": record["events"][::-1]}
    result = infer(triton, [orjson.dumps(record), orjson.dumps(shuffled)])
    probabilities = result.as_numpy(contract.PURCHASE_PROBABILITY)
    assert probabilities[0, 0] == pytest.approx(probabilities[1, 0], abs=1e-6)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"id": "a", "events": []}', "record 1: events must not be empty"),
        (b"not json", "record 1: not valid JSON"),
        (
            b'{"id": "a", "events": [{"ts": 1512172800, "type": "click", "item": "1"}]}',
            "events[0].type",
        ),
    ],
)
def test_bad_record_is_rejected_with_invalid_argument(triton, examples, payload, message):
    good = orjson.dumps(examples["test"][0].to_record())
    with pytest.raises(InferenceServerException) as info:
        infer(triton, [good, payload])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in info.value.message()
    # the server is still healthy afterwards
    assert infer(triton, [good]).as_numpy(contract.PURCHASE_PROBABILITY).shape == (1, 1)


def test_served_roc_auc_equals_in_process(triton, tiny_model, tiny_reader, examples):
    """The model card's promise holds through Triton: same ROC-AUC on the test window."""
    from sklearn.metrics import roc_auc_score

    from ubm_build.model.train import labels_of

    model, _ = tiny_model
    test = examples["test"]
    payloads = [orjson.dumps(ex.to_record()) for ex in test]
    served = np.concatenate(
        [
            infer(triton, payloads[i : i + 256]).as_numpy(contract.PURCHASE_PROBABILITY)[:, 0]
            for i in range(0, len(payloads), 256)
        ]
    )
    in_process = predict(model, tiny_reader, events_of(test))
    labels = labels_of(test)
    assert roc_auc_score(labels, served) == pytest.approx(
        roc_auc_score(labels, in_process), abs=1e-3
    )


def test_served_segment_equals_in_process_for_every_test_day_record(
    triton, tiny_model, tiny_reader, examples
):
    model, _ = tiny_model
    test = examples["test"]
    with UbmClient(triton.grpc_url, batch_size=256) as client:
        scores = client.score([ex.to_record() for ex in test], segment=True)
    served = np.array([s.segment for s in scores])
    distances = np.array([s.segment_distance for s in scores])
    with torch.inference_mode():
        embeddings = torch.from_numpy(embed(model, tiny_reader(events_of(test))))
        segment, distance = model.head.segment(embeddings)
    np.testing.assert_array_equal(served, segment[:, 0].numpy())
    np.testing.assert_allclose(distances, distance[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    assert len(np.unique(served)) == TINY_SEGMENTS  # every segment is used, not one catch-all
    assert [s.id for s in scores] == [ex.id for ex in test]
