"""Write the Triton model repository: ensemble `ubm` = preprocess -> encoder -> head.

Configs are built as dicts, validated by parsing them into Triton's protobuf `ModelConfig`, and
written with protobuf's text format, so a typo in a field name fails the build, not the server.
Each write adds a new version of all four models next to the ones before (`versions`).
"""

from __future__ import annotations

import enum
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tokenizers import Tokenizer

import ubm.contract
import ubm.pseudonyms
import ubm.records
from ubm import contract
from ubm.records import parse_record
from ubm_build import export
from ubm_build.export.engines import Engine
from ubm_build.inputs import behaviour_text, drift, features, model_inputs, snapshot
from ubm_build.inputs.model_inputs import RecordReader
from ubm_build.inputs.snapshot import Snapshot
from ubm_build.serving import versions, warmup
from ubm_build.serving.versions import read_config

TRITON_MODELS = Path(__file__).with_name("triton_models")
ENCODED = "encoded"
"""The ensemble's internal name for the encoder's output (see `contract.HEAD_EMBEDDING`)."""


class Target(enum.Enum):
    """The Triton server the repository is for, which decides the backends its models use."""

    PYTHON = "python"
    """Python-backend models, which run on the pip-installed tritonserver: the encoder on ONNX
    Runtime or OpenVINO (CPU), or on PyTorch (``--device cuda``)."""
    ONNXRUNTIME = "onnxruntime"
    """Triton's native onnxruntime backend (NVIDIA's containers), on the CPU or a GPU."""
    OPENVINO = "openvino"
    """Triton's native openvino backend for the encoder (NVIDIA's containers), CPU only."""
    TENSORRT = "tensorrt"
    """A TensorRT plan on an NVIDIA GPU (NVIDIA's containers)."""

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The engines whose encoder files it serves."""
        return {
            Target.PYTHON: (Engine.ONNXRUNTIME, Engine.OPENVINO, Engine.PYTORCH),
            Target.ONNXRUNTIME: (Engine.ONNXRUNTIME,),
            Target.OPENVINO: (Engine.OPENVINO,),
            Target.TENSORRT: (Engine.TENSORRT,),
        }[self]

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices its encoder can run on."""
        return {
            Target.PYTHON: ("cpu", "cuda"),
            Target.ONNXRUNTIME: ("cpu", "cuda"),
            Target.OPENVINO: ("cpu",),
            Target.TENSORRT: ("cuda",),
        }[self]


@dataclass(frozen=True, kw_only=True)
class Tuning:
    """Serving knobs; the defaults are the fastest that `make tune` found (README, Performance)."""

    encoder_instances: int = 1
    encoder_threads: int = 0
    """The engine's threads per encoder instance (ONNX Runtime's intra-op threads, OpenVINO's
    inference threads); 0 lets the engine use every core."""
    encoder_streams: int = 1
    """OpenVINO encoders: slices of a batch run at once, each on its share of the threads."""
    encoder_rows_per_run: int = 8
    """The python target runs the encoder's batch in slices of this many records (0: all at
    once)."""
    preprocess_instances: int = 1
    max_queue_delay_us: int = 0
    """How long each model's dynamic batcher waits for more requests. Under load, batches form
    anyway while a model is busy; a delay only adds latency when it is idle."""
    max_queue_size: int = 128
    """Backpressure: requests one model may hold waiting; more are refused at once
    (UNAVAILABLE, "Exceeds maximum queue size"), which the SDK retries with backoff. 0: no
    bound. A bound below the clients' concurrency also caps the dynamic batches and was
    measured to hurt (README, Backpressure)."""
    queue_timeout_ms: int = 2000
    """Backpressure: longest wait in one model's queue before the request is refused. A
    client's own timeout, sent with each request, can only shorten it; the SDK retries a
    request refused this way while its own timeout has not passed. 500 ms cut a spike's p99
    but shed bulk requests (README, Backpressure)."""


