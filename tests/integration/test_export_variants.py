"""ONNX export of a tiny model: every encoder variant is checked against PyTorch on real
test-window records, and against itself: a record must score the same alone and in any batch.

What the build decides from such reports, on hand-made ones: tests/unit/test_export.py.
"""

import random

import numpy as np
import onnx
import pytest

from ubm import contract
from ubm_build import export
from ubm_build.export import int8, openvino
from ubm_build.model.train import events_of, labels_of, predict

CALIBRATION_RECORDS = 32
BATCH_CHECK_RECORDS = 96

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def calibration(tiny_reader, examples) -> export.TokenCalibration:
    """Train-window records only: the variants are judged on the test window."""
    picked = random.Random(0).sample(examples["train"], CALIBRATION_RECORDS)
    return export.TokenCalibration(tiny_reader, events_of(picked))


@pytest.fixture(scope="module")
def encoders(tiny_model, tiny_onnx, calibration, tmp_path_factory):
    model, _ = tiny_model
    encoder_fp32, _ = tiny_onnx
    out = tmp_path_factory.mktemp("variants")
    return {
        variant: export.derive_variant(
            variant, encoder_fp32, model, out / variant.file_name, calibration
        )
        for variant in export.CPU_VARIANTS
    }


@pytest.fixture(scope="module")
def reports(tiny_model, tiny_onnx, encoders, tiny_reader, examples):
    model, _ = tiny_model
    _, head = tiny_onnx
    sample = examples["test"][:300]
    events, labels = events_of(sample), labels_of(sample)
    reference = predict(model, tiny_reader, events)
    return {
        variant: export.check_variant(
            variant,
            encoder,
            head,
            tiny_reader,
            events,
            labels,
            reference,
            batch_records=BATCH_CHECK_RECORDS,
        )
        for variant, encoder in encoders.items()
    }


FP32_VARIANTS = [export.Variant.FP32, export.Variant.ORT_OPTIMIZED, export.Variant.OPENVINO_FP32]


@pytest.mark.parametrize("variant", FP32_VARIANTS)
def test_fp32_variants_match_pytorch(reports, variant):
    report = reports[variant]
    assert report.passed
    assert report.probability_max_abs_diff <= export.DEFAULT_ATOL
    assert report.roc_auc_delta == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("variant", FP32_VARIANTS)
def test_fp32_variants_score_a_record_the_same_in_any_batch(reports, variant):
    report = reports[variant]
    assert report.batch_bound == export.FP32_BATCH_BOUND == 1e-6
    assert report.batch_max_abs_diff <= export.FP32_BATCH_BOUND
    assert report.batch_invariant


@pytest.mark.parametrize("variant", [export.Variant.INT8_STATIC, export.Variant.OPENVINO_INT8])
def test_static_int8_scores_a_record_the_same_in_any_batch(reports, variant):
    report = reports[variant]
    assert report.probability_max_abs_diff > 0  # it is quantised
    assert report.batch_bound == export.INT8_BATCH_BOUND
    assert report.batch_max_abs_diff <= export.INT8_BATCH_BOUND
    assert report.passed == (report.roc_auc_delta >= -export.DEFAULT_MAX_INT8_AUC_LOSS)


def test_openvino_int8_quantises_the_matmuls_with_fixed_scales(encoders):
    import openvino as ov

    model = ov.Core().read_model(encoders[export.Variant.OPENVINO_INT8])
    fake_quantize = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    matmuls = [op for op in model.get_ops() if op.get_type_name() == "MatMul"]
    assert len(fake_quantize) >= len(matmuls) > 0  # activations and weights, scales constant


