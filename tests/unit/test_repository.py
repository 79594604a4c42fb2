"""The generated model repository: configs valid for Triton, no train/serve skew."""

import hashlib
from pathlib import Path

from ubm import contract
from ubm_build import behaviour_text, repository
from ubm_build.export import compare

GOLDEN = Path(__file__).parent.parent / "golden"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_configs_match_golden_files():
    spec = repository.RepositorySpec(max_length=64, hidden_size=384)
    for name, config in repository.model_configs(spec).items():
        assert repository.to_pbtxt(config) == (GOLDEN / f"{name}.pbtxt").read_text(), name


def test_onnxruntime_target_uses_the_native_backend():
    spec = repository.RepositorySpec(
        max_length=64, hidden_size=384, target=repository.Target.ONNXRUNTIME
    )
    encoder = repository.to_pbtxt(repository.model_configs(spec)[contract.ENCODER])
    assert 'platform: "onnxruntime_onnx"' in encoder
    assert "backend" not in encoder


def test_repository_serves_the_training_code(tiny_repository):
    preprocess = tiny_repository / contract.PREPROCESS / "1"
    assert sha256(preprocess / "behaviour_text.py") == sha256(Path(behaviour_text.__file__))
    assert {p.name for p in tiny_repository.iterdir()} >= set(repository.MODELS)
    assert (tiny_repository / contract.ENCODER / "1" / "model.onnx").exists()


def test_onnx_export_matches_pytorch(tiny_model, tiny_onnx, tokenizer, examples):
    model, _ = tiny_model
    texts = [behaviour_text.behaviour_text(ex.events) for ex in examples["test"][:64]]
    parity = compare(model, tokenizer, texts, *tiny_onnx)
    parity.check(atol=1e-4)
    assert parity.records == 64
