"""Fine-tune the encoder and head on the train window, stop early and calibrate on the
validation window, and predict the test window."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from ubm.records import Event
from ubm_build.data import Example
from ubm_build.inputs.features import feature_matrix
from ubm_build.inputs.model_inputs import model_inputs
from ubm_build.model.network import BehaviourModel, load_tokenizer


@dataclass(frozen=True)
class Profile:
    name: str
    max_train_examples: int | None
    """Cap on training examples (all positives kept, negatives sampled); None for all."""
    epochs: int
    max_length: int
    batch_size: int = 16
    encoder_lr: float = 5e-5
    head_lr: float = 1e-3
    patience: int = 1
    """Epochs without a better validation ROC-AUC before training stops."""
    seed: int = 0


PROFILES = {
    "quick": Profile("quick", max_train_examples=2000, epochs=1, max_length=64),
    "full": Profile("full", max_train_examples=None, epochs=2, max_length=96),
}


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


def _tensors(model: BehaviourModel, tokenizer, events: Sequence[Sequence[Event]], rows):
    batch = model_inputs(tokenizer, [events[i] for i in rows], model.spec.max_length)
    return (
        torch.from_numpy(batch.ids),
        torch.from_numpy(batch.mask),
        torch.from_numpy(batch.features),
    )


@torch.inference_mode()
def predict(
    model: BehaviourModel,
    tokenizer,
    events: Sequence[Sequence[Event]],
    *,
    batch_size: int = 64,
    calibrated: bool = True,
) -> np.ndarray:
    """Calibrated purchase probabilities, or raw logits with ``calibrated=False``."""
    model.eval()
    order = np.argsort([len(e) for e in events])  # similar lengths together: less padding
    out = np.empty(len(events), dtype=np.float32)
    for start in range(0, len(events), batch_size):
        rows = order[start : start + batch_size]
        ids, mask, features = _tensors(model, tokenizer, events, rows)
        if calibrated:
            values = model.head(model.encoder(ids, mask), features).squeeze(-1)
        else:
            values = model.logit(ids, mask, features)
        out[rows] = values.numpy()
    return out


def fit_calibration(model: BehaviourModel, logits: np.ndarray, labels: np.ndarray) -> None:
    """Platt scaling on held-out logits, stored in the head."""
    platt = LogisticRegression(C=1e6).fit(logits.reshape(-1, 1), labels)
    model.head.calibration_scale.fill_(float(platt.coef_[0, 0]))
    model.head.calibration_bias.fill_(float(platt.intercept_[0]))


@dataclass(frozen=True)
class TrainResult:
    model: BehaviourModel
    summary: dict
    test_logits: np.ndarray
    """Uncalibrated test-window logits; `test_probabilities` are the calibrated ones."""
    test_probabilities: np.ndarray


def train(
    profile: Profile, examples: dict[str, list[Example]], base_model: Path, out_dir: Path
) -> TrainResult:
    """Train, stop early on validation ROC-AUC, calibrate, save to `out_dir`."""
    torch.manual_seed(profile.seed)
    train_set = subsample(examples["train"], profile.max_train_examples, profile.seed)
    model = BehaviourModel.from_base(base_model, profile.max_length, seed=profile.seed)
    tokenizer = load_tokenizer(base_model)
    train_events, labels = events_of(train_set), labels_of(train_set).astype(np.float32)
    valid_events, valid_labels = events_of(examples["valid"]), labels_of(examples["valid"])
    model.head.fit_feature_scaling(feature_matrix(train_events))
    pos_weight = torch.tensor((labels == 0).sum() / max(labels.sum(), 1.0))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": profile.encoder_lr},
            {"params": model.head.parameters(), "lr": profile.head_lr},
        ],
        weight_decay=0.01,
    )
    steps = profile.epochs * -(-len(train_set) // profile.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[profile.encoder_lr, profile.head_lr], total_steps=steps, pct_start=0.1
    )
    rng = np.random.default_rng(profile.seed)
    best_auc, best_epoch, best_state, best_logits, history = -1.0, 0, None, None, []
    started = time.perf_counter()
    with tqdm(total=steps, desc=f"train ({profile.name})", unit="batch") as bar:
        for epoch in range(profile.epochs):
            model.train()
            order = rng.permutation(len(train_set))
            for start in range(0, len(order), profile.batch_size):
                rows = order[start : start + profile.batch_size]
                logits = model.logit(*_tensors(model, tokenizer, train_events, rows))
                loss = loss_fn(logits, torch.from_numpy(labels[rows]))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
            valid_logits = predict(model, tokenizer, valid_events, calibrated=False)
            auc = float(roc_auc_score(valid_labels, valid_logits))
            history.append({"epoch": epoch + 1, "valid_roc_auc": round(auc, 4)})
            bar.write(f"epoch {epoch + 1}: valid ROC-AUC {auc:.4f}")
            if auc > best_auc:
                best_auc, best_epoch, best_logits = auc, epoch + 1, valid_logits
                best_state = copy.deepcopy(model.state_dict())
            elif epoch + 1 - best_epoch >= profile.patience:
                break
    train_s = time.perf_counter() - started
    model.load_state_dict(best_state)
    fit_calibration(model, best_logits, valid_labels)

    test_events, test_labels = events_of(examples["test"]), labels_of(examples["test"])
    test_logits = predict(model, tokenizer, test_events, calibrated=False)
    test_probabilities = predict(model, tokenizer, test_events)
    model.save(out_dir)
    summary = {
        "profile": asdict(profile),
        "train_examples": len(train_set),
        "train_positives": int(labels.sum()),
        "train_seconds": round(train_s, 1),
        "epochs": history,
        "best_epoch": best_epoch,
        "best_valid_roc_auc": best_auc,
        "test_examples": len(test_labels),
        "test_positives": int(test_labels.sum()),
        "test_roc_auc": float(roc_auc_score(test_labels, test_probabilities)),
    }
    return TrainResult(model, summary, test_logits, test_probabilities)
