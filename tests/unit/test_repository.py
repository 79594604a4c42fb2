"""The generated model repository: configs valid for Triton, no train/serve skew."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ubm import contract
from ubm_build import export
from ubm_build.inputs import behaviour_text, features
from ubm_build.inputs.behaviour_text import encode_events
from ubm_build.serving import repository
from ubm_build.serving.triton_models.onnx_model import run_in_slices

GOLDEN = Path(__file__).parent.parent / "golden"
VOCAB_SIZE = 30522


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_configs_match_golden_files():
    spec = repository.RepositorySpec(
        max_length=64, hidden_size=384, n_features=29, vocab_size=VOCAB_SIZE
    )
    for name, config in repository.model_configs(spec).items():
        assert repository.to_pbtxt(config) == (GOLDEN / f"{name}.pbtxt").read_text(), name


def test_onnxruntime_target_uses_the_native_backend():
    spec = repository.RepositorySpec(
        max_length=64, hidden_size=384, n_features=29, target=repository.Target.ONNXRUNTIME
    )
    encoder = repository.to_pbtxt(repository.model_configs(spec)[contract.ENCODER])
    assert 'platform: "onnxruntime_onnx"' in encoder
    assert "backend" not in encoder


def test_repository_serves_the_training_code(tiny_repository):
    preprocess = tiny_repository / contract.PREPROCESS / "1"
    for module in (behaviour_text, features):
        source = Path(module.__file__)
        assert sha256(preprocess / source.name) == sha256(source), source.name
    assert {p.name for p in tiny_repository.iterdir()} >= set(repository.MODELS)
    assert (tiny_repository / contract.ENCODER / "1" / "model.onnx").exists()


def test_tuning_reaches_the_configs():
    tuning = repository.Tuning(
        encoder_instances=2,
        encoder_threads=1,
        encoder_rows_per_run=4,
        preprocess_instances=3,
        max_queue_delay_us=500,
    )
    spec = repository.RepositorySpec(
        max_length=64, hidden_size=384, n_features=29, vocab_size=VOCAB_SIZE, tuning=tuning
    )
    configs = repository.model_configs(spec)
    encoder, preprocess = configs[contract.ENCODER], configs[contract.PREPROCESS]
    assert encoder["instance_group"][0]["count"] == 2
    assert encoder["parameters"][contract.PARAM_INTRA_OP_THREADS]["string_value"] == "1"
    assert encoder["parameters"][contract.PARAM_ROWS_PER_RUN]["string_value"] == "4"
    assert preprocess["instance_group"][0]["count"] == 3
    for name in (contract.PREPROCESS, contract.ENCODER, contract.HEAD):
        assert configs[name]["dynamic_batching"]["max_queue_delay_microseconds"] == 500


def test_every_batcher_lets_a_request_timeout_reject_it():
    spec = repository.RepositorySpec(
        max_length=64, hidden_size=384, n_features=29, vocab_size=VOCAB_SIZE
    )
    configs = repository.model_configs(spec)
    for name in (contract.PREPROCESS, contract.ENCODER, contract.HEAD):
        policy = configs[name]["dynamic_batching"]["default_queue_policy"]
        assert policy["allow_timeout_override"] is True, name
        assert policy["timeout_action"] == "REJECT", name
        # Triton applies a request's timeout only when it is below this default; 0 would
        # mean "no timeout" and disable the override.
        assert policy["default_timeout_microseconds"] > 0, name


def test_the_encoder_knows_the_vocabulary_and_the_length_limit():
    spec = repository.RepositorySpec(max_length=48, hidden_size=384, n_features=29, vocab_size=99)
    parameters = repository.model_configs(spec)[contract.ENCODER]["parameters"]
    assert parameters[contract.PARAM_VOCAB_SIZE]["string_value"] == "99"
    assert parameters[contract.PARAM_MAX_LENGTH]["string_value"] == "48"


def test_the_cpu_target_needs_the_vocabulary_size():
    spec = repository.RepositorySpec(max_length=64, hidden_size=384, n_features=29)
    with pytest.raises(ValueError, match="vocab_size"):
        repository.model_configs(spec)


def test_the_vocabulary_size_comes_from_the_tokenizer(tiny_repository, tokenizer):
    pbtxt = (tiny_repository / contract.ENCODER / "config.pbtxt").read_text()
    config = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    assert config.parameters[contract.PARAM_VOCAB_SIZE].string_value == str(vocab)
    for name in (contract.ENCODER, contract.HEAD):
        assert (tiny_repository / name / "1" / "contract.py").is_file(), name


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused(tmp_path, tiny_model, tiny_onnx):
    _, model_dir = tiny_model
    spec = repository.RepositorySpec(max_length=64, hidden_size=32, n_features=29, vocab_size=10)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        repository.write_repository(
            tmp_path,
            spec,
            tokenizer_json=model_dir / "tokenizer.json",
            encoder_onnx=tiny_onnx[0],
            head_onnx=tiny_onnx[1],
        )


def test_running_in_slices_gives_the_same_outputs(tiny_onnx, tokenizer, examples):
    session = export.ort_session(tiny_onnx[0])
    ids, mask = encode_events(tokenizer, [ex.events for ex in examples["test"][:13]], 64)
    feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
    whole = session.run([contract.EMBEDDING], feeds)[0]
    for rows_per_run in (0, 1, 4, 13, 100):
        sliced = run_in_slices(session, [contract.EMBEDDING], feeds, rows_per_run)[0]
        np.testing.assert_allclose(sliced, whole, atol=1e-5)
