"""ONNX export of the model and its encoder variants, each checked against PyTorch.

`graphs` exports the encoder and head, `int8` quantises the encoder with static scales, and
`variants` derives every variant and checks its parity, ROC-AUC and batch dependence. Imports
`inputs`, `data` and `model`.
"""

from ubm_build.export.graphs import export_encoder, export_head, ort_session
from ubm_build.export.int8 import TokenCalibration
from ubm_build.export.variants import (
    CALIBRATION_RECORDS,
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
    "DEFAULT_ATOL",
    "DEFAULT_MAX_INT8_AUC_LOSS",
    "FP32_BATCH_BOUND",
    "INT8_BATCH_BOUND",
    "REPORTS_FILE",
    "ParityError",
    "TokenCalibration",
    "Variant",
    "VariantReport",
    "check_variant",
    "derive_variant",
    "export_encoder",
    "export_head",
    "fastest_passing",
    "onnx_predict",
    "ort_session",
    "read_reports",
    "require_passing",
    "write_reports",
]
