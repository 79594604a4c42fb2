"""The generated model repository: configs valid for Triton, no train/serve skew."""

import hashlib
from pathlib import Path

import numpy as np

from ubm import contract
from ubm_build import behaviour_text, export, features, repository
from ubm_build.behaviour_text import encode_events
from ubm_build.triton_models.onnx_model import run_in_slices

GOLDEN = Path(__file__).parent.parent / "golden"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_configs_match_golden_files():
    spec = repository.RepositorySpec(max_length=64, hidden_size=384, n_features=29)
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
    spec = repository.RepositorySpec(max_length=64, hidden_size=384, n_features=29, tuning=tuning)
    configs = repository.model_configs(spec)
    encoder, preprocess = configs[contract.ENCODER], configs[contract.PREPROCESS]
    assert encoder["instance_group"][0]["count"] == 2
    assert encoder["parameters"]["intra_op_threads"]["string_value"] == "1"
    assert encoder["parameters"]["rows_per_run"]["string_value"] == "4"
    assert preprocess["instance_group"][0]["count"] == 3
    for name in (contract.PREPROCESS, contract.ENCODER, contract.HEAD):
        assert configs[name]["dynamic_batching"]["max_queue_delay_microseconds"] == 500


def test_running_in_slices_gives_the_same_outputs(tiny_onnx, tokenizer, examples):
    session = export.session(tiny_onnx[0])
    ids, mask = encode_events(tokenizer, [ex.events for ex in examples["test"][:13]], 64)
    feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
    whole = session.run([contract.EMBEDDING], feeds)[0]
    for rows_per_run in (0, 1, 4, 13, 100):
        sliced = run_in_slices(session, [contract.EMBEDDING], feeds, rows_per_run)[0]
        np.testing.assert_allclose(sliced, whole, atol=1e-5)
