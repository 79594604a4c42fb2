"""Each CPU engine the python target can serve the encoder with, in a real tritonserver: the
ensemble's scores are what the same encoder file gives on the same engine in this process, and
a record scores the same whatever it is batched with.

Engines: OpenVINO fp32 and NNCF int8 (`openvino_model.py`) and PyTorch on the CPU
(`torch_model.py`, the GPU path's model on the device these tests have). ONNX Runtime's is the
tiny repository of the other serving tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ubm import UbmClient, parse_record
from ubm_build import export
from ubm_build.bench.served import variant_repository
from ubm_build.export import Engine
from ubm_build.inputs import snapshot
from ubm_build.model.train import events_of
from ubm_build.serving import repository, server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RECORDS = 96
CALIBRATION_RECORDS = 32


@pytest.fixture(scope="module")
def onnx_dir(tiny_model, tiny_onnx, tiny_reader, examples, tmp_path_factory) -> Path:
    """The tiny model's OpenVINO variants, laid out as `ubm-build export` writes them."""
    model, _ = tiny_model
    encoder, head = tiny_onnx
    directory = tmp_path_factory.mktemp("engines_onnx")
    (directory / "head.onnx").write_bytes(head.read_bytes())
    picked = random.Random(0).sample(examples["train"], CALIBRATION_RECORDS)
    calibration = export.TokenCalibration(tiny_reader, events_of(picked))
    for variant in (export.Variant.OPENVINO_FP32, export.Variant.OPENVINO_INT8):
        export.derive_variant(variant, encoder, model, directory / variant.file_name, calibration)
    return directory


@pytest.fixture(scope="module")
def records(examples) -> list:
    return [parse_record(ex.to_record()) for ex in examples["test"][:RECORDS]]


def pytorch_repository(out: Path, model, model_dir: Path, head: Path) -> Path:
    spec = repository.RepositorySpec(
        max_length=model.spec.max_length,
        hidden_size=model.spec.hidden_size,
        n_features=len(model.spec.feature_names),
        snapshot_words=model.spec.snapshot_words,
        engine=Engine.PYTORCH,
        precision="fp32",
    )
    return repository.write_repository(
        out,
        spec,
        tokenizer_json=model_dir / "tokenizer.json",
        snapshot_file=model_dir / snapshot.FILE,
        encoder=model_dir / "encoder",
        head_onnx=head,
    )


@pytest.fixture(scope="module", params=["openvino-fp32", "openvino-int8", "pytorch"])
def served(request, tiny_model, tiny_onnx, onnx_dir, tmp_path_factory) -> Iterator[tuple]:
    """(what serves the encoder, its in-process session, a server on its repository)."""
    model, model_dir = tiny_model
    out = tmp_path_factory.mktemp(f"repository_{request.param}")
    if request.param == "pytorch":
        written = pytorch_repository(out, model, model_dir, tiny_onnx[1])
        session = export.open_encoder(model_dir / "encoder", precision="fp32")
    else:
        written = variant_repository(out, model_dir, onnx_dir, request.param)
        variant = export.Variant(request.param)
        session = variant.open(onnx_dir / variant.file_name)
    workdir = tmp_path_factory.mktemp(f"triton_{request.param}")
    with server.TritonServer(written, workdir=workdir, ports=server.Ports.free()) as triton:
        yield request.param, session, triton


def test_the_served_engine_scores_as_it_does_in_process(served, onnx_dir, tiny_reader, records):
    name, session, triton = served
    events = [record.events for record in records]
    expected, _ = export.onnx_predict(session, onnx_dir / "head.onnx", tiny_reader, events)
    with UbmClient(triton.grpc_url) as client:
        scores = client.score_batch(records)
    got = np.array([score.purchase_probability for score in scores])
    np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)


def test_a_record_scores_the_same_alone_and_in_a_batch(served, records):
    name, _, triton = served
    with UbmClient(triton.grpc_url) as client:
        batched = [s.purchase_probability for s in client.score_batch(records[:24])]
        alone = [client.score_batch([record])[0].purchase_probability for record in records[:24]]
    np.testing.assert_allclose(alone, batched, atol=1e-6, err_msg=name)
