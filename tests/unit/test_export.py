"""ONNX export: every encoder variant is checked against PyTorch on real test-window records."""

import pytest

from ubm_build import export
from ubm_build.train import inputs_of, labels_of, predict


@pytest.fixture(scope="module")
def reports(tiny_model, tiny_onnx, tokenizer, examples, tmp_path_factory):
    model, _ = tiny_model
    encoder_fp32, head = tiny_onnx
    sample = examples["test"][:300]
    inputs, labels = inputs_of(sample), labels_of(sample)
    reference = predict(model, tokenizer, inputs)
    out = tmp_path_factory.mktemp("variants")
    return {
        variant: export.check_variant(
            variant,
            export.derive_variant(variant, encoder_fp32, model, out / f"{variant.value}.onnx"),
            head,
            tokenizer,
            inputs,
            labels,
            reference,
            max_length=model.spec.max_length,
        )
        for variant in export.Variant
    }


@pytest.mark.parametrize("variant", [export.Variant.FP32, export.Variant.ORT_OPTIMIZED])
def test_fp32_variants_match_pytorch(reports, variant):
    report = reports[variant]
    assert report.passed
    assert report.probability_max_abs_diff <= export.DEFAULT_ATOL
    assert report.roc_auc_delta == pytest.approx(0.0, abs=1e-3)


def test_int8_is_judged_by_its_roc_auc_loss(reports):
    report = reports[export.Variant.INT8]
    assert report.probability_max_abs_diff > 0
    assert report.passed == (report.roc_auc_delta >= -export.DEFAULT_MAX_INT8_AUC_LOSS)


def test_a_failing_fp32_export_fails_the_build(reports):
    broken = export.VariantReport(
        **{
            **reports[export.Variant.FP32].to_dict(),
            "probability_max_abs_diff": 0.1,
            "passed": False,
        }
    )
    with pytest.raises(export.ParityError, match="fp32 encoder fails"):
        export.require_passing([broken], export.DEFAULT_ATOL, export.DEFAULT_MAX_INT8_AUC_LOSS)


def test_optimized_variant_may_fail_without_failing_the_build(reports):
    failed = export.VariantReport(
        **{**reports[export.Variant.ORT_OPTIMIZED].to_dict(), "passed": False}
    )
    export.require_passing([failed], export.DEFAULT_ATOL, export.DEFAULT_MAX_INT8_AUC_LOSS)


def test_the_fastest_passing_variant_is_served(reports):
    candidates = [
        export.VariantReport(**{**r.to_dict(), "records_per_s": rate, "passed": passed})
        for r, rate, passed in zip(reports.values(), (10, 30, 50), (True, True, False), strict=True)
    ]
    assert export.fastest_passing(candidates).variant == export.Variant.ORT_OPTIMIZED.value
