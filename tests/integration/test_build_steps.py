"""The build steps end to end on a tiny model: train (with one masked-LM epoch) -> export ->
repository -> report, on the real CSV, into temporary directories.

What each step writes is checked with the numbers it wrote: the metrics and evaluation arrays
of training (the ablation rows included), the served snapshot, the exported variants, the
repository's build metadata, and the model card with its ablation table.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ubm import contract
from ubm_build import export, paths, steps
from ubm_build.data.point_in_time import SERVING_AS_OF, EventLog
from ubm_build.export import openvino
from ubm_build.export.variants import REQUIRED
from ubm_build.inputs import snapshot
from ubm_build.inputs.model_inputs import FEATURE_NAMES
from ubm_build.model import ablation, card, segments, train
from ubm_build.model.network import (
    BehaviourModel,
)
from ubm_build.serving import repository, versions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PROFILE = train.Profile(
    "tiny",
    max_train_examples=800,
    max_length=32,
    text_components=8,
    pretrain_epochs=1,
    snapshot_words=False,
)
ABLATION_ROWS = (
    "text",
    "text_session",
    "text_session_snapshot",
    "snapshot_words",
    "base_encoder",  # the model was adapted by masked-LM
)
BASELINES = ("logistic_regression", "lightgbm")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base_model(tiny_base_model) -> Path:
    return tiny_base_model


@dataclass(frozen=True)
class Build:
    model_dir: Path
    onnx_dir: Path
    repository_dir: Path
    reports_dir: Path
    summary: dict
    variant_reports: list[export.VariantReport]
    served: str
    card_path: Path
    log: list[str]


@pytest.fixture(scope="module")
def build(base_model, tmp_path_factory) -> Build:
    root = tmp_path_factory.mktemp("build")
    model_dir, onnx_dir = root / "model", root / "onnx"
    repository_dir, reports_dir = root / "model_repository", root / "reports"
    lines: list[str] = []
    summary = steps.train_step(PROFILE, paths.DEFAULT_CSV, base_model, model_dir, lines.append)
    reports = steps.export_step(model_dir, onnx_dir, paths.DEFAULT_CSV, lines.append)
    served = steps.repository_step(
        model_dir, onnx_dir, repository_dir, repository.Target.PYTHON, lines.append
    )
    card_path = steps.report_step(model_dir, onnx_dir, reports_dir, served, lines.append)
    return Build(
        model_dir,
        onnx_dir,
        repository_dir,
        reports_dir,
        summary,
        reports,
        served,
        card_path,
        lines,
    )


@pytest.fixture(scope="module")
def evaluation(build) -> dict[str, np.ndarray]:
    with np.load(build.model_dir / steps.EVALUATION) as f:
        return dict(f)


@pytest.fixture(scope="module")
def card_json(build) -> dict:
    return json.loads((build.reports_dir / "card.json").read_text())


def test_metrics_describe_the_training(build, base_model):
    metrics = json.loads((build.model_dir / "metrics.json").read_text())
    assert metrics == build.summary
    assert metrics["profile"] == {
        "name": "tiny",
        "max_train_examples": 800,
        "max_length": 32,
        "pretrain_epochs": 1,
        "snapshot_words": False,
        "text_components": 8,
        "head_c": 1.0,
        "batch_size": 16,
        "seed": 0,
        "dp_epsilon": None,
        "dp_delta": None,
    }
    assert metrics["train_examples"] == 800
    assert 0 < metrics["train_positives"] < 800
    pretraining = metrics["pretraining"]
    assert pretraining["texts"] == metrics["train_examples"]
    assert pretraining["epochs"] == 1
    for loss in (pretraining["first_loss"], pretraining["last_loss"]):
        assert isinstance(loss, float)
        assert math.isfinite(loss)
        assert loss > 0
    assert 0.0 <= metrics["valid_roc_auc"] <= 1.0
    assert 0.0 <= metrics["test_roc_auc"] <= 1.0
    assert metrics["snapshot_as_of"] == SERVING_AS_OF
    assert metrics["base_model"] == str(base_model)
    assert metrics["csv"] == str(paths.DEFAULT_CSV)
    # The adapted encoder is the model's own encoder/, its working copy is gone.
    assert not (build.model_dir / "pretrained").exists()
    assert (build.model_dir / "encoder").is_dir()


def test_evaluation_holds_every_window_and_ablation_row(build, evaluation):
    for window in train.WINDOW_NAMES:
        features, labels = evaluation[f"{window}_features"], evaluation[f"{window}_labels"]
        assert features.shape == (len(labels), len(FEATURE_NAMES))
        assert set(np.unique(labels)) == {0, 1}
    assert len(evaluation["train_labels"]) == build.summary["train_examples"]
    test_labels = evaluation["test_labels"]
    n_test = build.summary["test_examples"]
    assert len(test_labels) == n_test
    assert int(test_labels.sum()) == build.summary["test_positives"]
    assert evaluation["test_logits"].shape == evaluation["test_probabilities"].shape == (n_test,)
    assert roc_auc_score(test_labels, evaluation["test_probabilities"]) == pytest.approx(
        build.summary["test_roc_auc"], abs=1e-12
    )

    rows = sorted(k.removeprefix("ablation_") for k in evaluation if k.startswith("ablation_"))
    assert sorted(ABLATION_ROWS) == rows
    assert set(rows) == set(ablation.TITLES)  # every row applies to a pretrained model
    for row in rows:
        scores = evaluation[f"ablation_{row}"]
        assert scores.shape == (n_test,)
        assert np.isfinite(scores).all()


def test_served_ablation_row_is_the_served_model(evaluation):
    """The served row refits the served head on the same inputs: a deterministic fit, so the
    same logits and the same ranking of the test window."""
    served = evaluation[f"ablation_{ablation.served_row(PROFILE.snapshot_words)}"]
    labels = evaluation["test_labels"]
    assert roc_auc_score(labels, served) == pytest.approx(
        roc_auc_score(labels, evaluation["test_probabilities"]), abs=1e-9
    )
    np.testing.assert_allclose(served, evaluation["test_logits"], rtol=1e-5, atol=1e-5)


def test_model_serves_the_snapshot_as_of_the_test_day(build, tmp_path):
    expected = tmp_path / snapshot.FILE
    EventLog.read(paths.DEFAULT_CSV).snapshot(SERVING_AS_OF).save(expected)
    assert sha256(build.model_dir / snapshot.FILE) == sha256(expected)


def test_export_checks_every_variant(build):
    by_variant = {r.variant: r for r in build.variant_reports}
    exported = [
        v
        for v in export.CPU_VARIANTS
        if v is not export.Variant.OPENVINO_BF16 or openvino.bf16_supported()
    ]
    assert set(by_variant) == {v.value for v in exported}
    for variant in REQUIRED:
        assert by_variant[variant.value].passed
    assert export.read_reports(build.onnx_dir) == build.variant_reports
    assert (build.onnx_dir / "head.onnx").is_file()
    for variant in exported:
        assert (build.onnx_dir / variant.file_name).is_file()
    # Segments are compared with PyTorch's: fp32 graphs agree on every test record.
    assert by_variant["fp32"].segment_agreement == 1.0
    assert all(0.9 <= r.segment_agreement <= 1.0 for r in build.variant_reports)


def test_repository_describes_its_build_and_snapshot(build):
    assert build.served == export.fastest_passing(build.variant_reports).variant
    version = versions.pinned_version(build.repository_dir)
    assert version == 1
    config = versions.read_config(build.repository_dir / contract.ENSEMBLE / "config.pbtxt")
    parameters = {key: p.string_value for key, p in config.parameters.items()}
    assert parameters["snapshot_as_of"] == str(SERVING_AS_OF)
    assert parameters["snapshot_sha256"] == sha256(build.model_dir / snapshot.FILE)
    assert parameters["test_roc_auc"] == f"{build.summary['test_roc_auc']:.4f}"
    assert parameters["encoder_variant"] == build.served
    assert parameters["train_examples"] == str(build.summary["train_examples"])
    assert versions.Build.read(build.repository_dir, version).metadata == parameters
    served_snapshot = versions.version_dir(build.repository_dir, contract.PREPROCESS, version)
    assert sha256(served_snapshot / snapshot.FILE) == parameters["snapshot_sha256"]


def test_card_has_the_ablation_and_a_verdict(build, card_json):
    assert build.card_path == build.reports_dir / "model_card.md"
    assert (build.reports_dir / "reliability.png").is_file()
    markdown = build.card_path.read_text()
    lines = markdown.splitlines()

    start = lines.index("## Ablation: what each part adds")
    header = lines.index("| model | ROC-AUC [95%] | difference [paired 95%] |", start)
    end = lines.index("", header)
    table = lines[header + 2 : end]
    rows = card_json["ablation"]
    assert list(rows) == [*BASELINES, *ABLATION_ROWS]
    assert len(table) == len(rows)
    for line, name in zip(table, rows, strict=True):
        assert line.startswith(f"| {card.ABLATION_TITLES[name]}")
    served = [line for line in table if "**(served)**" in line]
    title = card.ABLATION_TITLES[ablation.served_row(PROFILE.snapshot_words)]
    assert len(served) == 1
    assert served[0].startswith(f"| {title} **(served)** |")

    best = card_json["best_baseline"]
    assert best in BASELINES
    assert best == max(BASELINES, key=lambda name: card_json["models"][name]["roc_auc"])
    verdict = next(line for line in lines if line.startswith("The served model "))
    assert card.MODEL_TITLES[best] in verdict
    assert verdict == card.Card(**card_json).verdict()
    assert rows[best]["difference"] == 0.0

    for name, row in rows.items():
        low, high = row["roc_auc_ci"]
        assert low <= high, name
        d_low, d_high = row["difference_ci"]
        assert d_low <= d_high, name
    # The card's served row is the served model's test ROC-AUC.
    assert rows[ablation.served_row(PROFILE.snapshot_words)]["roc_auc"] == pytest.approx(
        card_json["models"]["bert"]["roc_auc"], abs=1e-9
    )
    assert card_json["served_variant"] == build.served


def test_steps_log_what_they_did(build):
    text = "\n".join(build.log)
    assert text.startswith("trained on 800 sessions")
    assert f"model repository (python on cpu, encoder {build.served})" in text
    assert f"model card written to {build.card_path}" in text


def test_train_fits_segments_into_the_head_and_the_card_describes_them(
    build, evaluation, card_json
):
    result = json.loads((build.model_dir / steps.SEGMENTS).read_text())
    components = evaluation["train_components"]
    assert components.shape == (build.summary["train_examples"], PROFILE.text_components)
    centroids = np.asarray(result["centroids"], dtype=np.float32)
    assert centroids.shape == (result["k"], PROFILE.text_components)
    assert [c["k"] for c in result["candidates"]] == list(segments.K_RANGE)
    # The head carries the centroids: that is what the exported graph serves.
    np.testing.assert_array_equal(BehaviourModel.load(build.model_dir).head.centroids, centroids)
    profiles = result["profiles"]
    assert sum(p["size"] for p in profiles) == build.summary["train_examples"]
    assigned, _ = segments.Segmentation(centroids, ()).assign(components)
    assert [p["size"] for p in profiles] == np.bincount(assigned, minlength=result["k"]).tolist()
    labels = evaluation["train_labels"]
    for p in profiles:
        if p["size"]:
            assert p["purchase_rate"] == pytest.approx(labels[assigned == p["segment"]].mean())
    assert (build.reports_dir / "segments.png").read_bytes()[:4] == b"\x89PNG"
    assert card_json["segments"]["k"] == result["k"] and "centroids" not in card_json["segments"]
    assert "## Segments" in (build.reports_dir / "model_card.md").read_text()


def test_segments_step_fits_them_again_with_another_k(build, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(build.model_dir, model_dir)
    reports_dir = tmp_path / "reports"
    shutil.copytree(build.reports_dir, reports_dir)
    lines: list[str] = []
    path = steps.segments_step(model_dir, reports_dir, lines.append, k=3)
    assert json.loads(path.read_text())["k"] == 3
    assert BehaviourModel.load(model_dir).head.centroids.shape == (3, PROFILE.text_components)
    assert json.loads((reports_dir / "card.json").read_text())["segments"]["k"] == 3
    assert any("ubm-build export" in line for line in lines)
