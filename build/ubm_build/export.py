"""Export the encoder and head to ONNX, derive optimised variants, and check each against PyTorch.

Encoder variants (the head, a few thousand weights, stays fp32 in all of them):

- ``fp32``: the plain ONNX export.
- ``ort-optimized``: ONNX Runtime's transformer optimiser (fused LayerNorm, GELU, ...), fp32.
- ``int8``: dynamic quantisation of the fp32 graph, int8 weights with per-channel scales
  (per-tensor scales moved MiniLM's embedding much further from PyTorch's).

Every variant scores the whole test window; `VariantReport` holds its largest probability
difference from PyTorch, its ROC-AUC change and its in-process speed.
"""

from __future__ import annotations

import enum
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
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


class Variant(enum.Enum):
    FP32 = "fp32"
    ORT_OPTIMIZED = "ort-optimized"
    INT8 = "int8"


class ParityError(AssertionError):
    """An exported model disagrees with PyTorch beyond the tolerance."""


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


def derive_variant(variant: Variant, fp32: Path, model: BehaviourModel, out: Path) -> Path:
    """Write `variant` of the fp32 encoder graph to `out` (fp32 is copied as it is)."""
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
    else:
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
) -> VariantReport:
    """Score `inputs` with the variant and compare it with PyTorch's probabilities."""
    probabilities, rate = onnx_predict(encoder, head, tokenizer, inputs, max_length)
    diff = float(np.abs(probabilities - reference).max())
    auc = float(roc_auc_score(labels, probabilities))
    delta = auc - float(roc_auc_score(labels, reference))
    passed = -delta <= max_int8_auc_loss if variant is Variant.INT8 else diff <= atol
    return VariantReport(variant.value, str(encoder), diff, auc, delta, rate, passed)


def require_passing(reports: list[VariantReport], atol: float, max_int8_auc_loss: float) -> None:
    """Raise `ParityError` if the fp32 or the int8 variant failed its check.

    The ort-optimized variant may fail without failing the build: it is then not served.
    """
    for report in reports:
        if report.passed or report.variant == Variant.ORT_OPTIMIZED.value:
            continue
        raise ParityError(
            f"{report.variant} encoder fails its check on the test window: probability max abs"
            f" diff {report.probability_max_abs_diff:.3g} (fp32 tolerance {atol:g}, --atol),"
            f" ROC-AUC change {report.roc_auc_delta:+.4f} (int8 may lose at most"
            f" {max_int8_auc_loss:g}, --max-int8-auc-loss)"
        )


def fastest_passing(reports: list[VariantReport]) -> VariantReport:
    return max((r for r in reports if r.passed), key=lambda r: r.records_per_s)
