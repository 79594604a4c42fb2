"""What the build decides from the variants' reports (hand-made here), and the int8 calibration
feeds of hand-made records.

The variants themselves, exported from a tiny model and measured on real records:
tests/integration/test_export_variants.py.
"""

import json

import numpy as np
import pytest

from ubm import contract
from ubm.records import Event
from ubm_build import export, steps
from ubm_build.inputs.behaviour_text import behaviour_text, tokenize
from ubm_build.inputs.model_inputs import RecordReader
from ubm_build.inputs.snapshot import Snapshot, id_words
from ubm_build.serving import repository

MAX_LENGTH = 64
T0 = 1_512_172_800


def report(variant: export.Variant, **changes: object) -> export.VariantReport:
    """A report of `variant` that passed both checks, with `changes`."""
    fields = {
        "variant": variant.value,
        "path": f"encoder-{variant.value}.onnx",
        "probability_max_abs_diff": 1e-6,
        "roc_auc": 0.7,
        "roc_auc_delta": 0.0,
        "records_per_s": 100.0,
        "passed": True,
        "batch_max_abs_diff": 1e-7,
        "batch_bound": variant.batch_bound,
    }
    return export.VariantReport(**{**fields, **changes})


def every_variant(
    changes: dict[str, dict] | None = None, engines=(export.Engine.ONNXRUNTIME,)
) -> list[export.VariantReport]:
    """A passing report of each variant on `engines`; `changes` maps a variant's value to its
    changes."""
    changes = changes or {}
    return [
        report(variant, **changes.get(variant.value, {}))
        for variant in export.Variant
        if variant.engine in engines
    ]


def sessions(*lengths: int) -> list[list[Event]]:
    """One record per length, with that many view events a minute apart."""
    return [
        [Event(T0 + 60 * i, "view", str(1000 + i), "7") for i in range(length)]
        for length in lengths
    ]


@pytest.mark.parametrize("snapshot_words", [False, True])
def test_calibration_runs_each_record_alone_without_padding(tokenizer, snapshot_words):
    records = sessions(1, 3, 30)
    known = Snapshot.empty()  # every id unseen: "new" words
    reader = RecordReader(tokenizer, MAX_LENGTH, known, snapshot_words)
    calibration = export.TokenCalibration(reader, records)
    calibration.rewind()
    feeds = list(iter(calibration.get_next, None))
    assert len(feeds) == len(calibration) == len(records)
    assert all(feed[contract.ATTENTION_MASK].all() for feed in feeds)
    for feed, events in zip(feeds, records, strict=True):
        words = id_words(known, [events])[0] if snapshot_words else None
        ids, mask = tokenize(tokenizer, [behaviour_text(events, id_words=words)], MAX_LENGTH)
        np.testing.assert_array_equal(feed[contract.INPUT_IDS], ids[:, : mask.sum()])
    lengths = [feed[contract.INPUT_IDS].shape[1] for feed in feeds]
    assert lengths == sorted(set(lengths)) and lengths[-1] == MAX_LENGTH  # no padding, cut at 64
    calibration.rewind()
    assert calibration.get_next() is not None


def test_a_failing_fp32_export_fails_the_build():
    broken = report(export.Variant.FP32, probability_max_abs_diff=0.1, passed=False)
    with pytest.raises(export.ParityError, match="fp32 encoder fails"):
        export.require_passing([broken], export.DEFAULT_ATOL, export.DEFAULT_MAX_INT8_AUC_LOSS)


def test_a_batch_dependent_static_int8_fails_the_build():
    broken = report(export.Variant.INT8_STATIC, batch_max_abs_diff=1e-3, passed=False)
    with pytest.raises(export.ParityError, match=r"int8-static encoder fails.*batch dependence"):
        export.require_passing([broken], export.DEFAULT_ATOL, export.DEFAULT_MAX_INT8_AUC_LOSS)


@pytest.mark.parametrize("variant", [export.Variant.ORT_OPTIMIZED, export.Variant.INT8_DYNAMIC])
def test_optional_variants_may_fail_without_failing_the_build(variant):
    failed = report(variant, passed=False)
    export.require_passing([failed], export.DEFAULT_ATOL, export.DEFAULT_MAX_INT8_AUC_LOSS)


def test_the_fastest_passing_variant_is_served():
    rates = {"fp32": 10, "ort-optimized": 30, "int8-static": 50, "int8-dynamic": 70}
    passed = {"fp32": True, "ort-optimized": True, "int8-static": False, "int8-dynamic": True}
    candidates = every_variant(
        {name: {"records_per_s": rates[name], "passed": passed[name]} for name in rates}
    )
    assert export.fastest_passing(candidates).variant == export.Variant.ORT_OPTIMIZED.value


