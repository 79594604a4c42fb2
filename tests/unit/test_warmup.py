"""Warm-up samples of the encoder and head: valid Triton config, data files Triton and the
models accept, and the benchmark's copy of a repository without them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from ubm import contract
from ubm.records import parse_record_json
from ubm_build.bench import first_request
from ubm_build.inputs.model_inputs import FEATURE_NAMES, RecordReader
from ubm_build.model.network import DEFAULT_BASE_MODEL
from ubm_build.serving import repository, warmup
from ubm_build.serving.triton_models.engine_model import check_tokens

TOKENIZER_JSON = DEFAULT_BASE_MODEL / "tokenizer.json"
VOCAB_SIZE = 30522
"""The vocabulary of the packaged base model's tokenizer."""
SPEC = repository.RepositorySpec(
    max_length=64, hidden_size=32, n_features=len(FEATURE_NAMES), vocab_size=VOCAB_SIZE
)
WARMUPS = {contract.ENCODER: warmup.encoder_warmup, contract.HEAD: warmup.head_warmup}
NUMPY_TYPES = {"TYPE_INT64": "<i8", "TYPE_FP32": "<f4"}
"""The little-endian layout Triton reads each data file's bytes in."""


@pytest.fixture(scope="module")
def reader(small_snapshot) -> RecordReader:
    """The packaged tokenizer's reader with a small snapshot and its words."""
    return RecordReader(
        Tokenizer.from_file(str(TOKENIZER_JSON)), SPEC.max_length, small_snapshot, True
    )


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, reader) -> Path:
    """A directory with the encoder's and head's warm-up data, as a repository holds them."""
    out = tmp_path_factory.mktemp("repository")
    for model in WARMUPS:
        (out / model).mkdir()
    warmup.write_warmup_data(out, SPEC, reader)
    return out


def read_input(model_dir: Path, sample_input: dict) -> np.ndarray:
    """One warm-up input's data file as Triton reads it: the dims' worth of bytes."""
    data = (model_dir / warmup.WARMUP_DIR / sample_input["input_data_file"]).read_bytes()
    return np.frombuffer(data, dtype=NUMPY_TYPES[sample_input["data_type"]])


@pytest.mark.parametrize("model", list(WARMUPS))
def test_the_samples_parse_into_model_config_and_fit_the_models_inputs(model):
    config = repository.model_configs(SPEC)[model]
    parsed = json_format.ParseDict(
        {**config, "model_warmup": WARMUPS[model](SPEC)}, model_config_pb2.ModelConfig()
    )
    declared = {tensor.name: tensor for tensor in parsed.input}
    assert len(parsed.model_warmup) == len(warmup.batch_sizes(SPEC))
    for sample in parsed.model_warmup:
        assert set(sample.inputs) == set(declared), sample.name
        for name, sample_input in sample.inputs.items():
            assert sample_input.data_type == declared[name].data_type, name
            assert len(sample_input.dims) == len(declared[name].dims), name
            for size, declared_size in zip(sample_input.dims, declared[name].dims, strict=True):
                assert declared_size in (-1, size), name


def test_the_model_configs_carry_the_samples():
    configs = repository.model_configs(SPEC)
    for model, samples in WARMUPS.items():
        assert configs[model]["model_warmup"] == samples(SPEC), model
    assert configs[contract.PREPROCESS]["model_warmup"] == warmup.preprocess_warmup(SPEC)
    assert "model_warmup" not in configs[contract.ENSEMBLE]  # ensembles reject it
    with pytest.raises(ValueError, match=contract.ENSEMBLE):
        warmup.model_warmup(contract.ENSEMBLE, SPEC)


@pytest.mark.parametrize(
    ("tuning", "max_batch_size", "sizes"),
    [
        ({}, contract.MAX_BATCH_SIZE, [1, 8, 32]),
        ({"encoder_rows_per_run": 0}, contract.MAX_BATCH_SIZE, [1, 32]),
        ({"encoder_rows_per_run": 32}, contract.MAX_BATCH_SIZE, [1, 32]),
        ({"encoder_rows_per_run": 4}, 16, [1, 4]),
    ],
)
def test_batch_sizes_are_one_a_run_and_a_bulk_request(tuning, max_batch_size, sizes):
    spec = repository.RepositorySpec(
        max_length=64,
        hidden_size=32,
        n_features=29,
        max_batch_size=max_batch_size,
        tuning=repository.Tuning(**tuning),
    )
    assert warmup.batch_sizes(spec) == sizes
    assert [sample["batch_size"] for sample in warmup.encoder_warmup(spec)] == sizes


@pytest.mark.parametrize("model", list(WARMUPS))
def test_each_data_file_holds_one_record_of_its_input(model_dirs, model):
    for sample in WARMUPS[model](SPEC):
        for sample_input in sample["inputs"].values():
            path = model_dirs / model / warmup.WARMUP_DIR / sample_input["input_data_file"]
            itemsize = np.dtype(NUMPY_TYPES[sample_input["data_type"]]).itemsize
            assert path.stat().st_size == np.prod(sample_input["dims"]) * itemsize, path.name


