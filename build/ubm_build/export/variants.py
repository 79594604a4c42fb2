"""Export the encoder and head to ONNX, derive optimised variants, and check each against PyTorch.

Encoder variants (the head, a few thousand weights, stays fp32 ONNX in all of them):

- ``fp32``: the plain ONNX export.
- ``ort-optimized``: ONNX Runtime's transformer optimiser (fused LayerNorm, GELU, ...), fp32.
- ``int8-static``: static quantisation of the weight MatMuls: int8 weights with per-channel
  scales (per-tensor scales move the embedding much further from PyTorch's), uint8
  activations whose scales are fixed in the graph, calibrated on train-window records.
- ``int8-dynamic``: ONNX Runtime's dynamic quantisation, exported for comparison only and never
  served. DynamicQuantizeLinear computes each activation's scale over the whole run tensor, all
  records and padding included, so a record's score depends on what else is in its run.
- ``openvino-fp32``, ``openvino-bf16``: the fp32 graph as OpenVINO IR, computed in fp32 or
  (where the CPU has bf16 instructions) bf16. Both run the same file.
- ``openvino-int8``: NNCF's static int8 of the graph, calibrated on the same train-window
  records as int8-static.
- ``tensorrt-fp32``, ``tensorrt-fp16``, ``tensorrt-int8``: TensorRT plans for NVIDIA GPUs, built
  by ``ubm-build export --engine tensorrt`` where TensorRT is installed (`tensorrt`).

Every variant scores the whole test window; `VariantReport` holds its largest probability
difference from PyTorch, its ROC-AUC change, its in-process speed and its batch dependence: the
largest difference between a record scored alone and the same record in mixed batches. A
variant whose batch dependence exceeds its bound (`FP32_BATCH_BOUND`, `INT8_BATCH_BOUND`) fails.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model
from sklearn.metrics import roc_auc_score

from ubm import contract
from ubm.records import Event
from ubm_build.export.engines import Engine, open_encoder
from ubm_build.export.graphs import ort_session
from ubm_build.export.int8 import (
    TokenCalibration,
    quantize_int8_static,
    without_preprocessing_advice,
)
from ubm_build.inputs.model_inputs import ModelInputs, RecordReader
from ubm_build.model.network import BehaviourModel
from ubm_build.serving.triton_models.engine_model import Session

DEFAULT_ATOL = 1e-4
"""Largest tolerated |probability - PyTorch's| for the fp32 variants."""
DEFAULT_MAX_INT8_AUC_LOSS = 0.005
PARITY_BATCH_SIZE = 32
CALIBRATION_RECORDS = 256
"""Train-window records whose activation ranges fix the static int8 scales."""
BATCH_CHECK_RECORDS = 256
"""Test-window records scored alone and in mixed batches by the batch-dependence check."""
FP32_BATCH_BOUND = 1e-6
"""Largest tolerated |p alone - p in a batch| of an fp32 variant: float rounding only."""
INT8_BATCH_BOUND = 1e-6
"""The same for an int8 variant. With static scales an int8 record's arithmetic does not depend
on its batch either, so it is held to fp32's bound (the figures are in the model card). Kept
apart from the fp32 bound so that it can be loosened if float rounding ever moves an activation
across a quantisation step."""
SERVED_ROWS_PER_RUN = 8
"""Records per encoder run in the batch-dependence check, as the served encoder runs them."""


