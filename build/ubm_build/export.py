"""Export the encoder and head to ONNX, derive optimised variants, and check each against PyTorch.

Encoder variants (the head, a few thousand weights, stays fp32 in all of them):

- ``fp32``: the plain ONNX export.
- ``ort-optimized``: ONNX Runtime's transformer optimiser (fused LayerNorm, GELU, ...), fp32.
- ``int8-static``: static quantisation of the weight MatMuls: int8 weights with per-channel
  scales (per-tensor scales moved MiniLM's embedding much further from PyTorch's), uint8
  activations whose scales are fixed in the graph, calibrated on train-window records.
- ``int8-dynamic``: ONNX Runtime's dynamic quantisation, exported for comparison only and never
  served. DynamicQuantizeLinear computes each activation's scale over the whole run tensor, all
  records and padding included, so a record's score depends on what else is in its run.

Every variant scores the whole test window; `VariantReport` holds its largest probability
difference from PyTorch, its ROC-AUC change, its in-process speed and its batch dependence: the
largest difference between a record scored alone and the same record in mixed batches. A
variant whose batch dependence exceeds its bound (`FP32_BATCH_BOUND`, `INT8_BATCH_BOUND`) fails.
"""

from __future__ import annotations

import enum
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.optimizer import optimize_model
from sklearn.metrics import roc_auc_score

from ubm import contract
from ubm_build.behaviour_text import tokenize
from ubm_build.model import BehaviourModel
from ubm_build.train import Inputs

OPSET = 17
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
on its batch either: the quick model's int8-static measured 9e-8 over all 1,809 test records,
as fp32 did, and int8-dynamic 1.3e-3. Kept apart from the fp32 bound so that it can be loosened
if float rounding ever moves an activation across a quantisation step by more."""
SERVED_ROWS_PER_RUN = 8
"""Records per encoder run in the batch-dependence check, as the served encoder runs them."""


class Variant(enum.Enum):
    FP32 = "fp32"
    ORT_OPTIMIZED = "ort-optimized"
    INT8_STATIC = "int8-static"
    INT8_DYNAMIC = "int8-dynamic"

    @property
    def is_int8(self) -> bool:
        return self in (Variant.INT8_STATIC, Variant.INT8_DYNAMIC)

    @property
    def batch_bound(self) -> float:
        """Largest tolerated batch dependence of this variant's probabilities."""
        return INT8_BATCH_BOUND if self.is_int8 else FP32_BATCH_BOUND

    @property
    def servable(self) -> bool:
        """Whether the build may serve it; int8-dynamic is only exported for comparison."""
        return self is not Variant.INT8_DYNAMIC


REQUIRED = (Variant.FP32, Variant.INT8_STATIC)
"""Variants whose failed check fails the build; the others are then just not served."""


class ParityError(AssertionError):
    """An exported model disagrees with PyTorch, or with itself across batches, beyond bounds."""


def _onnx_export(module: torch.nn.Module, args: tuple, path: Path, **kwargs) -> None:
    # The TorchScript exporter handles BERT's dynamic axes reliably; its tracer and deprecation
    # warnings are about code paths the parity check covers instead.
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(module.eval(), args, path, opset_version=OPSET, dynamo=False, **kwargs)


def export_encoder(model: BehaviourModel, path: Path) -> Path:
    """ONNX graph (input_ids, attention_mask) -> embedding, dynamic batch and sequence axes."""
    ids = torch.ones((2, 16), dtype=torch.int64)
    mask = torch.ones((2, 16), dtype=torch.int64)
    mask[1, 8:] = 0
    tokens = {0: "batch", 1: "sequence"}
    _onnx_export(
        model.encoder,
        (ids, mask),
        path,
        input_names=[contract.INPUT_IDS, contract.ATTENTION_MASK],
        output_names=[contract.EMBEDDING],
        dynamic_axes={
            contract.INPUT_IDS: tokens,
            contract.ATTENTION_MASK: tokens,
            contract.EMBEDDING: {0: "batch"},
        },
    )
    return path