@dataclass(frozen=True, kw_only=True)
class RepositorySpec:
    max_length: int
    hidden_size: int
    n_features: int
    snapshot_words: bool = False
    """The snapshot's words are rendered into the behaviour text (`snapshot.id_words`)."""
    vocab_size: int | None = None
    """Token ids the encoder accepts: [0, vocab_size). `write_repository` fills it from the
    tokenizer when left out; `model_configs` needs it for the python target."""
    target: Target = Target.PYTHON
    engine: Engine = Engine.ONNXRUNTIME
    """The encoder's engine; one of `target.engines`."""
    precision: str = "f32"
    """The encoder's precision where the engine takes one at load time: OpenVINO's "f32" or
    "bf16", PyTorch's "fp32" or "fp16"."""
    device: str = "cpu"
    """Where the encoder runs: "cpu" or "cuda" (one of `target.devices`)."""
    max_batch_size: int = contract.MAX_BATCH_SIZE
    tuning: Tuning = Tuning()
    pseudonym_key: str | None = None
    """The fingerprint of the key the model's ids were pseudonymised with (`ubm.pseudonyms`):
    ``preprocess`` then needs that key and pseudonymises every record's ids."""

    def __post_init__(self) -> None:
        if (
            self.target is Target.PYTHON
            and self.device == "cuda"
            and self.engine is not (Engine.PYTORCH)
        ):
            raise ValueError("the python target runs the encoder on cuda with PyTorch only")
        if self.engine not in self.target.engines:
            served = "/".join(e.value for e in self.target.engines)
            raise ValueError(
                f"the {self.target.value} target serves {served} encoders, not {self.engine.value}"
            )
        if self.device not in self.target.devices:
            raise ValueError(
                f"the {self.target.value} target runs on {'/'.join(self.target.devices)},"
                f" not {self.device}"
            )

    @property
    def native(self) -> bool:
        """Whether the encoder and head use Triton's own backends, not python models."""
        return self.target is not Target.PYTHON


SERVED_MODULES = (
    ubm.records,
    ubm.contract,
    ubm.pseudonyms,
    behaviour_text,
    features,
    snapshot,
    model_inputs,
    drift,
)
"""The modules copied next to ``preprocess``'s model.py: everything it imports of ours."""


def _tensor(name: str, data_type: str, dims: list[int], **extra) -> dict:
    return {"name": name, "data_type": data_type, "dims": dims, **extra}


def _dynamic_batching(spec: RepositorySpec) -> dict:
    """Each model's batcher; a request's own ``timeout`` makes Triton reject it once it waited
    that long in the queue (the ensemble passes its request's timeout to every step)."""
    return {
        "max_queue_delay_microseconds": spec.tuning.max_queue_delay_us,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": spec.tuning.queue_timeout_ms * 1000,
            "allow_timeout_override": True,
            "max_queue_size": spec.tuning.max_queue_size,
        },
    }


ENCODER_FILES = {
    Engine.ONNXRUNTIME: "model.onnx",
    Engine.OPENVINO: "model.xml",
    Engine.TENSORRT: "model.plan",
    Engine.PYTORCH: "bert",
}
"""The encoder's file (PyTorch: directory) in its version directory, by engine."""
GPU_CANARY_ATOL = 1e-2
"""How far a GPU encoder's canary scores may lie from the fp32 ONNX graph's (fp16 arithmetic)."""
PYTHON_MODELS = {
    Engine.ONNXRUNTIME: "onnx_model.py",
    Engine.OPENVINO: "openvino_model.py",
    Engine.PYTORCH: "torch_model.py",
}
"""The python-backend model file that runs each engine (`triton_models`)."""
GPU_ACCELERATOR = {
    "gpu_execution_accelerator": [
        {
            "name": "tensorrt",
            "parameters": {
                "precision_mode": "FP16",
                "max_workspace_size_bytes": str(1 << 30),
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": "/tmp/ubm-trt-cache",
            },
        }
    ]
}
"""``--target onnxruntime --device cuda``: ONNX Runtime hands the graph to TensorRT in FP16
(engines cached across restarts of the container)."""


