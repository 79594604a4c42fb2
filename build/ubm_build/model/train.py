"""Train the purchase model on the train window, calibrate on the validation window, and
predict the test window.

1. The encoder: the base BERT, optionally adapted by masked-LM on the train window's behaviour
   texts (`pretrain`). It is not fine-tuned on the labels: a fine-tuned encoder scored below
   a logistic regression on its own features (README, Model quality), at ten times the cost.
2. Every example's inputs are read point-in-time (its own day's snapshot) and embedded once.
3. The head (`network.Head`) is fit on the train window's embeddings and features, and
   Platt-calibrated on the validation window's logits. With ``dp_epsilon`` set, the head is
   fit by DP-SGD per user instead, on data-independent transforms, uncalibrated (`privacy`).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from ubm.records import Event
from ubm_build.data import Example
from ubm_build.data.point_in_time import (
    SERVING_AS_OF,
    DailySnapshots,
    EventLog,
    point_in_time_inputs,
    point_in_time_texts,
)
from ubm_build.inputs import snapshot
from ubm_build.inputs.model_inputs import ModelInputs, RecordReader
from ubm_build.model import privacy
from ubm_build.model.network import BehaviourModel, Head, load_tokenizer
from ubm_build.model.pretrain import pretrain

WINDOW_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class Profile:
    name: str
    max_train_examples: int | None
    """Cap on training examples (all positives kept, negatives sampled); None for all."""
    max_length: int
    pretrain_epochs: int = 0
    """Masked-LM epochs on the train window's texts before the head is fit (0: base encoder)."""
    snapshot_words: bool = False
    """Render the snapshot's words into the behaviour text (`snapshot.id_words`)."""
    text_components: int = 32
    head_c: float = 1.0
    """Inverse L2 strength of the head's logistic regression (scikit-learn's default)."""
    batch_size: int = 16
    """Masked-LM batch size."""
    seed: int = 0
    dp_epsilon: float | None = None
    """Fit the head by DP-SGD to this ε per user (`privacy`); None: not private."""
    dp_delta: float | None = None
    """δ of the DP guarantee; None: `privacy.default_delta` of the training users."""

    def __post_init__(self) -> None:
        privacy.check_profile(self.pretrain_epochs, self.dp_epsilon, self.dp_delta)


PROFILES = {
    "quick": Profile("quick", max_train_examples=2000, max_length=64, snapshot_words=False),
    "full": Profile("full", max_train_examples=None, max_length=96, snapshot_words=False),
}
"""Neither masked-LM pretraining nor the snapshot's words in the text earned their place: on
the valid day, the full head reached ROC-AUC 0.7210 on the base encoder and plain text, 0.7207
with the words, 0.7211 with words on an encoder adapted by one masked-LM epoch (42 minutes on
2 busy cores). Both stay available as profile settings (README, Model quality)."""


def events_of(examples: Sequence[Example]) -> list[tuple[Event, ...]]:
    """What the model reads of each example: its events, oldest first."""
    return [ex.events for ex in examples]


def labels_of(examples: Sequence[Example]) -> np.ndarray:
    return np.array([ex.label for ex in examples], dtype=np.int64)


