"""What each part of the served model adds: the same head fit on less.

Every row is a `network.Head` (scaling, principal components, logistic regression)
fit on the train window with the same settings as the served one, on a subset of its inputs:
the text embedding alone, then with the session features, then with the snapshot features,
then with the snapshot's words rendered into the text (the served model). When the encoder was
adapted by masked-LM, one more row shows the served head on the base encoder's embeddings.
Rows score the test window with uncalibrated logits (ROC-AUC does not need calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ubm_build.data.point_in_time import point_in_time_inputs
from ubm_build.inputs.features import SESSION_FEATURE_NAMES
from ubm_build.inputs.model_inputs import FEATURE_NAMES, RecordReader
from ubm_build.model.network import BehaviourModel, Head
from ubm_build.model.train import WINDOW_NAMES, Embedded, TrainResult, embed, head_logits

SESSION = np.arange(len(SESSION_FEATURE_NAMES))
ALL_FEATURES = np.arange(len(FEATURE_NAMES))
TITLES = {
    "text": "text only",
    "text_session": "text + session features",
    "text_session_snapshot": "text + session + snapshot features",
    "served": "+ snapshot words in the text (served)",
    "served_base_encoder": "served head on the base encoder (no masked-LM)",
}
"""Row name -> title, in the order the card shows them."""


@dataclass(frozen=True)
class Row:
    name: str
    embedded: str
    """Which embeddings: ``plain`` (text without words), ``served`` or ``base``."""
    features: np.ndarray
    """Columns of `FEATURE_NAMES` the head reads."""


def _rows(words: bool, pretrained: bool) -> list[Row]:
    text = "plain" if words else "served"
    rows = [
        Row("text", text, np.arange(0)),
        Row("text_session", text, SESSION),
        Row("text_session_snapshot", text, ALL_FEATURES),
    ]
    if words:
        rows.append(Row("served", "served", ALL_FEATURES))
    if pretrained:
        rows.append(Row("served_base_encoder", "base", ALL_FEATURES))
    return rows


def _embedded_again(
    model: BehaviourModel, reader: RecordReader, result: TrainResult
) -> dict[str, Embedded]:
    """`result`'s windows read with `reader` and embedded by `model`."""
    out = {}
    for name in WINDOW_NAMES:
        window = result.windows[name]
        inputs = point_in_time_inputs(reader, window.examples, result.snapshots)
        out[name] = Embedded(window.examples, inputs, embed(model, inputs), window.labels)
    return out


def ablation(result: TrainResult, base_model: Path, *, c: float) -> dict[str, np.ndarray]:
    """Test-window logits of each row of `TITLES` that applies to this model.

    Args:
        result: the served model's training result (its windows' inputs and embeddings).
        base_model: the encoder before masked-LM (used only if the model was adapted).
        c: the head's inverse regularisation strength.
    """
    spec = result.model.spec
    embedded = {"served": result.windows}
    words = spec.snapshot_words
    pretrained = result.summary.get("pretraining") is not None
    if words:
        plain = replace(result.reader, snapshot_words=False)
        embedded["plain"] = _embedded_again(result.model, plain, result)
    if pretrained:
        base = BehaviourModel.from_base(base_model, spec.max_length)
        embedded["base"] = _embedded_again(base, result.reader, result)
    scores = {}
    for row in _rows(words, pretrained):
        data = embedded[row.embedded]
        components = min(spec.text_components, spec.hidden_size)
        head = Head(spec.hidden_size, len(row.features), components)
        train = data["train"]
        head.fit(train.embeddings, train.inputs.features[:, row.features], train.labels, c=c)
        test = data["test"]
        scores[row.name] = head_logits(head, test.embeddings, test.inputs.features[:, row.features])
    return scores
