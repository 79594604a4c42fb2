"""`ubm_build.bench.gpu pack` on a hand-made model directory (a 2-layer BERT on a 100-token
vocabulary, the packaged tokenizer, a small snapshot): what the GPU machine gets still loads
as a model, with the encoder in fp16 and only the evaluation arrays the gates read."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import numpy as np
import torch
from transformers import BertModel

from ubm_build.bench import gpu
from ubm_build.inputs.snapshot import FILE
from ubm_build.model.network import (
    DEFAULT_BASE_MODEL,
    BehaviourModel,
    Head,
    ModelSpec,
    tiny_bert_config,
)


def test_pack_keeps_a_loadable_model_with_an_fp16_encoder(snapshot_file, tmp_path):
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    BertModel(tiny_bert_config(100, 32), add_pooling_layer=False).save_pretrained(
        model_dir / "encoder"
    )
    spec = ModelSpec(max_length=32, base_model="unused", hidden_size=32, text_components=8)
    (model_dir / "ubm_model.json").write_text(json.dumps(asdict(spec)))
    torch.save(Head(32, len(spec.feature_names), 8).state_dict(), model_dir / "head.pt")
    shutil.copy2(DEFAULT_BASE_MODEL / "tokenizer.json", model_dir / "tokenizer.json")
    shutil.copy2(snapshot_file, model_dir / FILE)
    arrays = {key: np.zeros(3, dtype=np.float32) for key in gpu.EVALUATION_KEYS}
    np.savez(model_dir / "evaluation.npz", train_features=np.zeros((9, 4)), **arrays)

    out = tmp_path / "packed"
    sizes = gpu.pack(model_dir, out)

    assert "encoder/model.safetensors" in sizes
    assert set(np.load(out / "evaluation.npz").files) == set(gpu.EVALUATION_KEYS)
    with np.load(out / FILE) as packed, np.load(snapshot_file) as original:
        assert all(np.array_equal(packed[key], original[key]) for key in original.files)
    loaded = BertModel.from_pretrained(out / "encoder", add_pooling_layer=False)
    assert next(loaded.parameters()).dtype == torch.float16
    assert BehaviourModel.load(out).spec == spec