class _ServedHead(torch.nn.Module):
    """The head plus a copy of its input embedding, which the ensemble returns."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, embedding: torch.Tensor, features: torch.Tensor):
        return self.head(embedding, features), embedding.clone()


def export_head(model: BehaviourModel, path: Path) -> Path:
    """ONNX graph (embedding, features) -> (purchase_probability [batch, 1], embedding copy)."""
    embedding = torch.zeros((2, model.spec.hidden_size))
    features = torch.zeros((2, len(model.spec.feature_names)))
    batch = {0: "batch"}
    _onnx_export(
        _ServedHead(model.head),
        (embedding, features),
        path,
        input_names=[contract.EMBEDDING, contract.FEATURES],
        output_names=[contract.PURCHASE_PROBABILITY, contract.HEAD_EMBEDDING],
        dynamic_axes={
            contract.EMBEDDING: batch,
            contract.FEATURES: batch,
            contract.PURCHASE_PROBABILITY: batch,
            contract.HEAD_EMBEDDING: batch,
        },
    )
    return path


class TokenCalibration(CalibrationDataReader):
    """Encoder feeds for `quantize_static`: one record per run, its real tokens and no padding.

    Padding positions are masked out of attention and pooling, so their activations must not
    widen the ranges that fix the int8 scales.
    """

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int) -> None:
        self._feeds: list[dict[str, np.ndarray]] = []
        for text in texts:
            ids, mask = tokenize(tokenizer, [text], max_length)
            n = int(mask.sum())
            self._feeds.append(
                {contract.INPUT_IDS: ids[:, :n], contract.ATTENTION_MASK: mask[:, :n]}
            )
        self._next: Iterator[dict] = iter(self._feeds)

    def get_next(self) -> dict | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def _weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is a weight (attention's are not)."""
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def _fuse_int8_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite `quantize_static`'s QDQ graph the way ONNX Runtime runs it best, in place.

    - ``DequantizeLinear -> MatMul -> Add(bias)`` becomes one MatMulIntegerToFloat with the
      bias: ONNX Runtime folds the bias into dynamically quantised MatMuls but leaves a
      separate Add after QDQ ones.
    - A ``QuantizeLinear -> DequantizeLinear`` pair in front of any other op is dropped: the
      quantiser gives one to every reader of a tensor that a MatMul reads quantised, so the
      residual Add after a LayerNorm would read it rounded to 8 bits. It reads fp32 again.

    Returns how many MatMuls were fused.
    """
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def made_by(name: str, op_type: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def constant(name: str) -> onnx.TensorProto | None:
        """The initializer behind `name`: the exporter shares equal ones through Identity."""
        identity = made_by(name, "Identity")
        return weights.get(identity.input[0] if identity is not None else name)

    replaced: dict[str, onnx.NodeProto] = {}  # by the output of the node it replaces
    dropped: set[str] = set()  # outputs of the nodes it makes redundant
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        a = made_by(node.input[0], "DequantizeLinear")
        b = made_by(node.input[1], "DequantizeLinear")
        users = consumers.get(node.output[0], [])
        if a is None or b is None or len(a.input) != 3 or len(b.input) != 3:
            continue
        if b.input[0] not in weights or any(
            attr.name == "axis" and attr.i not in (1, -1) for attr in b.attribute
        ):
            continue  # MatMulIntegerToFloat takes a constant B, scaled per column
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = next(name for name in add.input if name != node.output[0])
        if len(getattr(constant(bias), "dims", ())) != 1:
            continue
        replaced[node.output[0]] = onnx.helper.make_node(
            "MatMulIntegerToFloat",
            # A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias
            [a.input[0], b.input[0], a.input[1], b.input[1], a.input[2], b.input[2], bias],
            [add.output[0]],
            name=f"{node.name}_int8",
            domain="com.microsoft",
        )
        dropped.add(add.output[0])
    nodes = [replaced.get(n.output[0], n) for n in graph.node if n.output[0] not in dropped]

    # Readers of an activation's Q -> DQ that are not fused MatMuls read the activation itself.
    fp32_of = {}
    for node in nodes:
        quantize = made_by(node.input[0], "QuantizeLinear") if node.input else None
        if node.op_type == "DequantizeLinear" and quantize is not None:
            fp32_of[node.output[0]] = quantize.input[0]
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = fp32_of.get(name, name)

    while True:  # drop the Q and DQ nodes nothing reads any more
        used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        kept = [
            n
            for n in nodes
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.output[0] in used
        ]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """ONNX Runtime's quantisers log advice to run its pre-processing, whose symbolic shape
    inference fails on this graph; the variant checks judge the result instead."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8_static(
    fp32: Path, out: Path, calibration: TokenCalibration, *, fuse: bool = True
) -> Path:
    """Static int8 of the weight MatMuls (query, key, value, attention output, both FFN layers).

    Activations: uint8, one scale per tensor fixed from its min/max over `calibration` (the
    percentile and entropy methods did no better on the quick model). Weights: int8, one scale
    per output channel. Attention's activation-by-activation MatMuls, LayerNorm, GELU, softmax
    and the MatMul outputs stay fp32. `fuse` rewrites the graph with `_fuse_int8_matmuls`.
    """
    calibration.rewind()
    with _without_preprocessing_advice():
        quantize_static(
            fp32,
            out,
            calibration,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],  # and only their tensors are calibrated
            nodes_to_quantize=_weight_matmuls(onnx.load(fp32)),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "DedicatedQDQPair": True,
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
            },
        )
    if fuse:
        quantized = onnx.load(out)
        _fuse_int8_matmuls(quantized)
        onnx.save(quantized, out)
    return out


