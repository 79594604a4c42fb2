"""The PyTorch encoder (`torch_model.py`) on the CPU in fp32, against the exported ONNX encoder
in ONNX Runtime: as a session, and as the python-backend model loaded from a version directory
laid out as the repository would, against a fake `triton_python_backend_utils`.

A randomly initialised 2-layer BERT on a 100-token vocabulary stands in for the trained one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_python_backend import FakeRequest, load_served
from transformers import BertModel

import ubm.contract
from ubm import contract
from ubm_build import export
from ubm_build.model.network import Encoder, tiny_bert_config
from ubm_build.serving.triton_models import torch_model

VOCAB_SIZE = 100
MAX_LENGTH = 32
TRITON_MODELS = Path(torch_model.__file__).parent
CONFIG = """
name: "encoder"
backend: "python"
max_batch_size: 64
input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }}
]
output [ {{ name: "embedding" data_type: TYPE_FP32 dims: [ {hidden} ] }} ]
parameters [
  {{ key: "device" value: {{ string_value: "cpu" }} }},
  {{ key: "precision" value: {{ string_value: "fp32" }} }},
  {{ key: "vocab_size" value: {{ string_value: "{vocab}" }} }},
  {{ key: "max_length" value: {{ string_value: "{length}" }} }}
]
"""


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> tuple[Path, Path]:
    """(the saved BERT's directory, its encoder exported to ONNX)."""
    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config(VOCAB_SIZE, MAX_LENGTH), add_pooling_layer=False).eval()
    directory = tmp_path_factory.mktemp("tiny_bert")
    bert.save_pretrained(directory / "bert")
    onnx = export.export_encoder(SimpleNamespace(encoder=Encoder(bert)), directory / "encoder.onnx")
    return directory / "bert", onnx


def ragged_tokens(lengths: tuple[int, ...], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids and their mask, one row per length, right-padded with zeros to `width`."""
    rng = np.random.default_rng(0)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, VOCAB_SIZE, length)
        mask[row, :length] = 1
    return ids, mask


def onnx_embedding(onnx: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
    return export.ort_session(onnx).run([contract.EMBEDDING], feeds)[0]


def test_session_matches_onnx_runtime_on_a_ragged_batch(tiny_bert):
    bert_dir, onnx = tiny_bert
    ids, mask = ragged_tokens((3, 17, 9, 1, 24), width=28)  # 4 columns nobody attends to
    session = torch_model.TorchSession(bert_dir, device="cpu", precision="fp32")
    (embedding,) = session.run([contract.EMBEDDING], {"input_ids": ids, "attention_mask": mask})
    assert embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, onnx_embedding(onnx, ids, mask), atol=1e-4)


def test_session_refuses_what_it_cannot_run(tiny_bert, monkeypatch):
    with pytest.raises(ValueError, match="precision"):
        torch_model.TorchSession(tiny_bert[0], device="cpu", precision="int8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        torch_model.TorchSession(tiny_bert[0])


def test_served_model_stacks_requests_of_different_lengths(tiny_bert, tmp_path):
    bert_dir, onnx = tiny_bert
    version = tmp_path / contract.ENCODER / "1"
    version.mkdir(parents=True)
    shutil.copy2(TRITON_MODELS / "torch_model.py", version / "model.py")
    for neighbour in ("engine_model.py", "responses.py"):
        shutil.copy2(TRITON_MODELS / neighbour, version / neighbour)
    shutil.copy2(ubm.contract.__file__, version / "contract.py")
    shutil.copytree(bert_dir, version / torch_model.BERT_DIR)
    config = CONFIG.format(hidden=32, vocab=VOCAB_SIZE, length=MAX_LENGTH)
    (version.parent / "config.pbtxt").write_text(config)
    encoder = load_served(tmp_path, contract.ENCODER)

    requests = [ragged_tokens(lengths, max(lengths)) for lengths in ((5, 2), (19,), (1, 7, 11))]
    responses = encoder.execute([FakeRequest(input_ids=i, attention_mask=m) for i, m in requests])
    for (ids, mask), response in zip(requests, responses, strict=True):
        expected = onnx_embedding(onnx, ids, mask)
        np.testing.assert_allclose(response[contract.EMBEDDING], expected, atol=1e-4)