class Variant(enum.Enum):
    FP32 = "fp32"
    ORT_OPTIMIZED = "ort-optimized"
    INT8_STATIC = "int8-static"
    INT8_DYNAMIC = "int8-dynamic"
    OPENVINO_FP32 = "openvino-fp32"
    OPENVINO_BF16 = "openvino-bf16"
    OPENVINO_INT8 = "openvino-int8"
    TENSORRT_FP32 = "tensorrt-fp32"
    TENSORRT_FP16 = "tensorrt-fp16"
    TENSORRT_INT8 = "tensorrt-int8"

    @property
    def engine(self) -> Engine:
        prefix = self.value.split("-")[0]
        return Engine(prefix) if prefix in ("openvino", "tensorrt") else Engine.ONNXRUNTIME

    @property
    def is_int8(self) -> bool:
        return "int8" in self.value

    @property
    def lossy(self) -> bool:
        """Computes with fewer bits than fp32: judged by its ROC-AUC loss, not by parity."""
        return self.is_int8 or self.value.endswith(("bf16", "fp16"))

    @property
    def precision(self) -> str:
        """The precision OpenVINO computes this variant in ("f32" for every other engine)."""
        return "bf16" if self is Variant.OPENVINO_BF16 else "f32"

    @property
    def file_name(self) -> str:
        """Its encoder file in the export directory; openvino-bf16 runs openvino-fp32's."""
        stem = Variant.OPENVINO_FP32.value if self is Variant.OPENVINO_BF16 else self.value
        return f"encoder-{stem}{self.engine.suffix}"

    @property
    def batch_bound(self) -> float:
        """Largest tolerated batch dependence of this variant's probabilities."""
        return INT8_BATCH_BOUND if self.lossy else FP32_BATCH_BOUND

    @property
    def servable(self) -> bool:
        """Whether the build may serve it; int8-dynamic is only exported for comparison."""
        return self is not Variant.INT8_DYNAMIC

    def open(self, path: Path, threads: int = 0) -> Session:
        """`path`, this variant's file, opened in this process as it is served."""
        return open_encoder(path, threads=threads, precision=self.precision)


CPU_VARIANTS = tuple(v for v in Variant if not v.engine.on_gpu)
"""What ``ubm-build export`` derives by default."""
REQUIRED = (Variant.FP32, Variant.INT8_STATIC)
"""Variants whose failed check fails the build; the others are then just not served."""


class ParityError(AssertionError):
    """An exported model disagrees with PyTorch, or with itself across batches, beyond bounds."""


