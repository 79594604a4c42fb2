"""Shared fixtures.

Unit tests may use `tokenizer`, the packaged base model's. The others are for integration tests
only: `examples` reads the whole Taobao CSV, `tiny_model` builds a torch BERT, and
`tiny_reader`, `tiny_onnx`, `tiny_repository` and `triton` are made from it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from transformers import BertForMaskedLM

from ubm import AsyncUbmClient, UbmClient
from ubm.scores import Score
from ubm_build import data, export
from ubm_build.data.point_in_time import SERVING_AS_OF, EventLog
from ubm_build.inputs import drift, snapshot
from ubm_build.inputs.model_inputs import RecordReader
from ubm_build.model import segments
from ubm_build.model.network import (
    DEFAULT_BASE_MODEL,
    BehaviourModel,
    load_reader,
    load_tokenizer,
    tiny_bert_config,
)
from ubm_build.model.train import embed, events_of
from ubm_build.serving import repository, server

MAX_LENGTH = 64
TINY_SEGMENTS = 4

# Tests start subprocesses (perf_analyzer, the CLI) with gRPC channels open; see
# ubm_build.bench.perf_analyzer for why gRPC's fork support must be off for that.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


@pytest.fixture(scope="session")
def examples() -> dict[str, list[data.Example]]:
    """Every example of the real Taobao CSV, by window, as `ubm-build` loads them."""
    return data.examples_by_window(data.DEFAULT_CSV)


@functools.cache
def serving_snapshot() -> snapshot.Snapshot:
    """The real CSV's snapshot as of the test window's start: what a full build serves."""
    return EventLog.read(data.DEFAULT_CSV).snapshot(SERVING_AS_OF)


def make_tiny_model(
    directory: Path,
    examples: dict[str, list[data.Example]],
    seed: int = 0,
    snapshot_words: bool = True,
) -> tuple[BehaviourModel, Path]:
    """A randomly initialised 2-layer BERT + head, saved like a trained model (with the
    serving snapshot, its words in the text unless `snapshot_words` is false, and
    `TINY_SEGMENTS` segments of 500 train-window records)."""
    model = BehaviourModel.tiny(
        DEFAULT_BASE_MODEL, MAX_LENGTH, seed=seed, snapshot_words=snapshot_words
    )
    reader = RecordReader(
        load_tokenizer(DEFAULT_BASE_MODEL), MAX_LENGTH, serving_snapshot(), snapshot_words
    )
    inputs = reader(events_of(examples["train"][:500]))
    model.head.fit_feature_scaling(inputs.features)
    model.head.calibration_bias.fill_(-2.0)  # probabilities in a realistic range
    with torch.inference_mode():
        components = model.head.components(torch.from_numpy(embed(model, inputs))).numpy()
    model.head.set_centroids(segments.fit(components, k=TINY_SEGMENTS).centroids)
    model.save(directory)
    serving_snapshot().save(directory / snapshot.FILE)
    return BehaviourModel.load(directory), directory


def export_tiny_model(model: BehaviourModel, directory: Path) -> tuple[Path, Path]:
    """(encoder.onnx, head.onnx) of `model` in `directory`."""
    return (
        export.export_encoder(model, directory / "encoder.onnx"),
        export.export_head(model, directory / "head.onnx"),
    )


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with a masked-LM head, saved in Hugging Face format
    with the packaged tokenizer: what masked-LM pretraining and `BertModel` both load."""
    directory = tmp_path_factory.mktemp("tiny-base")
    vocab_size = load_tokenizer(DEFAULT_BASE_MODEL).get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(vocab_size)).save_pretrained(directory)
    shutil.copy2(DEFAULT_BASE_MODEL / "tokenizer.json", directory / "tokenizer.json")
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, examples) -> tuple[BehaviourModel, Path]:
    return make_tiny_model(tmp_path_factory.mktemp("model"), examples)