def _graph_model(
    name: str,
    spec: RepositorySpec,
    inputs: list[dict],
    outputs: list[dict],
    engine: Engine,
    device: str,
    instances: int,
    threads: int,
    python_parameters: dict[str, object],
) -> dict:
    """The config of a model that runs a graph: the encoder or the head.

    `python_parameters` are what its python-backend model reads (python target only).
    """
    config = {
        "name": name,
        "max_batch_size": spec.max_batch_size,
        "input": inputs,
        "output": outputs,
        "instance_group": [
            {"kind": "KIND_GPU" if device == "cuda" else "KIND_CPU", "count": instances}
        ],
        "dynamic_batching": _dynamic_batching(spec),
        "model_warmup": warmup.model_warmup(name, spec),
    }
    if not spec.native:
        config["backend"] = "python"
        config["parameters"] = versions.string_parameters(
            {contract.PARAM_INTRA_OP_THREADS: threads, **python_parameters}
        )
    elif engine is Engine.ONNXRUNTIME:
        config["platform"] = "onnxruntime_onnx"
        config["parameters"] = versions.string_parameters(
            {"intra_op_thread_count": threads, "inter_op_thread_count": 1}
        )
        if device == "cuda":
            config["optimization"] = {"execution_accelerators": GPU_ACCELERATOR}
    elif engine is Engine.OPENVINO:
        config["backend"] = "openvino"
        streams = spec.tuning.encoder_streams
        openvino = {"NUM_STREAMS": streams}
        if streams == 1:
            openvino["PERFORMANCE_HINT"] = "LATENCY"
        if threads:
            openvino["INFERENCE_NUM_THREADS"] = threads
        if spec.precision == "bf16":
            openvino["HINT_BF16"] = "YES"
        config["parameters"] = versions.string_parameters(openvino)
    else:
        config["platform"] = "tensorrt_plan"
    return config


def _precision_parameters(spec: RepositorySpec) -> dict[str, object]:
    """The python-backend encoder's engine settings beyond threads and slices."""
    if spec.engine is Engine.OPENVINO:
        return {
            contract.PARAM_PRECISION: spec.precision,
            contract.PARAM_STREAMS: spec.tuning.encoder_streams,
        }
    if spec.engine is Engine.PYTORCH:
        return {contract.PARAM_PRECISION: spec.precision, contract.PARAM_DEVICE: spec.device}
    return {}


def model_configs(
    spec: RepositorySpec, version: int = 1, metadata: Mapping[str, str] | None = None
) -> dict[str, dict]:
    """The four model configs as plain dicts, keyed by model name.

    Each serves `version` only, the ensemble's steps are pinned to it, and the ensemble's
    parameters carry the build's `metadata`.

    The python target's token inputs are ragged (its encoder pads them); Triton's own
    backends batch only requests of one shape, and ``preprocess`` pads to multiples of 16
    tokens, so requests share a few shapes.

    Raises:
        ValueError: the python target without `spec.vocab_size`.
    """
    if not spec.native and spec.vocab_size is None:
        raise ValueError("RepositorySpec.vocab_size is required for the python target")
    ragged = {} if spec.native else {"allow_ragged_batch": True}
    token_inputs = [
        _tensor(contract.INPUT_IDS, "TYPE_INT64", [-1], **ragged),
        _tensor(contract.ATTENTION_MASK, "TYPE_INT64", [-1], **ragged),
    ]
    token_outputs = [
        _tensor(contract.INPUT_IDS, "TYPE_INT64", [-1]),
        _tensor(contract.ATTENTION_MASK, "TYPE_INT64", [-1]),
    ]
    records = _tensor(contract.RECORDS, "TYPE_STRING", [1])
    embedding = _tensor(contract.EMBEDDING, "TYPE_FP32", [spec.hidden_size])
    probability = _tensor(contract.PURCHASE_PROBABILITY, "TYPE_FP32", [1])
    segment = _tensor(contract.SEGMENT, "TYPE_INT32", [1])
    segment_distance = _tensor(contract.SEGMENT_DISTANCE, "TYPE_FP32", [1])
    feature_tensor = _tensor(contract.FEATURES, "TYPE_FP32", [spec.n_features])

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
        """One ensemble step; the maps go from the model's tensor names to the ensemble's."""
        return {
            "model_name": model,
            "model_version": version,
            "input_map": inputs,
            "output_map": outputs,
        }

    encoder_limits = {contract.PARAM_MAX_LENGTH: spec.max_length}
    if spec.vocab_size is not None:
        encoder_limits[contract.PARAM_VOCAB_SIZE] = spec.vocab_size
    tokens = {
        contract.INPUT_IDS: contract.INPUT_IDS,
        contract.ATTENTION_MASK: contract.ATTENTION_MASK,
    }
    configs = {
        contract.ENSEMBLE: {
            "name": contract.ENSEMBLE,
            "platform": "ensemble",
            "max_batch_size": spec.max_batch_size,
            "input": [records],
            "output": [probability, embedding, segment, segment_distance],
            "ensemble_scheduling": {
                "step": [
                    step(
                        contract.PREPROCESS,
                        {contract.RECORDS: contract.RECORDS},
                        {**tokens, contract.FEATURES: contract.FEATURES},
                    ),
                    step(contract.ENCODER, tokens, {contract.EMBEDDING: ENCODED}),
                    step(
                        contract.HEAD,
                        {contract.EMBEDDING: ENCODED, contract.FEATURES: contract.FEATURES},
                        {
                            contract.PURCHASE_PROBABILITY: contract.PURCHASE_PROBABILITY,
                            contract.HEAD_EMBEDDING: contract.EMBEDDING,
                            contract.SEGMENT: contract.SEGMENT,
                            contract.SEGMENT_DISTANCE: contract.SEGMENT_DISTANCE,
                        },
                    ),
                ]
            },
        },
        contract.PREPROCESS: {
            "name": contract.PREPROCESS,
            "backend": "python",
            "max_batch_size": spec.max_batch_size,
            "input": [records],
            "output": [*token_outputs, feature_tensor],
            "instance_group": [{"kind": "KIND_CPU", "count": spec.tuning.preprocess_instances}],
            "dynamic_batching": _dynamic_batching(spec),
            "parameters": versions.string_parameters(
                {
                    contract.PARAM_MAX_LENGTH: spec.max_length,
                    contract.PARAM_SNAPSHOT_WORDS: int(spec.snapshot_words),
                    **(
                        {contract.PARAM_PSEUDONYM_KEY: spec.pseudonym_key}
                        if spec.pseudonym_key
                        else {}
                    ),
                }
            ),
            "model_warmup": warmup.model_warmup(contract.PREPROCESS, spec),
        },
        contract.ENCODER: _graph_model(
            contract.ENCODER,
            spec,
            token_inputs,
            [embedding],
            spec.engine,
            spec.device,
            spec.tuning.encoder_instances,
            spec.tuning.encoder_threads,
            {
                contract.PARAM_ROWS_PER_RUN: spec.tuning.encoder_rows_per_run,
                **encoder_limits,
                **_precision_parameters(spec),
            },
        ),
        contract.HEAD: _graph_model(
            contract.HEAD,
            spec,
            [embedding, feature_tensor],
            [
                probability,
                _tensor(contract.HEAD_EMBEDDING, "TYPE_FP32", [spec.hidden_size]),
                segment,
                segment_distance,
            ],
            Engine.ONNXRUNTIME,
            "cpu",
            1,
            1,
            {contract.PARAM_ROWS_PER_RUN: 0},
        ),
    }
    for config in configs.values():
        config["version_policy"] = {"specific": {"versions": [version]}}
    if metadata:
        configs[contract.ENSEMBLE]["parameters"] = versions.string_parameters(dict(metadata))
    return configs