def test_the_encoder_sample_is_a_real_record_the_encoder_accepts(model_dirs):
    (sample, *_) = warmup.encoder_warmup(SPEC)
    ids, mask = (
        read_input(model_dirs / contract.ENCODER, sample["inputs"][name])
        for name in (contract.INPUT_IDS, contract.ATTENTION_MASK)
    )
    check_tokens(ids[None], mask[None], VOCAB_SIZE, SPEC.max_length)
    attended = int(mask.sum())
    assert mask.tolist() == [1] * attended + [0] * (SPEC.max_length - attended)
    text = Tokenizer.from_file(str(TOKENIZER_JSON)).decode(ids[:attended].tolist())
    assert text.startswith("session")


def test_the_preprocess_sample_is_one_warm_up_record_as_triton_serialises_bytes(model_dirs):
    (sample_input,) = warmup.preprocess_warmup(SPEC)[0]["inputs"].values()
    data = model_dirs / contract.PREPROCESS / warmup.WARMUP_DIR / sample_input["input_data_file"]
    raw = data.read_bytes()
    (length,) = struct.unpack("<I", raw[:4])
    assert length == len(raw) - 4
    record = parse_record_json(raw[4:])
    assert record.id == contract.WARMUP_RECORD_ID and record.events


def test_the_head_sample_is_finite_with_a_records_features(model_dirs):
    (sample, *_) = warmup.head_warmup(SPEC)
    embedding, features = (
        read_input(model_dirs / contract.HEAD, sample["inputs"][name])
        for name in (contract.EMBEDDING, contract.FEATURES)
    )
    assert embedding.shape == (SPEC.hidden_size,)
    assert features.shape == (SPEC.n_features,)
    assert np.isfinite(features).all()
    assert features.any()


def test_a_spec_with_another_feature_count_is_refused(tmp_path, reader):
    spec = repository.RepositorySpec(max_length=64, hidden_size=32, n_features=3)
    with pytest.raises(ValueError, match="features"):
        warmup.write_warmup_data(tmp_path, spec, reader)


def test_a_records_file_without_records_is_refused(tmp_path, reader):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        warmup.write_warmup_data(tmp_path, SPEC, reader, records_path=empty)


def test_the_samples_are_the_readers_inputs_of_the_longest_record(tmp_path, reader):
    """The head's sample holds the reader's features (snapshot columns included) of the
    record whose tokens the encoder's sample holds."""
    lines = [
        '{"id": "a", "events": [{"ts": 1512172800, "type": "view", "item": "100"}]}',
        '{"id": "b", "events": [{"ts": 1512172800, "type": "view", "item": "999"},'
        ' {"ts": 1512172860, "type": "cart", "item": "104", "category": "8"}]}',
    ]
    records = tmp_path / "records.jsonl"
    records.write_text("".join(line + "\n" for line in lines))
    arrays = warmup.sample_arrays(SPEC, reader, records)
    longest = reader([parse_record_json(lines[1]).events])
    np.testing.assert_array_equal(arrays[contract.HEAD][contract.FEATURES], longest.features[0])
    ids = arrays[contract.ENCODER][contract.INPUT_IDS]
    n = int(longest.mask.sum())
    assert ids.shape == (SPEC.max_length,)
    np.testing.assert_array_equal(ids[:n], longest.ids[0, :n])
    assert parse_record_json(
        arrays[contract.PREPROCESS][contract.RECORDS][4:].tobytes()
    ).events == (parse_record_json(lines[1]).events)


def test_the_benchmark_strips_every_warmup_from_a_copy(tmp_path, snapshot_file):
    placeholder = tmp_path / "placeholder.onnx"
    placeholder.write_bytes(b"not read")
    written = repository.write_repository(
        tmp_path / "repository",
        SPEC,
        tokenizer_json=TOKENIZER_JSON,
        snapshot_file=snapshot_file,
        encoder=placeholder,
        head_onnx=placeholder,
    )
    samples = len(warmup.batch_sizes(SPEC))
    assert first_request.warmup_samples(written) == {
        contract.PREPROCESS: samples,
        contract.ENCODER: samples,
        contract.HEAD: samples,
    }

    stripped = first_request.strip_warmup(written, tmp_path / "stripped")

    assert first_request.warmup_samples(stripped) == {}
    assert not list(stripped.glob(f"*/{warmup.WARMUP_DIR}"))
    for path in written.glob("*/config.pbtxt"):
        original = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        original.ClearField("model_warmup")
        copy = (stripped / path.relative_to(written)).read_text()
        assert text_format.Parse(copy, model_config_pb2.ModelConfig()) == original
    assert first_request.warmup_samples(written) != {}  # the original is left alone


def test_the_benchmark_repeats_the_examples_to_fill_its_requests(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(
        '{"id": "a", "events": [{"ts": 1511544070, "type": "view", "item": "1"}]}\n'
        '{"id": "b", "events": [{"ts": 1511544070, "type": "buy", "item": "2"}]}\n'
    )
    batches = first_request.example_batches(records, 3, 2)
    assert [[record.id for record in batch] for batch in batches] == [
        ["a", "b"],
        ["a", "b"],
        ["a", "b"],
    ]
