"""The generated model repository: configs valid for Triton, no train/serve skew."""

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ubm import contract
from ubm_build.export import Engine
from ubm_build.inputs import behaviour_text, features, model_inputs, snapshot
from ubm_build.model.network import DEFAULT_BASE_MODEL
from ubm_build.serving import repository, versions
from ubm_build.serving.triton_models.engine_model import run_in_slices

GOLDEN = Path(__file__).parent.parent / "golden"
VOCAB_SIZE = 30522
"""The vocabulary of the packaged base model's tokenizer."""
GRAPHS = {contract.ENCODER: b"encoder placeholder", contract.HEAD: b"head placeholder"}
"""`write_repository` copies the graphs without reading them."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_spec(**fields) -> repository.RepositorySpec:
    """A spec of 64 tokens, hidden size 32 and the served features, with `fields`."""
    return repository.RepositorySpec(
        max_length=64, hidden_size=32, n_features=len(model_inputs.FEATURE_NAMES), **fields
    )


def write(
    tmp_path: Path,
    snapshot_file: Path,
    spec: repository.RepositorySpec | None = None,
    encoder: Path | None = None,
    **options,
) -> Path:
    """`write_repository` with the packaged tokenizer, `snapshot_file` and placeholder graphs:
    `spec` (default: `small_spec`), `encoder` (default: a placeholder ``.onnx``), `options`."""
    for name, content in GRAPHS.items():
        (tmp_path / f"{name}.onnx").write_bytes(content)
    return repository.write_repository(
        tmp_path / "repository",
        spec or small_spec(),
        tokenizer_json=DEFAULT_BASE_MODEL / "tokenizer.json",
        snapshot_file=snapshot_file,
        encoder=encoder or tmp_path / f"{contract.ENCODER}.onnx",
        head_onnx=tmp_path / f"{contract.HEAD}.onnx",
        **options,
    )


def test_configs_match_golden_files():
    spec = repository.RepositorySpec(
        max_length=64, hidden_size=384, n_features=29, vocab_size=VOCAB_SIZE
    )
    for name, config in repository.model_configs(spec).items():
        assert versions.to_pbtxt(config) == (GOLDEN / f"{name}.pbtxt").read_text(), name


def test_onnxruntime_target_uses_the_native_backend():
    spec = repository.RepositorySpec(
        max_length=64, hidden_size=384, n_features=29, target=repository.Target.ONNXRUNTIME
    )
    encoder = versions.to_pbtxt(repository.model_configs(spec)[contract.ENCODER])
    assert 'platform: "onnxruntime_onnx"' in encoder
    assert "backend" not in encoder


def spec_for(target, **fields) -> repository.RepositorySpec:
    return repository.RepositorySpec(
        max_length=64,
        hidden_size=384,
        n_features=29,
        vocab_size=VOCAB_SIZE,
        target=target,
        **fields,
    )


def configs_of(spec: repository.RepositorySpec) -> dict[str, model_config_pb2.ModelConfig]:
    return {
        name: text_format.Parse(versions.to_pbtxt(config), model_config_pb2.ModelConfig())
        for name, config in repository.model_configs(spec).items()
    }


def test_native_targets_take_same_shaped_token_batches_and_the_native_onnx_head():
    for target, engine in [
        (repository.Target.ONNXRUNTIME, Engine.ONNXRUNTIME),
        (repository.Target.OPENVINO, Engine.OPENVINO),
        (repository.Target.TENSORRT, Engine.TENSORRT),
    ]:
        device = "cuda" if target is repository.Target.TENSORRT else "cpu"
        configs = configs_of(spec_for(target, engine=engine, device=device))
        assert not any(i.allow_ragged_batch for i in configs[contract.ENCODER].input), target
        head = configs[contract.HEAD]
        assert head.platform == "onnxruntime_onnx" and not head.backend
        assert head.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    python = configs_of(spec_for(repository.Target.PYTHON))[contract.ENCODER]
    assert all(i.allow_ragged_batch for i in python.input)


def test_the_openvino_target_uses_the_native_backend_in_the_variants_precision():
    for precision, bf16 in [("f32", False), ("bf16", True)]:
        spec = spec_for(repository.Target.OPENVINO, engine=Engine.OPENVINO, precision=precision)
        encoder = configs_of(spec)[contract.ENCODER]
        assert encoder.backend == "openvino" and not encoder.platform
        parameters = {k: v.string_value for k, v in encoder.parameters.items()}
        assert parameters["PERFORMANCE_HINT"] == "LATENCY" and parameters["NUM_STREAMS"] == "1"
        assert ("HINT_BF16" in parameters) == bf16
    tuned = spec_for(
        repository.Target.OPENVINO,
        engine=Engine.OPENVINO,
        tuning=repository.Tuning(encoder_threads=2),
    )
    assert (
        configs_of(tuned)[contract.ENCODER].parameters["INFERENCE_NUM_THREADS"].string_value == "2"
    )


def test_the_tensorrt_target_serves_a_plan_on_the_gpu():
    spec = spec_for(repository.Target.TENSORRT, engine=Engine.TENSORRT, device="cuda")
    encoder = configs_of(spec)[contract.ENCODER]
    assert encoder.platform == "tensorrt_plan"
    assert encoder.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert [list(i.dims) for i in encoder.input] == [[-1], [-1]]


def test_onnxruntime_on_cuda_hands_the_graph_to_tensorrt_in_fp16():
    spec = spec_for(repository.Target.ONNXRUNTIME, device="cuda")
    encoder = configs_of(spec)[contract.ENCODER]
    assert encoder.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    cpu = configs_of(spec_for(repository.Target.ONNXRUNTIME))[contract.ENCODER]
    assert not cpu.HasField("optimization")


def test_the_python_target_runs_the_encoder_on_cuda_with_pytorch_in_fp16():
    spec = spec_for(
        repository.Target.PYTHON, engine=Engine.PYTORCH, precision="fp16", device="cuda"
    )
    encoder = configs_of(spec)[contract.ENCODER]
    assert encoder.backend == "python"
    assert encoder.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    parameters = {k: v.string_value for k, v in encoder.parameters.items()}
    assert parameters[contract.PARAM_DEVICE] == "cuda"
    assert parameters[contract.PARAM_PRECISION] == "fp16"


@pytest.mark.parametrize(
    ("target", "fields", "message"),
    [
        (repository.Target.OPENVINO, {"engine": Engine.OPENVINO, "device": "cuda"}, "runs on cpu"),
        (repository.Target.PYTHON, {"device": "cuda"}, "cuda with PyTorch only"),
        (repository.Target.TENSORRT, {"engine": Engine.TENSORRT}, "runs on cuda"),
        (repository.Target.OPENVINO, {}, "serves openvino encoders, not onnxruntime"),
    ],
)
def test_an_engine_or_device_the_target_cannot_serve_is_refused(target, fields, message):
    with pytest.raises(ValueError, match=message):
        spec_for(target, **fields)


def test_a_gpu_build_tolerates_fp16_canary_scores():
    cpu = versions.Build(1, {"build_version": "1"}, {}, [0.5])
    gpu = versions.Build(2, {"canary_atol": str(repository.GPU_CANARY_ATOL)}, {}, [0.5])
    assert cpu.canary_atol(1e-4) == 1e-4
    assert gpu.canary_atol(1e-4) == repository.GPU_CANARY_ATOL == 1e-2


def test_a_gpu_encoders_canary_needs_the_fp32_graph(tmp_path, snapshot_file):
    spec = small_spec(engine=Engine.PYTORCH, precision="fp16", device="cuda")
    with pytest.raises(ValueError, match="canary_encoder"):
        write(tmp_path, snapshot_file, spec, tmp_path, canary_records=[{"id": "1", "events": []}])
    assert not (tmp_path / "repository").exists()


def test_the_encoders_engine_decides_its_python_model_and_files(tmp_path, snapshot_file):
    """An OpenVINO encoder: openvino_model.py as model.py, model.xml with its .bin beside it."""
    ir = tmp_path / "encoder.xml"
    ir.write_bytes(b"xml placeholder")
    ir.with_suffix(".bin").write_bytes(b"weights placeholder")
    out = write(tmp_path, snapshot_file, small_spec(engine=Engine.OPENVINO, precision="bf16"), ir)
    encoder = out / contract.ENCODER / "1"
    served = repository.TRITON_MODELS
    assert (encoder / "model.py").read_text() == (served / "openvino_model.py").read_text()
    assert (encoder / "model.xml").read_bytes() == b"xml placeholder"
    assert (encoder / "model.bin").read_bytes() == b"weights placeholder"
    assert {p.name for p in encoder.iterdir()} >= {"engine_model.py", "responses.py", "contract.py"}
    head = out / contract.HEAD / "1"
    assert (head / "model.py").read_text() == (served / "onnx_model.py").read_text()
    config = versions.read_config(out / contract.ENCODER / "config.pbtxt")
    assert config.parameters[contract.PARAM_PRECISION].string_value == "bf16"


def test_repository_serves_the_training_code(tmp_path, snapshot_file):
    out = write(tmp_path, snapshot_file)
    preprocess = out / contract.PREPROCESS / "1"
    assert {behaviour_text, features, snapshot, model_inputs} <= set(repository.SERVED_MODULES)
    for module in repository.SERVED_MODULES:
        source = Path(module.__file__)
        assert sha256(preprocess / source.name) == sha256(source), source.name
    assert sha256(preprocess / snapshot.FILE) == sha256(snapshot_file)
    assert {p.name for p in out.iterdir()} >= set(versions.MODELS)
    for name in (contract.ENCODER, contract.HEAD):
        assert (out / name / "1" / "model.onnx").read_bytes() == GRAPHS[name], name


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


def test_the_python_target_needs_the_vocabulary_size():
    spec = repository.RepositorySpec(max_length=64, hidden_size=384, n_features=29)
    with pytest.raises(ValueError, match="vocab_size"):
        repository.model_configs(spec)


def test_the_vocabulary_size_comes_from_the_tokenizer(tmp_path, snapshot_file):
    out = write(tmp_path, snapshot_file)
    pbtxt = (out / contract.ENCODER / "config.pbtxt").read_text()
    config = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    assert config.parameters[contract.PARAM_VOCAB_SIZE].string_value == str(VOCAB_SIZE)
    for name in (contract.ENCODER, contract.HEAD):
        assert (out / name / "1" / "contract.py").is_file(), name


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused(tmp_path, snapshot_file):
    with pytest.raises(
        ValueError, match=f"vocab_size 10 is smaller than the tokenizer's {VOCAB_SIZE}"
    ):
        write(tmp_path, snapshot_file, small_spec(vocab_size=10))
    assert not (tmp_path / "repository").exists()


class RowSumSession:
    """Stands in for an ONNX Runtime session: each row's sum of attended ids; counts the rows
    of each run."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert outputs == [contract.EMBEDDING]
        ids, mask = feeds[contract.INPUT_IDS], feeds[contract.ATTENTION_MASK]
        self.runs.append(len(ids))
        return [(ids * mask).sum(axis=1, keepdims=True)]


