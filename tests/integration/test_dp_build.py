"""A tiny build with differential privacy: ``train --dp-epsilon``, then export and the card.

The DP-SGD mechanics are unit-tested (``tests/unit/test_dp_training.py``); this checks that a
private model goes through the rest of the build: its record lands in ``metrics.json`` and the
card, it fits no segments, and its exported graphs pass their checks against PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ubm_build import export, paths, steps
from ubm_build.model import train
from ubm_build.model.network import BehaviourModel
from ubm_build.serving import repository

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PROFILE = train.Profile(
    "tiny-dp", max_train_examples=800, max_length=32, text_components=8, dp_epsilon=3.0
)


def test_a_private_model_records_its_guarantee_and_exports(tiny_base_model, tmp_path):
    model_dir, onnx_dir = tmp_path / "model", tmp_path / "onnx"
    model_dir.mkdir()
    (model_dir / steps.SEGMENTS).write_text("{}")  # a stale file of an earlier, public build
    log: list[str] = []
    summary = steps.train_step(PROFILE, paths.DEFAULT_CSV, tiny_base_model, model_dir, log.append)
    record = summary["privacy"]
    assert record["unit"] == "user" and record["epsilon"] == 3.0
    assert record["epsilon_spent"] <= 3.0 + 1e-6
    assert 0 < record["delta"] < 1 / record["users"]
    assert json.loads((model_dir / "metrics.json").read_text())["privacy"] == record
    assert not (model_dir / steps.SEGMENTS).exists()
    assert BehaviourModel.load(model_dir).head.centroids.shape[0] == 1
    assert float(BehaviourModel.load(model_dir).head.calibration_scale) == 1.0  # uncalibrated

    reports = steps.export_step(
        model_dir, onnx_dir, paths.DEFAULT_CSV, log.append, engines=(export.Engine.ONNXRUNTIME,)
    )
    by_variant = {r.variant: r for r in reports}
    assert by_variant["fp32"].passed and by_variant["fp32"].segment_agreement == 1.0
    served = steps.repository_step(
        model_dir, onnx_dir, tmp_path / "repo", repository.Target.PYTHON, log.append
    )
    card_path = steps.report_step(model_dir, onnx_dir, tmp_path / "reports", served, log.append)
    card = card_path.read_text()
    assert "## Privacy" in card and "private per **user**" in card
    assert "## Segments" not in card


def test_dp_with_masked_lm_pretraining_is_refused():
    with pytest.raises(ValueError, match="pretrain"):
        replace(PROFILE, pretrain_epochs=1)
