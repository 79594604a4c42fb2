"""A real tritonserver runs the encoder's and head's warm-up samples as it loads them, and
`python -m ubm_build.bench.first_request` compares starts with and without them.

Triton logs warm-up runs only at ``--log-verbose=1``; the signal used here is the models'
statistics right after the server is ready: every sample was executed once, at its batch size,
before any request was sent. No timing is asserted.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import InferenceServerClient, model_config_pb2

from ubm import UbmClient, parse_record_json
from ubm_build import paths
from ubm_build.bench import first_request
from ubm_build.serving import server

pytestmark = pytest.mark.integration


def warmup_batch_sizes(repository_dir, model: str) -> list[int]:
    path = repository_dir / model / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return sorted(sample.batch_size for sample in config.model_warmup)


def test_the_steps_are_warmed_up_before_the_server_is_ready(tiny_repository, tmp_path):
    ports = server.Ports.free()
    with server.TritonServer(tiny_repository, workdir=tmp_path, ports=ports) as triton:
        with InferenceServerClient(triton.grpc_url) as client:
            for model in first_request.MODELS:
                sizes = warmup_batch_sizes(tiny_repository, model)
                assert len(sizes) >= 2, model
                (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
                assert int(stats["execution_count"]) == len(sizes), model
                assert int(stats["inference_count"]) == sum(sizes), model
                batches = sorted(int(b["batch_size"]) for b in stats["batch_stats"])
                assert batches == sizes, model
        lines = paths.EXAMPLE_RECORDS.read_bytes().splitlines()[:3]
        with UbmClient(triton.grpc_url) as ubm:
            scores = ubm.score([parse_record_json(line) for line in lines])
    assert len(scores) == 3
    assert all(0.0 < score.purchase_probability < 1.0 for score in scores)


def test_the_first_request_benchmark_compares_both_repositories(tiny_repository, tmp_path):
    out = tmp_path / "first_request.json"
    result = CliRunner().invoke(
        first_request.main,
        [
            "--repository",
            str(tiny_repository),
            "--rounds",
            "1",
            "--follow-ups",
            "2",
            "--run-dir",
            str(tmp_path / "run"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert set(written["warmup_samples"]) == set(first_request.MODELS)
    assert written["first_request_ratio"] > 0
    for variant in first_request.VARIANTS:
        median = written["median"][variant]
        assert median["first_ms"] > 0 and median["follow_up_ms"] > 0, variant
        assert set(median["first_model_ms"]) == set(first_request.MODELS), variant
    (measured,) = written["measured"]
    assert measured["order"] == list(first_request.VARIANTS)
    stripped = tmp_path / "run" / "repository_without_warmup"
    assert first_request.warmup_samples(stripped) == {}
