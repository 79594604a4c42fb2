"""The generated model repository: configs valid for Triton, no train/serve skew."""

import hashlib
from pathlib import Path

from ubm import contract
from ubm_build import behaviour_text, features, repository

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
