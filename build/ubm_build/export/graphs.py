"""The model as ONNX graphs: the encoder (token ids -> embedding) and the head (embedding and
session features -> probability and segment, plus the embedding the ensemble returns), and the
ONNX Runtime session every check and benchmark runs them with."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import torch

from ubm import contract
from ubm_build.model.network import BehaviourModel
from ubm_build.serving.triton_models.onnx_model import onnx_session

OPSET = 17


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
    """The head's probability and segment, plus a copy of its input embedding, which the
    ensemble returns."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, embedding: torch.Tensor, features: torch.Tensor):
        segment, distance = self.head.segment(embedding)
        return self.head(embedding, features), embedding.clone(), segment, distance


HEAD_OUTPUTS = (
    contract.PURCHASE_PROBABILITY,
    contract.HEAD_EMBEDDING,
    contract.SEGMENT,
    contract.SEGMENT_DISTANCE,
)


def export_head(model: BehaviourModel, path: Path) -> Path:
    """ONNX graph (embedding, features) -> `HEAD_OUTPUTS`: purchase_probability [batch, 1],
    the embedding's copy, segment (int32 [batch, 1]) and segment_distance [batch, 1]."""
    embedding = torch.zeros((2, model.spec.hidden_size))
    features = torch.zeros((2, len(model.spec.feature_names)))
    batch = {0: "batch"}
    _onnx_export(
        _ServedHead(model.head),
        (embedding, features),
        path,
        input_names=[contract.EMBEDDING, contract.FEATURES],
        output_names=list(HEAD_OUTPUTS),
        dynamic_axes={
            name: batch for name in (contract.EMBEDDING, contract.FEATURES, *HEAD_OUTPUTS)
        },
    )
    return path


def ort_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `path` as the served models open it; 0 threads: all
    cores."""
    return onnx_session(path, threads)