def derive_variant(
    variant: Variant,
    fp32: Path,
    model: BehaviourModel,
    out: Path,
    calibration: TokenCalibration | None = None,
) -> Path:
    """Write `variant` of the fp32 encoder graph to `out` (fp32 is copied as it is).

    int8-static needs `calibration`: train-window records, never the test window it is judged on.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if variant is Variant.FP32:
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
        if calibration is None:
            raise ValueError("int8-static needs calibration records")
        quantize_int8_static(fp32, out, calibration)
    else:
        with _without_preprocessing_advice():
            quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)
    return out


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class VariantReport:
    variant: str
    path: str
    probability_max_abs_diff: float
    roc_auc: float
    roc_auc_delta: float
    """This variant's test-window ROC-AUC minus PyTorch's."""
    records_per_s: float
    """In-process ONNX Runtime, batches of `PARITY_BATCH_SIZE`, this machine's cores."""
    passed: bool
    """Both checks: parity (fp32) or ROC-AUC loss (int8), and batch dependence."""
    batch_max_abs_diff: float | None = None
    """Largest |p alone - p in a batch| over the checked records; None: not measured."""
    batch_bound: float | None = None

    @property
    def batch_invariant(self) -> bool:
        return self.batch_max_abs_diff is not None and self.batch_max_abs_diff <= (
            self.batch_bound or 0.0
        )

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_predict(
    encoder: Path, head: Path, tokenizer, inputs: Inputs, max_length: int
) -> tuple[np.ndarray, float]:
    """(probabilities, records per second) of an encoder + head pair on `inputs`."""
    encoder_session, head_session = session(encoder), session(head)
    order = np.argsort([len(t) for t in inputs.texts])
    out = np.empty(len(inputs), dtype=np.float32)
    started = time.perf_counter()
    for start in range(0, len(inputs), PARITY_BATCH_SIZE):
        rows = order[start : start + PARITY_BATCH_SIZE]
        ids, mask = tokenize(tokenizer, [inputs.texts[i] for i in rows], max_length)
        feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
        embedding = encoder_session.run([contract.EMBEDDING], feeds)[0]
        head_feeds = {contract.EMBEDDING: embedding, contract.FEATURES: inputs.features[rows]}
        out[rows] = head_session.run([contract.PURCHASE_PROBABILITY], head_feeds)[0][:, 0]
    return out, len(inputs) / (time.perf_counter() - started)


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
    encoder: Path, head: Path, tokenizer, inputs: Inputs, max_length: int
) -> float:
    """Largest |p alone - p in a batch| over `inputs`' records.

    Alone: one record per run, padded as a one-record request is. In a batch: the records
    shuffled into mixed batches of each `BATCH_LAYOUTS` layout, right-padded with zeros as the
    served encoder stacks requests.
    """
    encoder_session, head_session = session(encoder), session(head)
    tokens = [tokenize(tokenizer, [text], max_length) for text in inputs.texts]
    widths = [ids.shape[1] for ids, _ in tokens]  # each rounded up as a one-record request is

    def score(rows: Sequence[int], width: int, rows_per_run: int) -> np.ndarray:
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, record in enumerate(rows):
            ids[row, : widths[record]] = tokens[record][0][0]
            mask[row, : widths[record]] = tokens[record][1][0]
        step = rows_per_run or len(rows)
        embedding = np.concatenate(
            [
                encoder_session.run(
                    [contract.EMBEDDING],
                    {
                        contract.INPUT_IDS: ids[start : start + step],
                        contract.ATTENTION_MASK: mask[start : start + step],
                    },
                )[0]
                for start in range(0, len(rows), step)
            ]
        )
        feeds = {contract.EMBEDDING: embedding, contract.FEATURES: inputs.features[list(rows)]}
        return head_session.run([contract.PURCHASE_PROBABILITY], feeds)[0][:, 0]

    alone = np.array([score([i], widths[i], 0)[0] for i in range(len(inputs))])
    worst = 0.0
    for seed, layout in enumerate(BATCH_LAYOUTS, start=1):
        order = np.random.default_rng(seed).permutation(len(inputs))
        start, turn = 0, 0
        while start < len(order):
            rows = order[start : start + layout.sizes[turn % len(layout.sizes)]]
            width = max_length if layout.pad_to_max_length else max(widths[i] for i in rows)
            batched = score(rows, width, layout.rows_per_run)
            worst = max(worst, float(np.abs(batched - alone[rows]).max()))
            start, turn = start + len(rows), turn + 1
    return worst