def write_repository(
    out: Path,
    spec: RepositorySpec,
    *,
    tokenizer_json: Path,
    snapshot_file: Path,
    encoder: Path,
    head_onnx: Path,
    metadata: Mapping[str, str] | None = None,
    canary_records: Sequence[dict] = (),
    canary_encoder: Path | None = None,
    drift_reference: drift.DriftReference | None = None,
    keep_versions: int = versions.VERSIONS_KEPT,
) -> Path:
    """Add a new version of the four models under `out` and pin it; returns `out`.

    The new version is one more than the newest there; all but the newest `keep_versions`
    are deleted. Other entries of `out` are left alone.

    Args:
        out: the model repository (created if missing).
        spec: shapes, target, engine and tuning.
        tokenizer_json, head_onnx: the model's files.
        encoder: the encoder's file for `spec.engine` (.onnx, .xml, .plan, or PyTorch's
            Hugging Face directory).
        snapshot_file: the item and category snapshot ``preprocess`` serves with (its as-of
            time, rows and hash join the metadata).
        metadata: the build's description (training, data), shown by ``ubm-client info``
            from the ensemble's config parameters.
        canary_records: records a rollout scores on this version before switching to it;
            their expected scores are computed here with the served encoder.
        canary_encoder: the fp32 ONNX encoder that computes the canary's expected scores
            instead when the served one runs on a GPU; the rollout then tolerates
            `GPU_CANARY_ATOL` (recorded in the metadata as ``canary_atol``).
        drift_reference: the training data's drift statistics, which ``preprocess`` exports
            next to the served ones (without it, it exports the served ones only).
        keep_versions: versions kept on disk, this one included.

    Raises:
        ValueError: `spec.vocab_size` is smaller than the tokenizer's vocabulary, a GPU
            encoder comes with canary records but no `canary_encoder`, or a pseudonymised
            build (`spec.pseudonym_key`) without canary records to warm up on.
    """
    on_gpu = spec.device == "cuda"
    if spec.pseudonym_key and not canary_records:
        raise ValueError("a pseudonymised build needs canary records (its warm-up records)")
    if on_gpu and canary_records and canary_encoder is None:
        raise ValueError("a GPU encoder's canary scores need canary_encoder (the fp32 ONNX)")
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if spec.vocab_size is None:
        spec = replace(spec, vocab_size=tokenizer_vocab)
    elif spec.vocab_size < tokenizer_vocab:
        raise ValueError(
            f"vocab_size {spec.vocab_size} is smaller than the tokenizer's {tokenizer_vocab}"
        )
    version = versions.next_version(out)
    served_snapshot = Snapshot.load(snapshot_file)
    metadata = {
        "build_version": str(version),
        **(metadata or {}),
        **served_snapshot.metadata(snapshot_file),
        **({"canary_atol": str(GPU_CANARY_ATOL)} if on_gpu else {}),
    }
    configs = model_configs(spec, version, metadata)
    for name in versions.MODELS:
        directory = versions.version_dir(out, name, version)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)

    preprocess = versions.version_dir(out, contract.PREPROCESS, version)
    shutil.copy2(TRITON_MODELS / "preprocess.py", preprocess / "model.py")
    shutil.copy2(TRITON_MODELS / "responses.py", preprocess / "responses.py")
    for module in SERVED_MODULES:
        shutil.copy2(module.__file__, preprocess / Path(module.__file__).name)
    shutil.copy2(tokenizer_json, preprocess / "tokenizer.json")
    shutil.copy2(snapshot_file, preprocess / snapshot.FILE)
    reader = RecordReader(tokenizer, spec.max_length, served_snapshot, spec.snapshot_words)
    if drift_reference is not None:
        drift.write_reference(preprocess, drift_reference)
    graphs = (
        (contract.ENCODER, encoder, spec.engine),
        (contract.HEAD, head_onnx, Engine.ONNXRUNTIME),
    )
    for name, source, engine in graphs:
        directory = versions.version_dir(out, name, version)
        if not spec.native:
            shutil.copy2(TRITON_MODELS / PYTHON_MODELS[engine], directory / "model.py")
            for neighbour in ("engine_model.py", "responses.py"):
                shutil.copy2(TRITON_MODELS / neighbour, directory / neighbour)
            shutil.copy2(ubm.contract.__file__, directory / "contract.py")
        _copy_encoder_file(source, engine, directory)
    # A pseudonymised build warms up on its own (pseudonymised) canary records: the example
    # file holds raw ids.
    warmup.write_warmup_data(
        out, spec, reader, records=list(canary_records) if spec.pseudonym_key else None
    )
    canary = list(canary_records)
    if on_gpu:
        expected = _canary_scores(canary_encoder, head_onnx, reader, canary)
    else:
        expected = _canary_scores(encoder, head_onnx, reader, canary, spec.precision)
    build = versions.Build(version, metadata, configs, expected)
    build.write(out, canary)
    versions.pin(out, build)  # last: a failed write never changes what a server would load
    versions.prune(out, keep_versions)
    return out


