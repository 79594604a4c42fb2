"""What each part of the model adds: the same head fit on less, or on other text.

Every row is a `network.Head` (scaled features, principal components of the embedding, logistic
regression) fit on the train window with the served settings, on some of the inputs: the text
embedding alone, then with the session features, then with the snapshot features (all on the
text without the snapshot's words), then with the snapshot's words rendered into the text. One
of the last two is the served model (`served_row`). When the encoder was adapted by masked-LM,
one more row shows the served head on the base encoder's embeddings. Rows score the test window
with uncalibrated logits (ROC-AUC does not need calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ubm_build.inputs.features import SESSION_FEATURE_NAMES
from ubm_build.inputs.model_inputs import FEATURE_NAMES
from ubm_build.model.network import BehaviourModel, Head
from ubm_build.model.train import TrainResult, embed_windows, head_logits

SESSION = np.arange(len(SESSION_FEATURE_NAMES))
ALL_FEATURES = np.arange(len(FEATURE_NAMES))
TITLES = {
    "text": "text only",
    "text_session": "text + session features",
    "text_session_snapshot": "text + session + snapshot features",
    "snapshot_words": "+ snapshot words in the text",
    "base_encoder": "the served model on the base encoder (no masked-LM)",
}
"""Row name -> title, in the order the card shows them."""


def served_row(snapshot_words: bool) -> str:
    """The row that is the served model."""
    return "snapshot_words" if snapshot_words else "text_session_snapshot"


@dataclass(frozen=True)
class Row:
    name: str
    embedded: str
    """Which embeddings: ``plain`` (text without words), ``words``, or ``base`` (the served
    text on the base encoder)."""
    features: np.ndarray
    """Columns of `FEATURE_NAMES` the head reads."""


def _rows(pretrained: bool) -> list[Row]:
    rows = [
        Row("text", "plain", np.arange(0)),
        Row("text_session", "plain", SESSION),
        Row("text_session_snapshot", "plain", ALL_FEATURES),
        Row("snapshot_words", "words", ALL_FEATURES),
    ]
    if pretrained:
        rows.append(Row("base_encoder", "base", ALL_FEATURES))
    return rows


def ablation(result: TrainResult, base_model: Path, *, c: float) -> dict[str, np.ndarray]:
    """Test-window logits of each row of `TITLES` that applies to this model.

    Args:
        result: the served model's training result (its windows' inputs and embeddings).
        base_model: the encoder before masked-LM (used only if the model was adapted).
        c: the head's inverse regularisation strength.
    """
    spec = result.model.spec
    served, other = ("words", "plain") if spec.snapshot_words else ("plain", "words")
    other_reader = replace(result.reader, snapshot_words=not spec.snapshot_words)
    examples = {name: window.examples for name, window in result.windows.items()}
    embedded = {
        served: result.windows,
        other: embed_windows(result.model, other_reader, examples, result.snapshots),
    }
    pretrained = result.summary.get("pretraining") is not None
    if pretrained:
        base = BehaviourModel.from_base(base_model, spec.max_length)
        embedded["base"] = embed_windows(base, result.reader, examples, result.snapshots)
    scores = {}
    for row in _rows(pretrained):
        data = embedded[row.embedded]
        components = min(spec.text_components, spec.hidden_size)
        head = Head(spec.hidden_size, len(row.features), components)
        train, test = data["train"], data["test"]
        head.fit(train.embeddings, train.inputs.features[:, row.features], train.labels, c=c)
        features = test.inputs.features[:, row.features]
        scores[row.name] = head_logits(head, test.embeddings, features)
    return scores
