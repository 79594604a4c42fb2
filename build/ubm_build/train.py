"""Fine-tune the encoder and head on the train window, calibrate on validation, score test."""

from __future__ import annotations

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

from ubm_build.behaviour_text import behaviour_text, tokenize
from ubm_build.data import Example
from ubm_build.model import BehaviourModel, load_tokenizer


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
    seed: int = 0


PROFILES = {
    "quick": Profile("quick", max_train_examples=2000, epochs=1, max_length=64),
    "full": Profile("full", max_train_examples=None, epochs=3, max_length=128),
}


def subsample(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    """All positives and as many random negatives as fit in `limit`, in time order."""
    if limit is None or len(examples) <= limit:
        return list(examples)
    positives = [ex for ex in examples if ex.label]
    negatives = [ex for ex in examples if not ex.label]
    kept = positives + random.Random(seed).sample(negatives, max(0, limit - len(positives)))
    return sorted(kept, key=lambda ex: ex.prediction_ts)


def texts_of(examples: Sequence[Example]) -> list[str]:
    return [behaviour_text(ex.events) for ex in examples]


@torch.inference_mode()
def predict(
    model: BehaviourModel,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    calibrated: bool = True,
) -> np.ndarray:
    """Purchase probabilities (calibrated) or raw logits (``calibrated=False``) for `texts`."""
    model.eval()
    order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
    out = np.empty(len(texts), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = tokenize(tokenizer, [texts[i] for i in rows], model.spec.max_length)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        if calibrated:
            values = model.head(model.encoder(ids_t, mask_t)).squeeze(-1)
        else:
            values = model.logit(ids_t, mask_t)
        out[rows] = values.numpy()
    return out


def fit_calibration(model: BehaviourModel, logits: np.ndarray, labels: np.ndarray) -> None:
    """Platt scaling on held-out logits, stored in the head."""
    platt = LogisticRegression(C=1e6).fit(logits.reshape(-1, 1), labels)
    model.head.calibration_scale.fill_(float(platt.coef_[0, 0]))
    model.head.calibration_bias.fill_(float(platt.intercept_[0]))


def train(
    profile: Profile, examples: dict[str, list[Example]], base_model: Path, out_dir: Path
) -> dict:
    """Train, calibrate, save to `out_dir`, and return the run's summary (AUCs, counts, times)."""
    torch.manual_seed(profile.seed)
    train_set = subsample(examples["train"], profile.max_train_examples, profile.seed)
    model = BehaviourModel.from_base(base_model, profile.max_length, seed=profile.seed)
    tokenizer = load_tokenizer(base_model)
    labels = np.array([ex.label for ex in train_set], dtype=np.float32)
    pos_weight = torch.tensor((labels == 0).sum() / max(labels.sum(), 1.0))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": profile.encoder_lr},
            {"params": model.head.parameters(), "lr": profile.head_lr},
        ],
        weight_decay=0.01,
    )
    texts = texts_of(train_set)
    steps = profile.epochs * -(-len(texts) // profile.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[profile.encoder_lr, profile.head_lr], total_steps=steps, pct_start=0.1
    )
    rng = np.random.default_rng(profile.seed)
    started = time.perf_counter()
    with tqdm(total=steps, desc=f"train ({profile.name})", unit="batch") as bar:
        for _epoch in range(profile.epochs):
            model.train()
            order = rng.permutation(len(texts))
            for start in range(0, len(order), profile.batch_size):
                rows = order[start : start + profile.batch_size]
                ids, mask = tokenize(tokenizer, [texts[i] for i in rows], profile.max_length)
                logits = model.logit(torch.from_numpy(ids), torch.from_numpy(mask))
                loss = loss_fn(logits, torch.from_numpy(labels[rows]))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.perf_counter() - started

    valid_labels = np.array([ex.label for ex in examples["valid"]])
    fit_calibration(
        model,
        predict(model, tokenizer, texts_of(examples["valid"]), calibrated=False),
        valid_labels,
    )
    test_labels = np.array([ex.label for ex in examples["test"]])
    test_probs = predict(model, tokenizer, texts_of(examples["test"]))
    model.save(out_dir)
    return {
        "profile": asdict(profile),
        "train_examples": len(train_set),
        "train_positives": int(labels.sum()),
        "train_seconds": round(train_s, 1),
        "test_examples": len(test_labels),
        "test_positives": int(test_labels.sum()),
        "test_roc_auc": float(roc_auc_score(test_labels, test_probs)),
    }