def _copy_encoder_file(source: Path, engine: Engine, directory: Path) -> None:
    """`source` into a version `directory` under the name its engine loads (`ENCODER_FILES`);
    OpenVINO's weights file and PyTorch's whole directory come along."""
    target = directory / ENCODER_FILES[engine]
    if engine is Engine.PYTORCH:
        shutil.copytree(source, target)
        return
    shutil.copy2(source, target)
    if engine is Engine.OPENVINO:
        shutil.copy2(source.with_suffix(".bin"), target.with_suffix(".bin"))


def _canary_scores(
    encoder: Path,
    head_onnx: Path,
    reader: RecordReader,
    canary: Sequence[dict],
    precision: str = "f32",
) -> list[float]:
    """The purchase probabilities a version must give its canary records (in process)."""
    if not canary:
        return []
    events = [parse_record(record).events for record in canary]
    session = export.open_encoder(encoder, precision=precision)
    probabilities, _ = export.onnx_predict(session, head_onnx, reader, events)
    return [float(p) for p in probabilities]


def refresh_snapshot(
    repository_dir: Path, new_snapshot: Snapshot, *, keep_versions: int = versions.VERSIONS_KEPT
) -> versions.Build:
    """Add a version that serves the pinned build with `new_snapshot`, and pin it.

    The four models' files are copied from the pinned version, the snapshot replaced, the
    metadata updated (``snapshot_*``, ``refreshed_from``) and the canary's expected scores
    computed again. The step configs do not change, so ``ubm-build rollout`` switches a
    running server to it like to any build.

    Raises:
        FileNotFoundError: the repository pins no version, or its build record is missing.
        ValueError: the pinned build's encoder runs on a GPU, so its canary scores cannot be
            computed here (write the repository again with ``ubm-build repository``).
    """
    old = versions.Build.read(repository_dir, versions.pinned_version(repository_dir))
    if "canary_atol" in old.metadata:
        raise ValueError(
            f"version {old.version} runs its encoder on a GPU: refresh its snapshot by writing"
            " the repository again (`ubm-build repository` with the new snapshot in the model)"
        )
    encoder_dir = versions.version_dir(repository_dir, contract.ENCODER, old.version)
    engine = next(e for e, name in ENCODER_FILES.items() if (encoder_dir / name).exists())
    encoder_parameters = old.configs[contract.ENCODER].get("parameters", {})
    precision = encoder_parameters.get(contract.PARAM_PRECISION, {}).get("string_value", "f32")
    version = versions.next_version(repository_dir)
    for model in versions.MODELS:
        shutil.copytree(
            versions.version_dir(repository_dir, model, old.version),
            versions.version_dir(repository_dir, model, version),
        )
    preprocess = versions.version_dir(repository_dir, contract.PREPROCESS, version)
    new_snapshot.save(preprocess / snapshot.FILE)
    metadata = {
        **old.metadata,
        "build_version": str(version),
        "refreshed_from": str(old.version),
        **new_snapshot.metadata(preprocess / snapshot.FILE),
    }
    parameters = old.configs[contract.PREPROCESS]["parameters"]
    reader = RecordReader.from_directory(
        preprocess,
        max_length=int(parameters[contract.PARAM_MAX_LENGTH]["string_value"]),
        snapshot_words=parameters[contract.PARAM_SNAPSHOT_WORDS]["string_value"] == "1",
    )
    canary = old.canary_records(repository_dir)
    expected = _canary_scores(
        versions.version_dir(repository_dir, contract.ENCODER, version) / ENCODER_FILES[engine],
        versions.version_dir(repository_dir, contract.HEAD, version) / "model.onnx",
        reader,
        canary,
        precision,
    )
    build = versions.Build(
        version, metadata, versions.renumbered(old.configs, version, metadata), expected
    )
    build.write(repository_dir, canary)
    versions.pin(repository_dir, build)
    versions.prune(repository_dir, keep_versions)
    return build