def test_openvino_streams_run_slices_at_once_with_the_same_results(encoders, tiny_reader, examples):
    from ubm_build.serving.triton_models.engine_model import run_in_slices
    from ubm_build.serving.triton_models.openvino_model import OpenVinoSession

    inputs = tiny_reader(events_of(examples["test"][:40]))
    feeds = {contract.INPUT_IDS: inputs.ids, contract.ATTENTION_MASK: inputs.mask}
    path = encoders[export.Variant.OPENVINO_INT8]
    one, two = (OpenVinoSession(path, streams=n) for n in (1, 2))
    in_turn = run_in_slices(one, [contract.EMBEDDING], feeds, 8)[0]
    at_once = run_in_slices(two, [contract.EMBEDDING], feeds, 8)[0]
    assert in_turn.shape[0] == at_once.shape[0] == 40
    np.testing.assert_allclose(at_once, in_turn, atol=1e-6)  # bit-identical on our machine


@pytest.mark.skipif(not openvino.bf16_supported(), reason="this CPU has no bf16 instructions")
def test_bf16_is_judged_by_its_roc_auc_loss(reports):
    report = reports[export.Variant.OPENVINO_BF16]
    assert report.probability_max_abs_diff > export.DEFAULT_ATOL / 100  # it computes in bf16
    accurate = report.roc_auc_delta >= -export.DEFAULT_MAX_INT8_AUC_LOSS
    assert report.passed == (accurate and report.batch_invariant)


def test_dynamic_int8_depends_on_its_batch_and_is_never_served(reports):
    """Its activation scales come from the whole run tensor: the defect static int8 fixes."""
    report = reports[export.Variant.INT8_DYNAMIC]
    assert report.batch_max_abs_diff > export.INT8_BATCH_BOUND
    assert report.batch_max_abs_diff > 20 * reports[export.Variant.INT8_STATIC].batch_max_abs_diff
    assert not report.batch_invariant and not report.passed
    fastest = export.VariantReport(**{**report.to_dict(), "records_per_s": 1e9, "passed": True})
    others = [r for v, r in reports.items() if v is not export.Variant.INT8_DYNAMIC]
    assert export.fastest_passing([*others, fastest]).variant != fastest.variant


def test_the_served_default_is_batch_independent(reports):
    """Before static int8, the fastest passing variant was dynamic int8, batch-dependent."""
    served = export.fastest_passing(list(reports.values()))
    assert served.batch_max_abs_diff <= served.batch_bound
    assert served.variant != export.Variant.INT8_DYNAMIC.value


def test_static_int8_runs_the_weight_matmuls_in_int8_with_their_bias(tiny_onnx, encoders):
    fp32 = onnx.load(tiny_onnx[0])
    static = onnx.load(encoders[export.Variant.INT8_STATIC])
    weight_matmuls = int8.weight_matmuls(fp32)
    ops = [node.op_type for node in static.graph.node]
    assert weight_matmuls and ops.count("MatMulIntegerToFloat") == len(weight_matmuls)
    assert int8.weight_matmuls(static) == []  # every one quantised and its bias folded in
    attention = [n for n in fp32.graph.node if n.op_type == "MatMul"]
    attention = [n for n in attention if n.name not in weight_matmuls]
    assert attention and ops.count("MatMul") == len(attention)  # they stay fp32
    assert "DequantizeLinear" not in ops  # nothing else reads an activation rounded to 8 bits


def test_fusing_keeps_the_int8_arithmetic_and_the_fp32_residual(
    tiny_onnx, calibration, tiny_reader, examples, tmp_path
):
    """The fused graph is the QDQ graph minus the 8-bit rounding of the residual path."""
    fp32, _ = tiny_onnx
    fused = int8.quantize_int8_static(fp32, tmp_path / "fused.onnx", calibration)
    qdq = int8.quantize_int8_static(fp32, tmp_path / "qdq.onnx", calibration, fuse=False)
    assert "MatMulIntegerToFloat" not in {n.op_type for n in onnx.load(qdq).graph.node}
    ids, mask, *_ = tiny_reader(events_of(examples["test"][:64]))
    feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
    exact, fused_out, qdq_out = (
        export.ort_session(path).run(None, feeds)[0] for path in (fp32, fused, qdq)
    )
    fused_error, qdq_error = np.abs(fused_out - exact).mean(), np.abs(qdq_out - exact).mean()
    assert 0 < fused_error <= qdq_error
    np.testing.assert_allclose(fused_out, qdq_out, rtol=0, atol=10 * qdq_error)
