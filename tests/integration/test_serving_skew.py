"""No training/serving skew: for every test-window example, the token ids, attention mask and
features that the served `preprocess` model computes are bit-for-bit those training computed.

Training reads each example point-in-time (`point_in_time_inputs`: the snapshot as of the start
of the example's own day); the server reads every record with the snapshot in its repository
(as of the test day's start). The records go to `preprocess` directly, serialised as the SDK
sends them (`ubm._base.build_inputs`), so what comes back is exactly what the encoder and the
head are fed.
"""

from __future__ import annotations

from contextlib import closing

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from ubm import contract, parse_record
from ubm._base import build_inputs
from ubm_build import data
from ubm_build.data.point_in_time import (
    SERVING_AS_OF,
    DailySnapshots,
    EventLog,
    point_in_time_inputs,
    snapshot_time,
)
from ubm_build.inputs.model_inputs import FEATURE_NAMES, ModelInputs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RECORDS_PER_REQUEST = 64


@pytest.fixture(scope="module")
def trained(examples, tiny_reader) -> ModelInputs:
    """The test window's inputs as training read them."""
    snapshots = DailySnapshots(EventLog.read(data.DEFAULT_CSV))
    return point_in_time_inputs(tiny_reader, examples["test"], snapshots)


@pytest.fixture(scope="module")
def served(triton, examples) -> list[ModelInputs]:
    """`preprocess`'s outputs, one `ModelInputs` per request of `RECORDS_PER_REQUEST` records
    (`truncated` is not an output: left empty)."""
    records = [parse_record(ex.to_record()) for ex in examples["test"]]
    outputs = [
        grpcclient.InferRequestedOutput(name)
        for name in (contract.INPUT_IDS, contract.ATTENTION_MASK, contract.FEATURES)
    ]
    answers = []
    with closing(grpcclient.InferenceServerClient(triton.grpc_url)) as client:
        for start in range(0, len(records), RECORDS_PER_REQUEST):
            batch = records[start : start + RECORDS_PER_REQUEST]
            result = client.infer(contract.PREPROCESS, build_inputs(batch), outputs=outputs)
            answers.append(
                ModelInputs(
                    result.as_numpy(contract.INPUT_IDS),
                    result.as_numpy(contract.ATTENTION_MASK),
                    result.as_numpy(contract.FEATURES),
                    np.zeros(0, dtype=bool),
                )
            )
    return answers


def test_the_test_window_is_read_with_the_served_snapshot(examples, tiny_reader):
    """The premise: training's snapshot of every test example is the one the server holds."""
    assert {snapshot_time(ex) for ex in examples["test"]} == {SERVING_AS_OF}
    assert tiny_reader.snapshot.as_of == SERVING_AS_OF


def test_served_inputs_are_the_inputs_training_used(examples, trained, served, tiny_reader):
    n = len(examples["test"])
    assert sum(len(answer.ids) for answer in served) == n > 1000
    pad_id = tiny_reader.tokenizer.token_to_id("[PAD]") or 0
    skewed = []
    for request, answer in enumerate(served):
        assert answer.ids.dtype == answer.mask.dtype == np.int64
        assert answer.features.dtype == np.float32
        assert answer.features.shape[1] == len(FEATURE_NAMES)
        for i in range(len(answer.ids)):
            row = request * RECORDS_PER_REQUEST + i
            length = int(trained.mask[row].sum())
            same = (
                int(answer.mask[i].sum()) == length
                and np.array_equal(answer.mask[i, :length], trained.mask[row, :length])
                and np.array_equal(answer.ids[i, :length], trained.ids[row, :length])
                and (answer.ids[i, length:] == pad_id).all()
                and np.array_equal(answer.features[i], trained.features[row])
            )
            if not same:
                skewed.append(examples["test"][row].id)
    assert skewed == [], f"{len(skewed)} of {n} records are served other inputs: {skewed[:5]}"


def test_the_snapshot_is_not_a_no_op(trained, tiny_reader):
    """The comparison covers real snapshot knowledge: many test records' last item and most
    last categories were seen before the test day, and the words are in the text."""
    assert tiny_reader.snapshot_words
    seen_item = 1 - trained.features[:, FEATURE_NAMES.index("last_item_unseen")]
    seen_category = 1 - trained.features[:, FEATURE_NAMES.index("last_category_unseen")]
    assert seen_item.mean() > 0.1 and seen_category.mean() > 0.5
    assert trained.features[:, FEATURE_NAMES.index("last_item_events")].max() > 0
