"""The build steps. Each reads and writes files, so each can also run on its own:

train       -> <model_dir>/ (model, snapshot), metrics.json, evaluation.npz (features, labels,
               test-window scores of the model and of each ablation row), segments.json
export      -> <onnx_dir>/head.onnx, encoder-<variant>.onnx|.xml, variants.json
repository  -> model_repository/ serving the fastest variant that passed
report      -> reports/<profile>/model_card.md, card.json, reliability.png
segments    -> fit again: <model_dir>/segments.json and the head's centroids (train fits them
               once), reports/<profile>/segments.png and the card's Segments section
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ubm_build import data, export, paths
from ubm_build.data import pseudonymise
from ubm_build.data.point_in_time import DailySnapshots, EventLog, point_in_time_inputs
from ubm_build.export import openvino, tensorrt
from ubm_build.inputs import drift
from ubm_build.inputs.snapshot import FILE as SNAPSHOT_FILE
from ubm_build.model import ablation, baselines, card, quality, segments, train
from ubm_build.model.network import BehaviourModel, load_reader
from ubm_build.serving import repository, versions

Log = Callable[[str], None]
EVALUATION = "evaluation.npz"
SEGMENTS = "segments.json"
CANARY_RECORDS = 32
"""Test-window records a rollout scores on a new version before it switches to it."""


def train_step(
    profile: train.Profile, csv: Path, base_model: Path, model_dir: Path, log: Log
) -> dict:
    examples = data.examples_by_window(csv)
    result = train.train(profile, examples, EventLog.read(csv), base_model, model_dir)
    log(
        f"trained on {result.summary['train_examples']} sessions in"
        f" {result.summary['train_seconds']} s; test-window ROC-AUC"
        f" {result.summary['test_roc_auc']:.4f} ({result.summary['test_examples']} sessions,"
        f" {result.summary['test_positives']} positive)"
    )
    rows = ablation.ablation(result, base_model, c=profile.head_c)
    summary = {**result.summary, "base_model": str(base_model), "csv": str(csv)}
    fingerprint = pseudonymise.key_fingerprint(csv)
    if fingerprint:
        summary["pseudonym_key"] = fingerprint
    (model_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    arrays = {"test_logits": result.test_logits, "test_probabilities": result.test_probabilities}
    for name, window in result.windows.items():
        arrays |= {f"{name}_features": window.inputs.features, f"{name}_labels": window.labels}
    with torch.inference_mode():
        for name in ("train", "test"):
            embeddings = torch.from_numpy(result.windows[name].embeddings)
            arrays[f"{name}_components"] = result.model.head.components(embeddings).numpy()
    arrays |= {f"ablation_{name}": scores for name, scores in rows.items()}
    np.savez(model_dir / EVALUATION, **arrays)
    if "privacy" in result.summary:
        (model_dir / SEGMENTS).unlink(missing_ok=True)
        log(
            "segments: not fitted (k-means on the train window is not differentially private);"
            " every user is in segment 0"
        )
    else:
        examples = result.windows["train"].examples
        fit_segments(result.model, model_dir, examples, arrays["train_components"], log)
    return summary


def export_step(
    model_dir: Path,
    onnx_dir: Path,
    csv: Path,
    log: Log,
    *,
    atol: float = export.DEFAULT_ATOL,
    max_int8_auc_loss: float = export.DEFAULT_MAX_INT8_AUC_LOSS,
    engines: Collection[export.Engine] = (export.Engine.ONNXRUNTIME, export.Engine.OPENVINO),
) -> list[export.VariantReport]:
    """Export, derive every CPU encoder variant of `engines` and check each on the whole test
    window.

    The int8 variants are calibrated on `export.CALIBRATION_RECORDS` random train-window
    records. openvino-bf16 is left out where the CPU has no bf16 instructions.
    """
    model = BehaviourModel.load(model_dir)
    reader = load_reader(model_dir)
    head = export.export_head(model, onnx_dir / "head.onnx")
    fp32 = export.export_encoder(model, onnx_dir / "encoder.onnx")
    examples = data.examples_by_window(csv)
    test = examples["test"]
    events, labels = train.events_of(test), train.labels_of(test)
    reference = np.load(model_dir / EVALUATION)["test_probabilities"]
    reference_segments = _reference_segments(model, model_dir)
    calibration = _calibration(examples, reader)
    reports = []
    for variant in (v for v in export.CPU_VARIANTS if v.engine in engines):
        if variant is export.Variant.OPENVINO_BF16 and not openvino.bf16_supported():
            log(f"{variant.value:>13}: skipped, this CPU has no bf16 instructions")
            continue
        encoder = onnx_dir / variant.file_name
        if not encoder.is_file() or variant is not export.Variant.OPENVINO_BF16:
            export.derive_variant(variant, fp32, model, encoder, calibration)
        report = export.check_variant(
            variant,
            encoder,
            head,
            reader,
            events,
            labels,
            reference,
            reference_segments=reference_segments,
            atol=atol,
            max_int8_auc_loss=max_int8_auc_loss,
        )
        _log_report(variant, report, log)
        reports.append(report)
    export.write_reports(reports, onnx_dir)
    export.require_passing(reports, atol, max_int8_auc_loss)
    return reports


PYTORCH_GPU = "pytorch-fp16"
"""What ``--device cuda`` serves on the python target: the trained BERT in PyTorch, fp16."""


def tensorrt_step(
    model_dir: Path,
    onnx_dir: Path,
    csv: Path,
    log: Log,
    *,
    precision: str = "fp32",
    atol: float = export.DEFAULT_ATOL,
    max_int8_auc_loss: float = export.DEFAULT_MAX_INT8_AUC_LOSS,
) -> export.VariantReport:
    """Build the TensorRT plan of `precision` ("fp32", "fp16" or "int8") from the exported fp32
    graph, check it on the GPU like the CPU variants and add its report to the export's.

    int8 is built from a QDQ graph calibrated on the same train-window records as the CPU
    int8 variants (TensorRT's explicit quantisation).

    Raises:
        EngineUnavailable: no TensorRT or no CUDA GPU here (checked first).
        FileNotFoundError: `onnx_dir` has no fp32 encoder (run ``ubm-build export`` first).
    """
    reason = tensorrt.unavailable_reason()
    if reason is not None:
        raise tensorrt.EngineUnavailable(reason)
    fp32 = onnx_dir / "encoder.onnx"
    if not fp32.is_file():
        raise FileNotFoundError(f"{fp32} is missing: run `ubm-build export` first")
    variant = export.Variant(f"tensorrt-{precision}")
    model = BehaviourModel.load(model_dir)
    reader = load_reader(model_dir)
    examples = data.examples_by_window(csv)
    graph = fp32
    if precision == "int8":
        graph = export.quantize_int8_static(
            fp32,
            onnx_dir / "encoder-tensorrt-qdq.onnx",
            _calibration(examples, reader),
            for_tensorrt=True,
        )
    settings = tensorrt.PlanSettings(
        max_length=model.spec.max_length, fp16=precision != "fp32", int8=precision == "int8"
    )
    plan = tensorrt.build_plan(graph, onnx_dir / variant.file_name, settings)
    test = examples["test"]
    report = export.check_variant(
        variant,
        plan,
        onnx_dir / "head.onnx",
        reader,
        train.events_of(test),
        train.labels_of(test),
        np.load(model_dir / EVALUATION)["test_probabilities"],
        reference_segments=_reference_segments(model, model_dir),
        atol=atol,
        max_int8_auc_loss=max_int8_auc_loss,
    )
    _log_report(variant, report, log)
    export.write_reports([report], onnx_dir, keep_others=True)
    return report


def _reference_segments(model: BehaviourModel, model_dir: Path) -> np.ndarray | None:
    """PyTorch's segment of each test-window record (None for a model trained before the
    test window's components were kept)."""
    evaluation = np.load(model_dir / EVALUATION)
    if "test_components" not in evaluation.files:
        return None
    centroids = model.head.centroids.numpy()
    return segments.Segmentation(centroids, ()).assign(evaluation["test_components"])[0]


def _calibration(examples: dict, reader) -> export.TokenCalibration:
    """`export.CALIBRATION_RECORDS` random train-window records (seed 0)."""
    picked = random.Random(0).sample(
        examples["train"], min(export.CALIBRATION_RECORDS, len(examples["train"]))
    )
    return export.TokenCalibration(reader, train.events_of(picked))


def _log_report(variant: export.Variant, report: export.VariantReport, log: Log) -> None:
    log(
        f"{variant.value:>13}: max |p - PyTorch| {report.probability_max_abs_diff:.2e},"
        f" ROC-AUC {report.roc_auc:.4f} ({report.roc_auc_delta:+.4f}),"
        f" {report.records_per_s:.0f} records/s in-process,"
        f" alone vs in a batch {report.batch_max_abs_diff:.1e} (<= {report.batch_bound:g}),"
        + (
            f" segment as PyTorch's {report.segment_agreement:.2%},"
            if report.segment_agreement is not None
            else ""
        )
        + f" {'passed' if report.passed else 'FAILED'}"
        + ("" if variant.servable else " (comparison only, never served)")
    )


def repository_step(
    model_dir: Path,
    onnx_dir: Path,
    out: Path,
    target: repository.Target,
    log: Log,
    variant: str | None = None,
    tuning: repository.Tuning | None = None,
    device: str = "cpu",
) -> str:
    """Write the repository with `variant`, by default the fastest one that passed on one of
    the target's engines; returns what the encoder serves.

    The python target on ``cuda`` serves the trained BERT in PyTorch (fp16), which
    ``scripts/gpu_check.sh`` checks on a GPU; ``onnxruntime`` on ``cuda`` serves the fp32 graph,
    which ONNX Runtime hands to TensorRT. A variant whose scores depend on their batch is never
    written.
    """
    fp32 = onnx_dir / export.Variant.FP32.file_name
    if target is repository.Target.PYTHON and device == "cuda":
        if variant is not None:
            raise export.ParityError(
                f"the python target on cuda serves {PYTORCH_GPU}, not an exported variant"
                f" ({variant}); use --target onnxruntime or tensorrt for those on a GPU"
            )
        served, engine, precision, encoder = PYTORCH_GPU, export.Engine.PYTORCH, "fp16", None
    else:
        chosen = _chosen_variant(onnx_dir, target, variant, device)
        served, encoder = chosen.variant, Path(chosen.path)
        engine, precision = export.Variant(served).engine, export.Variant(served).precision
    model = BehaviourModel.load(model_dir)
    reader = load_reader(model_dir)
    summary = json.loads((model_dir / "metrics.json").read_text())
    windows = data.examples_by_window(Path(summary["csv"]))
    test = windows["test"]
    canary = random.Random(0).sample(test, min(CANARY_RECORDS, len(test)))
    train_events = train.events_of(windows["train"])
    reference = drift.reference_of(
        train_events,
        reader(train_events).truncated,
        model.spec.max_length,
        holdout=train.events_of(windows["valid"]),
    )
    spec = repository.RepositorySpec(
        max_length=model.spec.max_length,
        hidden_size=model.spec.hidden_size,
        n_features=len(model.spec.feature_names),
        snapshot_words=model.spec.snapshot_words,
        target=target,
        engine=engine,
        precision=precision,
        device="cuda" if target is repository.Target.TENSORRT else device,
        tuning=tuning or repository.Tuning(),
        pseudonym_key=summary.get("pseudonym_key"),
    )
    repository.write_repository(
        out,
        spec,
        tokenizer_json=model_dir / "tokenizer.json",
        snapshot_file=model_dir / SNAPSHOT_FILE,
        encoder=encoder or model_dir / "encoder",
        head_onnx=onnx_dir / "head.onnx",
        metadata=build_metadata(summary, served),
        canary_records=[{"id": ex.id, "events": ex.to_record()["events"]} for ex in canary],
        canary_encoder=fp32,
        drift_reference=reference,
    )
    log(
        f"model repository ({target.value} on {spec.device}, encoder {served}) written to"
        f" {out}, version {versions.pinned_version(out)}"
    )
    log(f"serving {spec.tuning}")
    return served


def _chosen_variant(
    onnx_dir: Path, target: repository.Target, variant: str | None, device: str
) -> export.VariantReport:
    """The exported variant a repository for `target` serves: `variant`, or the fastest that
    passed on one of its engines (``onnxruntime`` on ``cuda``: fp32, which TensorRT reads).

    Raises:
        ParityError: none passed, or `variant` was not exported, runs on another engine, or
            depends on its batch.
    """
    reports = export.read_reports(onnx_dir)
    if variant is None and target is repository.Target.ONNXRUNTIME and device == "cuda":
        variant = export.Variant.FP32.value
    if variant is None:
        chosen = export.fastest_passing(reports, target.engines)
    else:
        chosen = next((r for r in reports if r.variant == variant), None)
        if chosen is None:
            hint = (
                " (`ubm-build export --engine tensorrt` on a GPU machine)"
                if (export.Variant(variant).engine.on_gpu)
                else ""
            )
            raise export.ParityError(f"{variant} was not exported to {onnx_dir}{hint}")
        if export.Variant(variant).engine not in target.engines:
            raise export.ParityError(f"the {target.value} target cannot serve {variant}")
    if not chosen.batch_invariant:
        raise export.ParityError(
            f"{chosen.variant} encoder is not served: a record's score depends on its batch"
            f" (alone vs in a batch: {chosen.batch_max_abs_diff}, at most {chosen.batch_bound})"
        )
    return chosen


def build_metadata(summary: dict, variant: str) -> dict[str, str]:
    """What the served ensemble says about its build (config parameters): training and the
    data snapshot it was trained on."""
    csv = Path(summary["csv"])

    def moment(ts: int) -> str:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat()

    return {
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoder_variant": variant,
        "base_model": "/".join(Path(summary["base_model"]).parts[-2:]),
        "train_examples": str(summary["train_examples"]),
        "test_roc_auc": f"{summary['test_roc_auc']:.4f}",
        "data_file": csv.name,
        "data_sha256": hashlib.sha256(csv.read_bytes()).hexdigest(),
        "train_window": "/".join(moment(ts) for ts in data.WINDOWS["train"]),
        "test_window": "/".join(moment(ts) for ts in data.WINDOWS["test"]),
        **({"pseudonym_key": summary["pseudonym_key"]} if "pseudonym_key" in summary else {}),
    }


def report_step(
    model_dir: Path,
    onnx_dir: Path,
    out_dir: Path,
    served: str,
    log: Log,
    build_seconds: float | None = None,
) -> Path:
    """Baselines, the served model and its ablation on the same test window and the same
    point-in-time features, written as a model card."""
    evaluation = np.load(model_dir / EVALUATION)
    summary = json.loads((model_dir / "metrics.json").read_text())
    features = {w: evaluation[f"{w}_features"] for w in train.WINDOW_NAMES}
    labels = {w: evaluation[f"{w}_labels"] for w in train.WINDOW_NAMES}
    test_labels = labels["test"]
    curves, models, scores = {}, {}, {}
    for name, result in baselines.run_baselines(features, labels).items():
        models[name] = quality.evaluate(
            test_labels, result.test_probabilities, uncalibrated=result.test_uncalibrated
        )
        curves[name], scores[name] = (test_labels, result.test_probabilities), result.test_scores
    bert_uncalibrated = 1 / (1 + np.exp(-evaluation["test_logits"].astype(np.float64)))
    models["bert"] = quality.evaluate(
        test_labels, evaluation["test_probabilities"], uncalibrated=bert_uncalibrated
    )
    curves["bert"] = (test_labels, evaluation["test_probabilities"])
    best = max(scores, key=lambda name: models[name].roc_auc)
    rows = {name: scores[name] for name in scores}
    rows |= {
        name: evaluation[f"ablation_{name}"]
        for name in ablation.TITLES
        if f"ablation_{name}" in evaluation
    }
    comparisons = {
        name: quality.compare(test_labels, row, scores[best]).to_dict()
        for name, row in rows.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    quality.reliability_plot(curves, out_dir / "reliability.png")
    content = card.Card(
        summary=summary,
        windows=card.window_counts(data.examples_by_window(Path(summary["csv"]))),
        models={name: m.to_dict() for name, m in models.items()},
        ablation=comparisons,
        best_baseline=best,
        variants=[r.to_dict() for r in export.read_reports(onnx_dir)],
        served_variant=served,
        build_seconds=build_seconds,
        segments=_segments_report(model_dir, out_dir),
        privacy=_privacy_table(summary),
    )
    path = content.write(out_dir)
    log(f"model card written to {path}")
    for name, metrics in models.items():
        log(
            f"{name:>19}: ROC-AUC {metrics.roc_auc:.4f} [{metrics.roc_auc_ci[0]:.3f},"
            f" {metrics.roc_auc_ci[1]:.3f}], PR-AUC {metrics.pr_auc:.4f}, ECE {metrics.ece:.4f}"
        )
    return path


def fit_segments(
    model: BehaviourModel,
    model_dir: Path,
    examples: Sequence[data.Example],
    components: np.ndarray,
    log: Log,
    k: int | None = None,
) -> dict:
    """k-means on the train window's `components`, k chosen by `segments.choose_k` unless
    given; the centroids join the head (``head.pt``) and, with the criterion's scores and each
    segment's profile, ``<model_dir>/segments.json``. Returns that file's content."""
    fitted = segments.fit(components, k)
    assigned, _ = fitted.assign(components)
    profiles = segments.describe(examples, assigned, fitted.k)
    model.head.set_centroids(fitted.centroids)
    torch.save(model.head.state_dict(), model_dir / "head.pt")
    result = {
        "k": fitted.k,
        "criterion": segments.CRITERION,
        "candidates": [asdict(c) for c in fitted.candidates],
        "profiles": [p.to_dict() for p in profiles],
        "centroids": fitted.centroids.tolist(),
    }
    (model_dir / SEGMENTS).write_text(json.dumps(result, indent=2) + "\n")
    for p in profiles:
        log(
            f"segment {p.segment}: {p.size} sessions ({p.share:.0%}), purchase rate"
            f" {p.purchase_rate:.1%}, median session {p.median_session_events:g} events"
        )
    return result


def _segments_report(model_dir: Path, reports_dir: Path) -> dict | None:
    """``segments.png`` of the model's segments in `reports_dir`; the card's Segments entry
    (``segments.json`` without the centroids), or None for a model without segments."""
    path = model_dir / SEGMENTS
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    centroids = np.asarray(result["centroids"], dtype=np.float32)
    components = np.load(model_dir / EVALUATION)["train_components"]
    assigned, _ = segments.Segmentation(centroids, ()).assign(components)
    segments.plot(components, assigned, reports_dir / "segments.png")
    return {key: value for key, value in result.items() if key != "centroids"}


def _privacy_table(summary: dict) -> dict | None:
    """The measured cost of differential privacy (``make privacy-table``) for the model's
    profile, if it was measured."""
    path = paths.RESULTS / "privacy.json"
    if not path.is_file():
        return None
    table = json.loads(path.read_text())
    return table if table["profile"]["name"] == summary["profile"]["name"] else None


def segments_step(model_dir: Path, reports_dir: Path, log: Log, k: int | None = None) -> Path:
    """Fit the segments again (`fit_segments`; `train` fits them once), e.g. with another k.

    Also writes ``<reports_dir>/segments.png`` and the card's Segments section, if the card
    exists. The served head changes only when `export` and `repository` run again.
    """
    summary = json.loads((model_dir / "metrics.json").read_text())
    profile = summary["profile"]
    examples = train.subsample(
        data.examples_by_window(Path(summary["csv"]))["train"],
        profile["max_train_examples"],
        profile["seed"],
    )
    model = BehaviourModel.load(model_dir)
    evaluation = dict(np.load(model_dir / EVALUATION))
    windows = {"train": examples, "test": data.examples_by_window(Path(summary["csv"]))["test"]}
    missing = [name for name in windows if f"{name}_components" not in evaluation]
    if missing:  # a model trained before the components were kept: embed the windows again
        snapshots = DailySnapshots(EventLog.read(Path(summary["csv"])))
        for name in missing:
            log(f"embedding the {len(windows[name])} {name}-window sessions again")
            inputs = point_in_time_inputs(load_reader(model_dir), windows[name], snapshots)
            with torch.inference_mode():
                embeddings = torch.from_numpy(train.embed(model, inputs))
                evaluation[f"{name}_components"] = model.head.components(embeddings).numpy()
        np.savez(model_dir / EVALUATION, **evaluation)
    fit_segments(model, model_dir, examples, evaluation["train_components"], log, k)
    reports_dir.mkdir(parents=True, exist_ok=True)
    entry = _segments_report(model_dir, reports_dir)
    card_file = reports_dir / "card.json"
    if card_file.is_file():
        content = replace(card.Card(**json.loads(card_file.read_text())), segments=entry)
        log(f"model card updated: {content.write(reports_dir)}")
    log("the served head changes when `ubm-build export` and `ubm-build repository` run again")
    return model_dir / SEGMENTS