@pytest.mark.parametrize(
    ("rows_per_run", "runs"),
    [(0, [13]), (1, [1] * 13), (4, [4, 4, 4, 1]), (13, [13]), (100, [13])],
)
def test_running_in_slices_gives_the_same_outputs(rows_per_run, runs):
    ids = np.arange(13 * 3).reshape(13, 3)
    mask = np.tile([1, 1, 0], (13, 1))
    feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
    session = RowSumSession()
    (sliced,) = run_in_slices(session, [contract.EMBEDDING], feeds, rows_per_run)
    np.testing.assert_array_equal(sliced, [[6 * row + 1] for row in range(13)])  # 3r + 3r+1
    assert session.runs == runs


class SlicesAtOnceSession(RowSumSession):
    """Like OpenVINO's session with streams: takes every slice of a batch in one call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def run_many(self, outputs: list[str], feeds: list[dict]) -> list[list[np.ndarray]]:
        self.calls.append(len(feeds))
        return [self.run(outputs, feed) for feed in feeds]


def test_a_session_that_runs_slices_at_once_gets_them_all_in_one_call():
    ids = np.arange(13 * 3).reshape(13, 3)
    feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: np.ones_like(ids)}
    session = SlicesAtOnceSession()
    (sliced,) = run_in_slices(session, [contract.EMBEDDING], feeds, 4)
    np.testing.assert_array_equal(sliced[:, 0], ids.sum(axis=1))
    assert session.calls == [4] and session.runs == [4, 4, 4, 1]
    run_in_slices(session, [contract.EMBEDDING], feeds, 0)  # one run: no slices to hand over
    assert session.calls == [4]


def test_each_write_adds_a_version_pins_it_and_keeps_the_newest_three(tmp_path, snapshot_file):
    out = write(tmp_path, snapshot_file)
    assert versions.pinned_version(out) == 1
    for expected in (2, 3, 4):
        write(tmp_path, snapshot_file)
        assert versions.pinned_version(out) == expected
    for model in versions.MODELS:
        assert versions.versions(out, model) == [2, 3, 4], model
    ensemble = versions.read_config(out / contract.ENSEMBLE / "config.pbtxt")
    assert [step.model_version for step in ensemble.ensemble_scheduling.step] == [4, 4, 4]
    assert ensemble.parameters["build_version"].string_value == "4"
    for model in versions.STEPS:
        assert list(
            versions.read_config(out / model / "config.pbtxt").version_policy.specific.versions
        ) == [4]


def test_the_build_record_holds_the_configs_and_metadata_of_its_version(tmp_path, snapshot_file):
    out = write(tmp_path, snapshot_file)
    build = versions.Build.read(out, 1)
    assert build.version == 1 and build.metadata["build_version"] == "1"
    assert set(build.configs) == set(versions.MODELS)
    assert build.canary_probabilities == [] and build.canary_records(out) == []
    served = snapshot.Snapshot.load(snapshot_file)
    assert build.metadata["snapshot_as_of"] == str(served.as_of)
    assert build.metadata["snapshot_items"] == str(len(served.items.ids))
    assert build.metadata["snapshot_categories"] == str(len(served.categories.ids))
    assert build.metadata["snapshot_sha256"] == sha256(snapshot_file)


@pytest.mark.parametrize("snapshot_words", [False, True])
def test_preprocess_is_told_whether_the_text_has_snapshot_words(
    tmp_path, snapshot_file, snapshot_words
):
    out = write(tmp_path, snapshot_file, small_spec(snapshot_words=snapshot_words))
    config = versions.read_config(out / contract.PREPROCESS / "config.pbtxt")
    value = config.parameters[contract.PARAM_SNAPSHOT_WORDS].string_value
    assert value == str(int(snapshot_words))


def test_a_refreshed_snapshot_is_a_new_pinned_version_of_the_same_build(
    tmp_path, snapshot_file, small_snapshot
):
    out = write(tmp_path, snapshot_file, small_spec(snapshot_words=True))
    old = versions.Build.read(out, 1)
    later = snapshot.Snapshot.empty(small_snapshot.as_of + 86400)

    build = repository.refresh_snapshot(out, later)

    assert build.version == 2 and versions.pinned_version(out) == 2
    assert versions.Build.read(out, 2) == build
    new_file = out / contract.PREPROCESS / "2" / snapshot.FILE
    assert snapshot.Snapshot.load(new_file).as_of == later.as_of
    assert sha256(out / contract.PREPROCESS / "1" / snapshot.FILE) == sha256(snapshot_file)
    assert build.metadata == {
        **old.metadata,
        "build_version": "2",
        "refreshed_from": "1",
        **later.metadata(new_file),
    }
    assert versions.incompatibilities(old, build) == []  # a rollout can switch to it
    for name in (contract.ENCODER, contract.HEAD):
        assert (out / name / "2" / "model.onnx").read_bytes() == GRAPHS[name], name
    ensemble = versions.read_config(out / contract.ENSEMBLE / "config.pbtxt")
    assert [step.model_version for step in ensemble.ensemble_scheduling.step] == [2, 2, 2]
    assert ensemble.parameters["refreshed_from"].string_value == "1"


def test_a_repository_without_a_pinned_build_has_no_snapshot_to_refresh(tmp_path):
    with pytest.raises(FileNotFoundError):
        repository.refresh_snapshot(tmp_path, snapshot.Snapshot.empty())


def test_renumbered_configs_serve_their_version_and_leave_the_originals_alone():
    spec = repository.RepositorySpec(max_length=64, hidden_size=32, n_features=29, vocab_size=10)
    original = repository.model_configs(spec, 1, {"build_version": "1"})
    renumbered = versions.renumbered(original, 5, {"build_version": "5", "x": "y"})
    assert renumbered == repository.model_configs(spec, 5, {"build_version": "5", "x": "y"})
    assert original == repository.model_configs(spec, 1, {"build_version": "1"})


def test_builds_with_other_step_configs_cannot_be_rolled_out_side_by_side(tmp_path):
    spec = repository.RepositorySpec(max_length=64, hidden_size=32, n_features=29, vocab_size=10)
    one = versions.Build(1, {}, repository.model_configs(spec, 1), [])
    two = versions.Build(2, {"x": "y"}, repository.model_configs(spec, 2, {"x": "y"}), [])
    assert versions.incompatibilities(one, two) == []
    longer = replace(spec, max_length=128)
    three = versions.Build(3, {}, repository.model_configs(longer, 3), [])
    assert versions.incompatibilities(one, three) == [contract.PREPROCESS, contract.ENCODER]


def test_pinning_an_older_build_makes_a_fresh_server_serve_it(tmp_path, snapshot_file):
    out = write(tmp_path, snapshot_file)
    write(tmp_path, snapshot_file)
    write(tmp_path, snapshot_file)
    versions.pin(out, versions.Build.read(out, 1))
    assert versions.pinned_version(out) == 1
    assert versions.prune(out, keep=1) == [2]  # the pinned version stays
    assert versions.versions(out) == [1, 3]
