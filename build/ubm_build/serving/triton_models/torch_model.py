"""Triton python-backend model running the BERT encoder with PyTorch, on a CUDA GPU in fp16 for
the GPU target (`EngineModel` does the rest).

Reads ``bert/`` in the version directory: the Hugging Face ``BertModel`` (no pooling layer) as
``config.json`` and ``model.safetensors``. The embedding is the mean of the last hidden states
over the attention mask, as in training (``ubm_build.model.network.mean_pool``), computed in
fp32 whatever the precision. Config parameters: ``device`` ("cuda", the default, or "cpu") and
``precision`` ("fp16", the default, or "fp32"). On CUDA each instance runs on the GPU Triton
gives it (``model_instance_device_id``).
"""

from pathlib import Path

import numpy as np
import torch
from transformers import BertModel

try:  # copied next to this file in the model repository
    import contract
    from engine_model import EngineModel
except ImportError:  # imported from the source tree (tests)
    from ubm import contract
    from ubm_build.serving.triton_models.engine_model import EngineModel

BERT_DIR = "bert"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [n, length, width] over the attended tokens of `mask` [n, length]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class TorchSession:
    """The BERT of `bert_dir` plus mean pooling, with ONNX Runtime's ``run`` call shape."""

    def __init__(self, bert_dir: Path, device: str = "cuda", precision: str = "fp16") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here")
        self.device = torch.device(device)
        self.bert = BertModel.from_pretrained(
            bert_dir, add_pooling_layer=False, dtype=PRECISIONS[precision]
        )
        self.bert = self.bert.to(self.device).eval()

    @torch.inference_mode()
    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``[embedding]`` (float32 [n, hidden]) of int64 `feeds` ``input_ids`` and
        ``attention_mask``; columns no row attends to are dropped first."""
        mask = feeds[contract.ATTENTION_MASK]
        width = int(np.flatnonzero(mask.any(axis=0)).max(initial=0)) + 1
        ids = torch.from_numpy(np.ascontiguousarray(feeds[contract.INPUT_IDS][:, :width]))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask[:, :width]))
        ids = ids.to(self.device, non_blocking=True)
        mask_t = mask_t.to(self.device, non_blocking=True)
        hidden = self.bert(input_ids=ids, attention_mask=mask_t).last_hidden_state
        embedding = mean_pool(hidden.float(), mask_t)
        return [embedding.cpu().numpy()]


class TritonPythonModel(EngineModel):
    def initialize(self, args: dict) -> None:
        """Remember the instance's GPU, then as `EngineModel`."""
        self.device_id = args.get("model_instance_device_id", "0")
        super().initialize(args)

    def open_session(self, directory: Path, params: dict[str, str]) -> TorchSession:
        device = params.get(contract.PARAM_DEVICE, "cuda")
        if device == "cuda":
            device = f"cuda:{getattr(self, 'device_id', '0')}"
        precision = params.get(contract.PARAM_PRECISION, "fp16")
        return TorchSession(directory / BERT_DIR, device, precision)
