"""Shared fixtures: a tiny real model, its Triton repository, and a real tritonserver."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ubm_build import data, export, repository, server
from ubm_build.model import DEFAULT_BASE_MODEL, BehaviourModel, load_tokenizer
from ubm_build.train import inputs_of

MAX_LENGTH = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def examples() -> dict[str, list[data.Example]]:
    by_window: dict[str, list[data.Example]] = {name: [] for name in data.WINDOWS}
    for ex in data.make_examples(data.read_events()):
        by_window[ex.window].append(ex)
    return by_window


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, examples) -> tuple[BehaviourModel, Path]:
    """A randomly initialised 2-layer BERT + head, saved like a trained model."""
    directory = tmp_path_factory.mktemp("model")
    model = BehaviourModel.tiny(DEFAULT_BASE_MODEL, MAX_LENGTH, seed=0)
    model.head.fit_feature_scaling(inputs_of(examples["train"][:500]).features)
    model.head.calibration_bias.fill_(-2.0)  # probabilities in a realistic range
    model.save(directory)
    return BehaviourModel.load(directory), directory


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    model, _ = tiny_model
    directory = tmp_path_factory.mktemp("onnx")
    return (
        export.export_encoder(model, directory / "encoder.onnx"),
        export.export_head(model, directory / "head.onnx"),
    )


@pytest.fixture(scope="session")
def tiny_repository(tiny_model, tiny_onnx, tmp_path_factory) -> Path:
    model, model_dir = tiny_model
    spec = repository.RepositorySpec(
        max_length=MAX_LENGTH,
        hidden_size=model.spec.hidden_size,
        n_features=len(model.spec.feature_names),
    )
    encoder_onnx, head_onnx = tiny_onnx
    return repository.write_repository(
        tmp_path_factory.mktemp("model_repository"),
        spec,
        tokenizer_json=model_dir / "tokenizer.json",
        encoder_onnx=encoder_onnx,
        head_onnx=head_onnx,
    )


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model[1])


@pytest.fixture(scope="session")
def triton(tiny_repository, tmp_path_factory) -> Iterator[server.TritonServer]:
    """A real tritonserver on free localhost ports serving the tiny repository."""
    ports = server.Ports(grpc=free_port(), http=free_port(), metrics=free_port())
    workdir = tmp_path_factory.mktemp("triton")
    with server.TritonServer(tiny_repository, workdir=workdir, ports=ports) as triton:
        yield triton