@pytest.fixture(scope="session")
def tiny_reader(tiny_model) -> RecordReader:
    """How the tiny model reads records: its tokenizer, the serving snapshot, its words."""
    return load_reader(tiny_model[1])


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    return export_tiny_model(tiny_model[0], tmp_path_factory.mktemp("onnx"))


def canary_records(examples: dict[str, list[data.Example]], n: int = 16) -> list[dict]:
    """The first `n` test-window records, as a build's canary."""
    return [{"id": ex.id, "events": ex.to_record()["events"]} for ex in examples["test"][:n]]


def write_tiny_repository(
    out: Path,
    model: BehaviourModel,
    model_dir: Path,
    onnx: tuple[Path, Path],
    canary: list[dict],
    drift_reference: drift.DriftReference | None = None,
) -> Path:
    """A new version of a tiny model in the repository `out` (see `repository.write_repository`)."""
    spec = repository.RepositorySpec(
        max_length=MAX_LENGTH,
        hidden_size=model.spec.hidden_size,
        n_features=len(model.spec.feature_names),
        snapshot_words=model.spec.snapshot_words,
    )
    encoder_onnx, head_onnx = onnx
    return repository.write_repository(
        out,
        spec,
        tokenizer_json=model_dir / "tokenizer.json",
        snapshot_file=model_dir / snapshot.FILE,
        encoder=encoder_onnx,
        head_onnx=head_onnx,
        canary_records=canary,
        drift_reference=drift_reference,
    )


@pytest.fixture(scope="session")
def tiny_repository(tiny_model, tiny_onnx, tmp_path_factory, examples) -> Path:
    model, model_dir = tiny_model
    return write_tiny_repository(
        tmp_path_factory.mktemp("model_repository"),
        model,
        model_dir,
        tiny_onnx,
        canary_records(examples),
    )


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """The packaged base model's tokenizer: the one `tiny_model` saves, without building it."""
    return load_tokenizer(DEFAULT_BASE_MODEL)


@pytest.fixture(scope="session")
def triton(tiny_repository, tmp_path_factory) -> Iterator[server.TritonServer]:
    """A real tritonserver on free localhost ports serving the tiny repository."""
    ports = server.Ports.free()
    workdir = tmp_path_factory.mktemp("triton")
    with server.TritonServer(tiny_repository, workdir=workdir, ports=ports) as triton:
        yield triton


class BlockingAsyncClient:
    """Drives an `AsyncUbmClient` from synchronous test code, on an event loop of its own.

    Coroutine methods run to completion; `score_iter` is drained into a list.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()

        async def create() -> AsyncUbmClient:  # the channel belongs to the running loop
            return AsyncUbmClient(*args, **kwargs)

        self._client = self._loop.run_until_complete(create())

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name == "score_iter":
            return lambda *a, **k: self._loop.run_until_complete(_collect(attribute(*a, **k)))
        if inspect.iscoroutinefunction(attribute):
            return lambda *a, **k: self._loop.run_until_complete(attribute(*a, **k))
        return attribute

    def __enter__(self) -> BlockingAsyncClient:
        self._loop.run_until_complete(self._client.__aenter__())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


async def _collect(scores: AsyncIterator[Score]) -> list[Score]:
    return [score async for score in scores]


LOADTEST = Path(__file__).resolve().parents[1] / "loadtest"


@pytest.fixture(scope="module")
def loadtest_module() -> Iterator[Callable[[str], Any]]:
    """`importlib.import_module` with loadtest/ on ``sys.path`` (its scripts import flat)."""
    sys.path.insert(0, str(LOADTEST))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(LOADTEST))


@pytest.fixture(params=["sync", "async"])
def connect(request) -> Callable[..., Any]:
    """Makes a `UbmClient`, or an `AsyncUbmClient` behind a blocking facade: same test cases."""
    return UbmClient if request.param == "sync" else BlockingAsyncClient
