"""OpenVINO forms of the encoder: the IR of the fp32 graph (served in fp32 or bf16) and a
static int8 quantised by NNCF, calibrated on train-window records."""

from __future__ import annotations

import logging
from pathlib import Path

import nncf
import openvino as ov

from ubm_build.export.int8 import TokenCalibration


def bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively (OpenVINO's ``OPTIMIZATION_CAPABILITIES``)."""
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def to_ir(fp32_onnx: Path, out: Path) -> Path:
    """The fp32 ONNX encoder as OpenVINO IR (``out`` .xml and its .bin), weights kept fp32."""
    ov.save_model(ov.convert_model(fp32_onnx), out, compress_to_fp16=False)
    return out


def quantize_int8(fp32_onnx: Path, out: Path, calibration: TokenCalibration) -> Path:
    """NNCF post-training static int8 (its transformer scheme: SmoothQuant, then int8 weights
    and activations of the MatMuls with scales fixed from `calibration`), saved as IR."""
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(
        ov.convert_model(fp32_onnx),
        nncf.Dataset(calibration.feeds()),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
    )
    ov.save_model(quantized, out, compress_to_fp16=False)
    return out
