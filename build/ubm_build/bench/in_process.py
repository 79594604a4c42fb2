"""The rows scored in this process: the seeds' way, our model in PyTorch, our exported encoders
on their engines (ONNX Runtime, OpenVINO), each with the ONNX head.

Each times what the server does for a record too: behaviour text, session features,
tokenization and the model (JSON decoding aside), over the same batches in the same order as
the requests sent to the server. A warm-up call before each row is not timed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertModel

from ubm import contract
from ubm.records import Record
from ubm_build import export
from ubm_build.bench.rows import Row, summarise, summarise_batches, time_calls
from ubm_build.bench.workload import Batch
from ubm_build.inputs.model_inputs import ModelInputs, RecordReader
from ubm_build.model.network import BehaviourModel
from ubm_build.serving.triton_models.engine_model import run_in_slices

SEEDS_VOCAB_SIZE = 28996
"""bert-base-cased's vocabulary. Our tokenizer's ids are folded into it (id mod 28,996): the
weights are random, so only the amount of work matters, and that is the same."""
COMPARED_VARIANTS = ("fp32", "int8-static", "openvino-fp32", "openvino-bf16", "openvino-int8")
"""Encoder variants measured in process (and served, on their own server), where exported."""


@dataclass(frozen=True)
class InProcess:
    """How the in-process rows prepare records and run the encoder, as the server does."""

    reader: RecordReader
    """The model's reader (tokenizer, token limit, snapshot)."""
    rows_per_run: int = 0
    """Records per encoder run, 0 for whole batches."""

    def inputs(self, batch: Batch) -> ModelInputs:
        """What ``preprocess`` hands the encoder and head for `batch`."""
        return self.reader([record.events for record in batch])


class SeedsWayModel(nn.Module):
    """bert-base-cased's architecture with random weights; [CLS] vector -> linear -> sigmoid."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=SEEDS_VOCAB_SIZE)  # the rest are bert-base's defaults
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.sigmoid(self.classifier(hidden[:, 0]))


@torch.inference_mode()
def seeds_way_row(records: Sequence[Record], setup: InProcess) -> Row:
    """The seeds' way: `SeedsWayModel` in PyTorch eager, one record per call."""
    model = SeedsWayModel().eval()

    def score(one: Batch) -> None:
        ids, mask, *_ = setup.reader([one[0].events])
        model(torch.from_numpy(ids % SEEDS_VOCAB_SIZE), torch.from_numpy(mask))

    latencies, seconds = time_calls([[record] for record in records], score)
    description = "bert-base-cased arch, random weights, eager, 1 record/call, [CLS] + linear"
    return summarise("seeds_way", description, 1, "record", latencies, len(records), seconds)


@torch.inference_mode()
def pytorch_row(model: BehaviourModel, batches: Sequence[Batch], setup: InProcess) -> Row:
    """Our trained model in PyTorch eager, one call per batch."""
    model.eval()

    def score(batch: Batch) -> np.ndarray:
        ids, mask, features, _ = setup.inputs(batch)
        embedding = model.encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        return model.head(embedding, torch.from_numpy(features)).numpy()

    latencies, seconds = time_calls(batches, score)
    description = "our MiniLM model (BehaviourModel.load), PyTorch eager, batched"
    return summarise_batches("pytorch", description, "batch", batches, latencies, seconds)


def engine_row_name(variant: str, *, single: bool = False) -> str:
    """The in-process row of an encoder variant: ``ort_<variant>`` for ONNX Runtime's,
    ``openvino_<precision>`` for OpenVINO's; ``_single`` for one record per call."""
    engine = export.Variant(variant).engine
    name = variant if engine is not export.Engine.ONNXRUNTIME else f"ort_{variant}"
    return name.replace("-", "_") + ("_single" if single else "")


def engine_row(
    variant: str, encoder: Path, head: Path, batches: Sequence[Batch], setup: InProcess
) -> Row:
    """Our encoder on its engine and the head in ONNX Runtime, the encoder in slices of
    `setup.rows_per_run` records like the server's."""
    encoder_session = export.Variant(variant).open(encoder)
    head_session = export.ort_session(head)

    def score(batch: Batch) -> np.ndarray:
        ids, mask, features, _ = setup.inputs(batch)
        feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
        embedding = run_in_slices(encoder_session, [contract.EMBEDDING], feeds, setup.rows_per_run)[
            0
        ]
        head_feeds = {contract.EMBEDDING: embedding, contract.FEATURES: features}
        return head_session.run([contract.PURCHASE_PROBABILITY], head_feeds)[0]

    latencies, seconds = time_calls(batches, score)
    size = len(batches[0])
    slices = f", {setup.rows_per_run} records per run" if 0 < setup.rows_per_run < size else ""
    name = engine_row_name(variant, single=size == 1)
    engine = export.Variant(variant).engine.value
    description = f"{engine} in this process, {variant} encoder + head{slices}"
    return summarise_batches(name, description, "batch", batches, latencies, seconds)