def derive_variant(
    variant: Variant,
    fp32: Path,
    model: BehaviourModel,
    out: Path,
    calibration: TokenCalibration | None = None,
) -> Path:
    """Write `variant` of the fp32 encoder graph to `out` (fp32 is copied as it is).

    The int8 variants need `calibration`: train-window records, never the test window they are
    judged on. TensorRT plans are built by `tensorrt.build_plan` instead.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if variant.engine is Engine.TENSORRT:
        raise ValueError(f"{variant.value} is built by ubm_build.export.tensorrt.build_plan")
    if variant.is_int8 and variant is not Variant.INT8_DYNAMIC and calibration is None:
        raise ValueError(f"{variant.value} needs calibration records")
    if variant.engine is Engine.OPENVINO:
        from ubm_build.export import openvino  # OpenVINO and NNCF load only when used

        if variant is Variant.OPENVINO_INT8:
            openvino.quantize_int8(fp32, out, calibration)
        else:
            openvino.to_ir(fp32, out)
    elif variant is Variant.FP32:
        onnx.save(onnx.load(fp32), out)
    elif variant is Variant.ORT_OPTIMIZED:
        config = model.encoder.bert.config
        optimized = optimize_model(
            str(fp32),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=1,
        )
        optimized.save_model_to_file(str(out))
    elif variant is Variant.INT8_STATIC:
        quantize_int8_static(fp32, out, calibration)
    else:
        with without_preprocessing_advice():
            quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)
    return out


@dataclass(frozen=True)
class VariantReport:
    variant: str
    path: str
    probability_max_abs_diff: float
    roc_auc: float
    roc_auc_delta: float
    """This variant's test-window ROC-AUC minus PyTorch's."""
    records_per_s: float
    """In process on its engine, batches of `PARITY_BATCH_SIZE`, this machine's cores."""
    passed: bool
    """Both checks: parity (fp32) or ROC-AUC loss (int8, bf16, fp16), and batch dependence."""
    batch_max_abs_diff: float | None = None
    """Largest |p alone - p in a batch| over the checked records; None: not measured."""
    batch_bound: float | None = None
    segment_agreement: float | None = None
    """Share of the test window's records this variant puts in PyTorch's segment; None: not
    measured. Reported, not a gate: a record near the border of two segments may cross it."""

    @property
    def batch_invariant(self) -> bool:
        return self.batch_max_abs_diff is not None and self.batch_max_abs_diff <= (
            self.batch_bound or 0.0
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _probabilities(
    encoder: Session,
    head: Session,
    batch: ModelInputs,
    rows_per_run: int = 0,
) -> np.ndarray:
    """Encoder (in runs of `rows_per_run` records, 0: all at once), then head: p per record."""
    return _scores(encoder, head, batch, rows_per_run)[0]


def _scores(
    encoder: Session,
    head: Session,
    batch: ModelInputs,
    rows_per_run: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(probability, segment) per record, as `_probabilities` runs them."""
    step = rows_per_run or len(batch.ids)
    embedding = np.concatenate(
        [
            encoder.run(
                [contract.EMBEDDING],
                {
                    contract.INPUT_IDS: batch.ids[start : start + step],
                    contract.ATTENTION_MASK: batch.mask[start : start + step],
                },
            )[0]
            for start in range(0, len(batch.ids), step)
        ]
    )
    feeds = {contract.EMBEDDING: embedding, contract.FEATURES: batch.features}
    probability, segment = head.run([contract.PURCHASE_PROBABILITY, contract.SEGMENT], feeds)
    return probability[:, 0], segment[:, 0]


def onnx_predict(
    encoder: Path | Session,
    head: Path,
    reader: RecordReader,
    events: Sequence[Sequence[Event]],
) -> tuple[np.ndarray, float]:
    """(probabilities, records per second) of an encoder + head pair on `events`, read with
    `reader`. A path `encoder` is opened as its suffix says, in fp32."""
    probabilities, _, rate = onnx_scores(encoder, head, reader, events)
    return probabilities, rate


def onnx_scores(
    encoder: Path | Session,
    head: Path,
    reader: RecordReader,
    events: Sequence[Sequence[Event]],
) -> tuple[np.ndarray, np.ndarray, float]:
    """`onnx_predict`'s probabilities and rate, with each record's segment (int32)."""
    encoder_session = open_encoder(encoder) if isinstance(encoder, Path) else encoder
    head_session = ort_session(head)
    order = np.argsort([len(e) for e in events])
    probabilities = np.empty(len(events), dtype=np.float32)
    segments = np.empty(len(events), dtype=np.int32)
    started = time.perf_counter()
    for start in range(0, len(events), PARITY_BATCH_SIZE):
        rows = order[start : start + PARITY_BATCH_SIZE]
        batch = reader([events[i] for i in rows])
        probabilities[rows], segments[rows] = _scores(encoder_session, head_session, batch)
    return probabilities, segments, len(events) / (time.perf_counter() - started)


@dataclass(frozen=True)
class BatchLayout:
    """How the batch-dependence check groups records: batch sizes taken in turn, padding, and
    records per encoder run (0: the whole batch)."""

    sizes: tuple[int, ...]
    pad_to_max_length: bool
    rows_per_run: int


BATCH_LAYOUTS = (
    # padded to the batch's longest record and run 8 records at a time, as served
    BatchLayout((3, 8, 13, 32), pad_to_max_length=False, rows_per_run=SERVED_ROWS_PER_RUN),
    # extra padding columns, whole batches in one run
    BatchLayout((5, 16, 24), pad_to_max_length=True, rows_per_run=0),
)


def batch_dependence(
    encoder: Session, head: Path, reader: RecordReader, events: Sequence[Sequence[Event]]
) -> float:
    """Largest |p alone - p in a batch| over the records of `events`.

    Alone: one record per run, padded as a one-record request is. In a batch: the records
    shuffled into mixed batches of each `BATCH_LAYOUTS` layout, right-padded with zeros as the
    served encoder stacks requests.
    """
    encoder_session, head_session = encoder, ort_session(head)
    singles = [reader([record]) for record in events]
    alone = np.array([_probabilities(encoder_session, head_session, one)[0] for one in singles])

    def stacked(rows: Sequence[int], width: int) -> ModelInputs:
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, record in enumerate(rows):
            n = singles[record].ids.shape[1]
            ids[row, :n], mask[row, :n] = singles[record].ids[0], singles[record].mask[0]
        return ModelInputs(
            ids,
            mask,
            np.concatenate([singles[r].features for r in rows]),
            np.concatenate([singles[r].truncated for r in rows]),
        )

    worst = 0.0
    for seed, layout in enumerate(BATCH_LAYOUTS, start=1):
        order = np.random.default_rng(seed).permutation(len(events))
        start, turn = 0, 0
        while start < len(order):
            rows = order[start : start + layout.sizes[turn % len(layout.sizes)]]
            width = (
                reader.max_length
                if layout.pad_to_max_length
                else max(singles[i].ids.shape[1] for i in rows)
            )
            batched = _probabilities(
                encoder_session, head_session, stacked(rows, width), layout.rows_per_run
            )
            worst = max(worst, float(np.abs(batched - alone[rows]).max()))
            start, turn = start + len(rows), turn + 1
    return worst


def check_variant(
    variant: Variant,
    encoder: Path,
    head: Path,
    reader: RecordReader,
    events: Sequence[Sequence[Event]],
    labels: np.ndarray,
    reference: np.ndarray,
    *,
    reference_segments: np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    max_int8_auc_loss: float = DEFAULT_MAX_INT8_AUC_LOSS,
    batch_records: int = BATCH_CHECK_RECORDS,
) -> VariantReport:
    """Score `events` with the variant, compare it with PyTorch's probabilities (and, given
    `reference_segments`, segments), and measure its batch dependence on `batch_records` of
    them (a fixed random choice)."""
    session = variant.open(encoder)
    probabilities, segments, rate = onnx_scores(session, head, reader, events)
    agreement = (
        None if reference_segments is None else float(np.mean(segments == reference_segments))
    )
    diff = float(np.abs(probabilities - reference).max())
    auc = float(roc_auc_score(labels, probabilities))
    delta = auc - float(roc_auc_score(labels, reference))
    picked = np.random.default_rng(0).permutation(len(events))[:batch_records]
    checked = [events[i] for i in picked]
    batch_diff = batch_dependence(session, head, reader, checked)
    accurate = -delta <= max_int8_auc_loss if variant.lossy else diff <= atol
    passed = accurate and batch_diff <= variant.batch_bound
    return VariantReport(
        variant.value,
        str(encoder),
        diff,
        auc,
        delta,
        rate,
        passed,
        batch_diff,
        variant.batch_bound,
        agreement,
    )


def require_passing(reports: list[VariantReport], atol: float, max_int8_auc_loss: float) -> None:
    """Raise `ParityError` if a `REQUIRED` variant (fp32, int8-static) failed a check.

    ort-optimized may fail without failing the build: it is then not served. int8-dynamic is
    exported for comparison only.
    """
    required = {v.value for v in REQUIRED}
    for report in reports:
        if report.passed or report.variant not in required:
            continue
        raise ParityError(
            f"{report.variant} encoder fails its check on the test window: probability max abs"
            f" diff {report.probability_max_abs_diff:.3g} (fp32 tolerance {atol:g}, --atol),"
            f" ROC-AUC change {report.roc_auc_delta:+.4f} (int8 may lose at most"
            f" {max_int8_auc_loss:g}, --max-int8-auc-loss), batch dependence"
            f" {_figure(report.batch_max_abs_diff)} (at most {_figure(report.batch_bound)})"
        )


REPORTS_FILE = "variants.json"
"""Where `ubm-build export` keeps the reports, in its ONNX directory."""


def write_reports(
    reports: Sequence[VariantReport], onnx_dir: Path, *, keep_others: bool = False
) -> Path:
    """Write the variants' reports to ``<onnx_dir>/variants.json``; `keep_others`: keep the
    reports there of other variants (a TensorRT export adds to the CPU export's)."""
    path = onnx_dir / REPORTS_FILE
    written = {r.variant for r in reports}
    kept = []
    if keep_others and path.is_file():
        kept = [r for r in read_reports(onnx_dir) if r.variant not in written]
    order = [v.value for v in Variant]
    merged = sorted([*kept, *reports], key=lambda r: order.index(r.variant))
    path.write_text(json.dumps([r.to_dict() for r in merged], indent=2))
    return path


def read_reports(onnx_dir: Path) -> list[VariantReport]:
    """The reports `write_reports` wrote."""
    return [VariantReport(**r) for r in json.loads((onnx_dir / REPORTS_FILE).read_text())]


def _figure(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3g}"


def fastest_passing(
    reports: list[VariantReport],
    engines: Collection[Engine] = (Engine.ONNXRUNTIME, Engine.OPENVINO),
) -> VariantReport:
    """The fastest servable variant on one of `engines` (default: the CPU engines of the
    python target) that passed both checks."""
    servable = {v.value for v in Variant if v.servable and v.engine in engines}
    candidates = [r for r in reports if r.passed and r.batch_invariant and r.variant in servable]
    if not candidates:
        raise ParityError(
            f"no exported {'/'.join(e.value for e in engines)} encoder variant passed its"
            " checks with a batch-dependence figure; run `ubm-build export` again"
        )
    return max(candidates, key=lambda r: r.records_per_s)