def subsample(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    """All positives and as many random negatives as fit in `limit`, in time order."""
    if limit is None or len(examples) <= limit:
        return list(examples)
    positives = [ex for ex in examples if ex.label]
    negatives = [ex for ex in examples if not ex.label]
    kept = positives + random.Random(seed).sample(negatives, max(0, limit - len(positives)))
    return sorted(kept, key=lambda ex: ex.prediction_ts)


@torch.inference_mode()
def embed(model: BehaviourModel, inputs: ModelInputs, batch_size: int = 64) -> np.ndarray:
    """The encoder's embedding of each row of `inputs` (float32 [n, hidden])."""
    model.eval()
    lengths = inputs.mask.sum(1)
    order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
    out = np.empty((len(lengths), model.spec.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(lengths[rows].max())
        ids = torch.from_numpy(inputs.ids[rows, :width])
        mask = torch.from_numpy(inputs.mask[rows, :width])
        out[rows] = model.encoder(ids, mask).numpy()
    return out


@torch.inference_mode()
def head_logits(head: Head, embeddings: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Uncalibrated logits of `head`."""
    return head.logit(torch.from_numpy(embeddings), torch.from_numpy(features)).numpy()


def predict(
    model: BehaviourModel, reader: RecordReader, events: Sequence[Sequence[Event]]
) -> np.ndarray:
    """PyTorch's calibrated purchase probabilities of event sequences read with `reader` (the
    reference the exported graphs are checked against)."""
    inputs = reader(events)
    embeddings = embed(model, inputs)
    with torch.inference_mode():
        probabilities = model.head(torch.from_numpy(embeddings), torch.from_numpy(inputs.features))
    return probabilities.squeeze(-1).numpy()


def fit_calibration(model: BehaviourModel, logits: np.ndarray, labels: np.ndarray) -> None:
    """Platt scaling on held-out logits, stored in the head."""
    platt = LogisticRegression(C=1e6).fit(logits.reshape(-1, 1), labels)
    model.head.calibration_scale.fill_(float(platt.coef_[0, 0]))
    model.head.calibration_bias.fill_(float(platt.intercept_[0]))


@dataclass(frozen=True)
class Embedded:
    """One window read point-in-time and embedded: what every head variant is fit on."""

    examples: Sequence[Example]
    inputs: ModelInputs
    embeddings: np.ndarray
    labels: np.ndarray


def embed_windows(
    model: BehaviourModel,
    reader: RecordReader,
    windows: dict[str, Sequence[Example]],
    snapshots: DailySnapshots,
) -> dict[str, Embedded]:
    """Each window's examples read point-in-time with `reader` and embedded by `model`."""
    out = {}
    for name in tqdm(WINDOW_NAMES, desc="read and embed", unit="window"):
        inputs = point_in_time_inputs(reader, windows[name], snapshots)
        out[name] = Embedded(windows[name], inputs, embed(model, inputs), labels_of(windows[name]))
    return out


def training_windows(
    profile: Profile, examples: dict[str, list[Example]]
) -> dict[str, Sequence[Example]]:
    """The profile's (subsampled) train window, and the valid and test windows."""
    windows = {"train": subsample(examples["train"], profile.max_train_examples, profile.seed)}
    return windows | {name: examples[name] for name in ("valid", "test")}


def new_model(profile: Profile, encoder_dir: Path) -> BehaviourModel:
    """The BERT in `encoder_dir` (the base or the adapted one) and a fresh head, as `profile`
    says."""
    return BehaviourModel.from_base(
        encoder_dir,
        profile.max_length,
        text_components=profile.text_components,
        snapshot_words=profile.snapshot_words,
        seed=profile.seed,
    )


def served_reader(profile: Profile, base_model: Path, snapshots: DailySnapshots) -> RecordReader:
    """How the served model reads records: the snapshot as of the test window's start."""
    return RecordReader(
        load_tokenizer(base_model),
        profile.max_length,
        snapshots.at(SERVING_AS_OF),
        profile.snapshot_words,
    )


def dp_config(profile: Profile) -> privacy.DPConfig:
    """The DP-SGD settings of a private profile."""
    if profile.dp_epsilon is None:
        raise ValueError(f"profile {profile.name} is not differentially private")
    return privacy.DPConfig(profile.dp_epsilon, profile.dp_delta, seed=profile.seed)


@dataclass(frozen=True)
class TrainResult:
    model: BehaviourModel
    summary: dict
    test_logits: np.ndarray
    """Uncalibrated test-window logits; `test_probabilities` are the calibrated ones."""
    test_probabilities: np.ndarray
    windows: dict[str, Embedded]
    """Each window's examples, inputs and embeddings (for the ablation)."""
    reader: RecordReader
    """The served reader (snapshot as of the test window's start)."""
    snapshots: DailySnapshots


def train(
    profile: Profile,
    examples: dict[str, list[Example]],
    log: EventLog,
    base_model: Path,
    out_dir: Path,
) -> TrainResult:
    """Adapt the encoder (if the profile says so), fit and calibrate the head, save to
    `out_dir` with the snapshot as of the test window's start (what is served)."""
    started = time.perf_counter()
    snapshots = DailySnapshots(log)
    windows = training_windows(profile, examples)
    encoder_dir, pretrained = base_model, None
    if profile.pretrain_epochs:
        texts = point_in_time_texts(
            windows["train"],
            snapshots,
            snapshot_words=profile.snapshot_words,
            words=profile.max_length + 2,
        )
        encoder_dir = out_dir / "pretrained"
        pretrained = pretrain(
            base_model,
            texts,
            encoder_dir,
            max_length=profile.max_length,
            epochs=profile.pretrain_epochs,
            batch_size=profile.batch_size,
            seed=profile.seed,
        )
    model = new_model(profile, encoder_dir)
    reader = served_reader(profile, base_model, snapshots)
    embed_started = time.perf_counter()
    embedded = embed_windows(model, reader, windows, snapshots)
    embed_s = time.perf_counter() - embed_started
    fit, dp_record = embedded["train"], None
    if profile.dp_epsilon is None:
        model.head.fit(fit.embeddings, fit.inputs.features, fit.labels, c=profile.head_c)
    else:  # private: data-independent transforms, DP-SGD, no calibration
        users = [ex.user for ex in fit.examples]
        config = dp_config(profile)
        args = (fit.embeddings, fit.inputs.features, fit.labels, users, config)
        dp_record = privacy.fit_private(model.head, *args)
    logits = {
        name: head_logits(model.head, e.embeddings, e.inputs.features)
        for name, e in embedded.items()
    }
    if dp_record is None:
        fit_calibration(model, logits["valid"], embedded["valid"].labels)
    with torch.inference_mode():
        test = embedded["test"]
        test_probabilities = (
            model.head(torch.from_numpy(test.embeddings), torch.from_numpy(test.inputs.features))
            .squeeze(-1)
            .numpy()
        )
    model.spec = replace(model.spec, base_model=str(base_model))  # whose tokenizer it keeps
    model.save(out_dir)
    reader.snapshot.save(out_dir / snapshot.FILE)
    if pretrained is not None:
        shutil.rmtree(encoder_dir)  # saved again as the model's encoder/
    labels = embedded["train"].labels
    summary = {
        "profile": asdict(profile),
        "train_examples": len(labels),
        "train_positives": int(labels.sum()),
        "pretraining": pretrained,
        "embedding_seconds": round(embed_s, 1),
        "train_seconds": round(time.perf_counter() - started, 1),
        "valid_roc_auc": float(roc_auc_score(embedded["valid"].labels, logits["valid"])),
        "test_examples": len(test.labels),
        "test_positives": int(test.labels.sum()),
        "test_roc_auc": float(roc_auc_score(test.labels, test_probabilities)),
        "snapshot_as_of": reader.snapshot.as_of,
    }
    if dp_record is not None:
        summary["privacy"] = dp_record
    return TrainResult(
        model, summary, logits["test"], test_probabilities, embedded, reader, snapshots
    )