def served_variant(repository_dir: Path, onnx_dir: Path) -> str | None:
    """Which exported variant of `onnx_dir` the pinned version serves, by file content (and,
    for OpenVINO's fp32 and bf16, which share a file, by the configured precision)."""
    if versions.pinned_version(repository_dir) is None:
        return None
    directory = versions.version_dir(repository_dir, contract.ENCODER)
    config_path = repository_dir / contract.ENCODER / "config.pbtxt"
    parameters = read_config(config_path).parameters if config_path.is_file() else {}
    precision = "f32"
    if contract.PARAM_PRECISION in parameters:
        precision = parameters[contract.PARAM_PRECISION].string_value
    contents: dict[Engine, bytes | None] = {}
    for variant in export.Variant:
        served = directory / ENCODER_FILES[variant.engine]
        exported = onnx_dir / variant.file_name
        if variant.engine not in contents:
            contents[variant.engine] = served.read_bytes() if served.is_file() else None
        served_bytes = contents[variant.engine]
        if served_bytes is None or not exported.is_file():
            continue
        if exported.stat().st_size != len(served_bytes):  # most candidates end here, unread
            continue
        if variant.engine is Engine.OPENVINO and variant.precision != precision:
            continue
        if exported.read_bytes() == served_bytes:
            return variant.value
    return None


def served_parameter(repository_dir: Path, model: str, key: str) -> int | None:
    """An integer parameter of `model`'s config in a written repository (None if it has none).

    Args:
        repository_dir: the model repository.
        model: the model's name, e.g. ``contract.ENCODER``.
        key: one of the ``contract.PARAM_*`` names.
    """
    path = repository_dir / model / "config.pbtxt"
    if not path.is_file():
        return None
    config = read_config(path)
    return int(config.parameters[key].string_value) if key in config.parameters else None