def check_variant(
    variant: Variant,
    encoder: Path,
    head: Path,
    tokenizer,
    inputs: Inputs,
    labels: np.ndarray,
    reference: np.ndarray,
    *,
    max_length: int,
    atol: float = DEFAULT_ATOL,
    max_int8_auc_loss: float = DEFAULT_MAX_INT8_AUC_LOSS,
    batch_records: int = BATCH_CHECK_RECORDS,
) -> VariantReport:
    """Score `inputs` with the variant, compare it with PyTorch's probabilities, and measure
    its batch dependence on `batch_records` of them (a fixed random choice)."""
    probabilities, rate = onnx_predict(encoder, head, tokenizer, inputs, max_length)
    diff = float(np.abs(probabilities - reference).max())
    auc = float(roc_auc_score(labels, probabilities))
    delta = auc - float(roc_auc_score(labels, reference))
    picked = np.random.default_rng(0).permutation(len(inputs))[:batch_records]
    checked = Inputs([inputs.texts[i] for i in picked], inputs.features[picked])
    batch_diff = batch_dependence(encoder, head, tokenizer, checked, max_length)
    accurate = -delta <= max_int8_auc_loss if variant.is_int8 else diff <= atol
    passed = accurate and batch_diff <= variant.batch_bound
    return VariantReport(
        variant.value, str(encoder), diff, auc, delta, rate, passed, batch_diff, variant.batch_bound
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


def _figure(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3g}"


def fastest_passing(reports: list[VariantReport]) -> VariantReport:
    """The fastest servable variant that passed both checks."""
    servable = {v.value for v in Variant if v.servable}
    candidates = [r for r in reports if r.passed and r.batch_invariant and r.variant in servable]
    if not candidates:
        raise ParityError(
            "no exported encoder variant passed its checks with a batch-dependence figure;"
            " run `ubm-build export` again"
        )
    return max(candidates, key=lambda r: r.records_per_s)