def test_the_fastest_variant_on_the_targets_engines_is_served():
    rates = {"int8-static": 120, "openvino-int8": 180, "tensorrt-fp16": 9000}
    candidates = every_variant(
        {name: {"records_per_s": rate} for name, rate in rates.items()}, tuple(export.Engine)
    )
    assert export.fastest_passing(candidates).variant == "openvino-int8"  # the python target's
    onnxruntime = repository.Target.ONNXRUNTIME.engines
    assert export.fastest_passing(candidates, onnxruntime).variant == "int8-static"
    tensorrt = repository.Target.TENSORRT.engines
    assert export.fastest_passing(candidates, tensorrt).variant == "tensorrt-fp16"


def test_variant_files_engines_and_gates():
    assert export.Variant.OPENVINO_BF16.file_name == export.Variant.OPENVINO_FP32.file_name
    assert export.Variant.OPENVINO_BF16.precision == "bf16"
    assert export.Variant.OPENVINO_INT8.file_name == "encoder-openvino-int8.xml"
    assert export.Variant.TENSORRT_FP16.file_name == "encoder-tensorrt-fp16.plan"
    lossy = {v.value for v in export.Variant if v.lossy}
    assert lossy == {
        "int8-static",
        "int8-dynamic",
        "openvino-bf16",
        "openvino-int8",
        "tensorrt-fp16",
        "tensorrt-int8",
    }
    assert {v for v in export.CPU_VARIANTS if v.engine is export.Engine.TENSORRT} == set()


def test_a_tensorrt_export_adds_to_the_cpu_exports_reports(tmp_path):
    export.write_reports(every_variant(), tmp_path)
    plan = report(export.Variant.TENSORRT_FP16, records_per_s=9000.0)
    export.write_reports([plan], tmp_path, keep_others=True)
    names = [r.variant for r in export.read_reports(tmp_path)]
    assert names == [*(r.variant for r in every_variant()), "tensorrt-fp16"]
    export.write_reports(every_variant(), tmp_path)  # a new CPU export drops the stale plan
    assert "tensorrt-fp16" not in {r.variant for r in export.read_reports(tmp_path)}


def test_the_repository_step_refuses_a_variant_of_another_engine(tmp_path):
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    export.write_reports(every_variant(engines=tuple(export.Engine)), onnx_dir)
    with pytest.raises(export.ParityError, match="openvino target cannot serve int8-static"):
        steps.repository_step(
            tmp_path / "model",
            onnx_dir,
            tmp_path / "repository",
            repository.Target.OPENVINO,
            lambda _: None,
            variant="int8-static",
        )
    (onnx_dir / export.REPORTS_FILE).unlink()
    export.write_reports(every_variant(), onnx_dir)
    with pytest.raises(export.ParityError, match=r"not exported.*--engine tensorrt"):
        steps.repository_step(
            tmp_path / "model",
            onnx_dir,
            tmp_path / "repository",
            repository.Target.TENSORRT,
            lambda _: None,
            variant="tensorrt-fp16",
        )
    assert not (tmp_path / "repository").exists()


def test_neither_a_batch_dependent_variant_nor_int8_dynamic_is_served():
    candidates = every_variant(
        {
            "fp32": {"records_per_s": 10},
            "ort-optimized": {"records_per_s": 30},
            "int8-static": {"records_per_s": 1e9, "batch_max_abs_diff": 1e-3},
            "int8-dynamic": {"records_per_s": 1e9},
        }
    )
    assert export.fastest_passing(candidates).variant == export.Variant.ORT_OPTIMIZED.value


def test_variants_without_a_batch_figure_are_not_served():
    """A variants.json written before the batch check: export again."""
    old = [
        export.VariantReport(**{k: v for k, v in r.to_dict().items() if not k.startswith("batch_")})
        for r in every_variant()
    ]
    with pytest.raises(export.ParityError, match="export"):
        export.fastest_passing(old)


def test_the_repository_step_refuses_a_batch_dependent_variant(tmp_path):
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    reports = every_variant({"int8-dynamic": {"batch_max_abs_diff": 2e-4, "passed": False}})
    (onnx_dir / export.REPORTS_FILE).write_text(json.dumps([r.to_dict() for r in reports]))
    with pytest.raises(export.ParityError, match="int8-dynamic encoder is not served"):
        steps.repository_step(
            tmp_path / "model",  # refused before the model is read
            onnx_dir,
            tmp_path / "repository",
            repository.Target.PYTHON,
            lambda _: None,
            variant=export.Variant.INT8_DYNAMIC.value,
        )
    assert not (tmp_path / "repository").exists()
