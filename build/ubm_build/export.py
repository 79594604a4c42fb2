"""Export the encoder and the head to ONNX and check both against PyTorch."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ubm import contract
from ubm_build.behaviour_text import tokenize
from ubm_build.model import BehaviourModel

OPSET = 17
DEFAULT_ATOL = 1e-4


def _onnx_export(module: torch.nn.Module, args: tuple, path: Path, **kwargs) -> None:
    # The TorchScript exporter handles BERT's dynamic axes reliably; its tracer and deprecation
    # warnings are about code paths we check with the parity test instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(module, args, path, opset_version=OPSET, dynamo=False, **kwargs)


class ParityError(AssertionError):
    """An exported model disagrees with PyTorch beyond the tolerance."""


def export_encoder(model: BehaviourModel, path: Path) -> Path:
    """ONNX graph (input_ids, attention_mask) -> embedding, dynamic batch and sequence axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder.eval()
    ids = torch.ones((2, 16), dtype=torch.int64)
    mask = torch.ones((2, 16), dtype=torch.int64)
    mask[1, 8:] = 0
    tokens = {0: "batch", 1: "sequence"}
    _onnx_export(
        encoder,
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
    """The head plus a copy of its input, which the ensemble returns (`contract.HEAD_EMBEDDING`)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(embedding), embedding.clone()


def export_head(model: BehaviourModel, path: Path) -> Path:
    """ONNX graph embedding -> (purchase_probability [batch, 1] calibrated, embedding copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    embedding = torch.zeros((2, model.spec.hidden_size))
    batch = {0: "batch"}
    _onnx_export(
        _ServedHead(model.head).eval(),
        (embedding,),
        path,
        input_names=[contract.EMBEDDING],
        output_names=[contract.PURCHASE_PROBABILITY, contract.HEAD_EMBEDDING],
        dynamic_axes={
            contract.EMBEDDING: batch,
            contract.PURCHASE_PROBABILITY: batch,
            contract.HEAD_EMBEDDING: batch,
        },
    )
    return path


@dataclass(frozen=True)
class Parity:
    embedding_max_abs_diff: float
    probability_max_abs_diff: float
    records: int

    def check(self, atol: float) -> None:
        """Raise `ParityError` if either difference exceeds `atol`."""
        worst = max(self.embedding_max_abs_diff, self.probability_max_abs_diff)
        if worst > atol:
            raise ParityError(
                f"ONNX differs from PyTorch by {worst:.3g}"
                f" (embedding {self.embedding_max_abs_diff:.3g},"
                f" probability {self.probability_max_abs_diff:.3g}) over {self.records} records,"
                f" above the tolerance {atol:g}; raise it with --atol if this is expected"
            )


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def compare(
    model: BehaviourModel,
    tokenizer,
    texts: Sequence[str],
    encoder_onnx: Path,
    head_onnx: Path,
    batch_size: int = 32,
) -> Parity:
    """Max abs differences between PyTorch and ONNX Runtime on `texts`."""
    model.eval()
    encoder, head = session(encoder_onnx), session(head_onnx)
    emb_diff = prob_diff = 0.0
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[start : start + batch_size], model.spec.max_length)
        torch_emb = model.encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        torch_prob = model.head(torch_emb).numpy()
        onnx_emb = encoder.run(None, {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})[0]
        onnx_prob = head.run([contract.PURCHASE_PROBABILITY], {contract.EMBEDDING: onnx_emb})[0]
        emb_diff = max(emb_diff, float(np.abs(onnx_emb - torch_emb.numpy()).max()))
        prob_diff = max(prob_diff, float(np.abs(onnx_prob - torch_prob).max()))
    return Parity(emb_diff, prob_diff, len(texts))
