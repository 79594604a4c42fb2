"""The served rows: the `ubm` ensemble in a tritonserver, through `ubm.UbmClient`, and what a
written repository serves that the in-process rows must match."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tritonclient.grpc import InferenceServerClient

from ubm import UbmClient, contract
from ubm_build import export
from ubm_build.bench.errors import BenchError
from ubm_build.bench.rows import Row, summarise_batches
from ubm_build.bench.workload import Batch
from ubm_build.inputs import snapshot
from ubm_build.model.network import BehaviourModel
from ubm_build.serving import triton_metrics
from ubm_build.serving.repository import (
    RepositorySpec,
    Tuning,
    served_parameter,
    served_variant,
    write_repository,
)

REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ServedConfig:
    """What a written model repository serves, as far as the in-process rows compare with it."""

    variant: str | None
    """The exported encoder variant it serves, None when it is none of the exported ones."""
    max_length: int | None
    """Tokens per record in ``preprocess`` (None when its config has no such parameter)."""
    rows_per_run: int
    """Records per encoder run, 0 for whole batches."""

    @classmethod
    def read(cls, repository_dir: Path, onnx_dir: Path) -> ServedConfig:
        """From `repository_dir`'s configs, and its encoder compared with `onnx_dir`'s."""
        return cls(
            variant=served_variant(repository_dir, onnx_dir),
            max_length=served_parameter(
                repository_dir, contract.PREPROCESS, contract.PARAM_MAX_LENGTH
            ),
            rows_per_run=served_parameter(
                repository_dir, contract.ENCODER, contract.PARAM_ROWS_PER_RUN
            )
            or 0,
        )


def variant_repository(
    out: Path, model_dir: Path, onnx_dir: Path, variant: str, tuning: Tuning | None = None
) -> Path:
    """A python-target repository at `out` serving `onnx_dir`'s `variant` of the model in
    `model_dir`, with `tuning` (default: the shipped one)."""
    model = BehaviourModel.load(model_dir)
    chosen = export.Variant(variant)
    spec = RepositorySpec(
        max_length=model.spec.max_length,
        hidden_size=model.spec.hidden_size,
        n_features=len(model.spec.feature_names),
        snapshot_words=model.spec.snapshot_words,
        engine=chosen.engine,
        precision=chosen.precision,
        tuning=tuning or Tuning(),
    )
    return write_repository(
        out,
        spec,
        tokenizer_json=model_dir / "tokenizer.json",
        snapshot_file=model_dir / snapshot.FILE,
        encoder=onnx_dir / chosen.file_name,
        head_onnx=onnx_dir / "head.onnx",
    )


def ensemble_counts(client: InferenceServerClient) -> tuple[int, int] | None:
    """(successful requests, records inferred) of the ensemble so far, from the server's
    statistics; None where they cannot be read (they only ever serve as a cross-check)."""
    try:
        stats = client.get_inference_statistics(contract.ENSEMBLE, as_json=True)
    except Exception:
        return None
    for model in stats.get("model_stats", []):
        if model.get("name") == contract.ENSEMBLE:
            success = model.get("inference_stats", {}).get("success", {})
            return int(success.get("count", 0)), int(model.get("inference_count", 0))
    return None


def warm_up(url: str, batches: Sequence[Batch]) -> None:
    """Score `batches` once, untimed, so that every model has loaded and run.

    Raises:
        BenchError: a request failed.
    """
    with UbmClient(url, timeout_s=REQUEST_TIMEOUT_S) as client:
        for batch in batches:
            try:
                client.score_batch(batch)
            except Exception as e:
                raise BenchError(f"served warm-up request failed: {e}") from e


def served_row(
    url: str,
    batches: Sequence[Batch],
    concurrency: int,
    metrics_url: str | None = None,
    variant: str | None = None,
) -> Row:
    """`concurrency` threads, each with its own client, take batches from one queue.

    With `metrics_url`, the row carries Triton's per-model split of the run (`triton_metrics`).
    `variant` names a server of another encoder variant than the one the bench serves (its
    row is ``served_c<N>_<variant>``).

    Raises:
        BenchError: a request failed.
    """
    work: queue.SimpleQueue = queue.SimpleQueue()
    for batch in batches:
        work.put(batch)
    latencies: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(concurrency + 1)
    lock = threading.Lock()

    def worker() -> None:
        with UbmClient(url, timeout_s=REQUEST_TIMEOUT_S) as client:
            client.is_ready()  # connects the channel before the clock starts
            start.wait()
            while True:
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                t = time.perf_counter()
                try:
                    client.score_batch(batch)
                except BaseException as e:
                    errors.append(e)
                    return
                with lock:
                    latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    before = triton_metrics.scrape(metrics_url) if metrics_url else None
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise BenchError(f"served request failed at concurrency {concurrency}: {errors[0]}")
    split = None
    if before is not None:
        models = (contract.ENSEMBLE, contract.PREPROCESS, contract.ENCODER, contract.HEAD)
        after = triton_metrics.scrape_after(metrics_url, before, models, len(batches))
        split = {m: s.to_dict() for m, s in triton_metrics.split(before, after).items()}
    name = f"served_c{concurrency}" + ("_single" if len(batches[0]) == 1 else "")
    name += f"_{variant.replace('-', '_')}" if variant else ""
    description = f"tritonserver ensemble via UbmClient, {concurrency} thread(s) with own client"
    description += f", {variant} encoder" if variant else ""
    row = summarise_batches(name, description, "request", batches, latencies, seconds)
    return replace(row, server=split)
