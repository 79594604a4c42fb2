"""Export of the model and its encoder variants, each checked against PyTorch.

`graphs` exports the encoder and head to ONNX, `int8` quantises the encoder with static scales
for ONNX Runtime, `openvino` converts and quantises it for OpenVINO, `tensorrt` builds TensorRT
plans where TensorRT is installed, `engines` opens any of them in process, and `variants`
derives every variant and checks its parity, ROC-AUC and batch dependence. Imports `inputs`,
`data` and `model`.
"""

from ubm_build.export.engines import Engine, engine_of, open_encoder
from ubm_build.export.graphs import export_encoder, export_head, ort_session
from ubm_build.export.int8 import TokenCalibration, quantize_int8_static
from ubm_build.export.variants import (
    CALIBRATION_RECORDS,
    CPU_VARIANTS,
    DEFAULT_ATOL,
    DEFAULT_MAX_INT8_AUC_LOSS,
    FP32_BATCH_BOUND,
    INT8_BATCH_BOUND,
    REPORTS_FILE,
    ParityError,
    Variant,
    VariantReport,
    check_variant,
    derive_variant,
    fastest_passing,
    onnx_predict,
    read_reports,
    require_passing,
    write_reports,
)

__all__ = [
    "CALIBRATION_RECORDS",
    "CPU_VARIANTS",
    "DEFAULT_ATOL",
    "DEFAULT_MAX_INT8_AUC_LOSS",
    "FP32_BATCH_BOUND",
    "INT8_BATCH_BOUND",
    "REPORTS_FILE",
    "Engine",
    "ParityError",
    "TokenCalibration",
    "Variant",
    "VariantReport",
    "check_variant",
    "derive_variant",
    "engine_of",
    "export_encoder",
    "export_head",
    "fastest_passing",
    "onnx_predict",
    "open_encoder",
    "ort_session",
    "quantize_int8_static",
    "read_reports",
    "require_passing",
    "write_reports",
]
