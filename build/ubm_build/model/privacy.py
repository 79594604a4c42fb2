"""Differentially private training of the head: DP-SGD (Opacus) with the *user* as the unit.

What ε covers. `fit_private` fits the head's linear layer so that the trained weights are
(ε, δ)-differentially private with respect to adding or removing *all* of one training user's
sessions. It works as follows:

* The dataset that Opacus Poisson-samples is indexed by user (`UserSessions`: its length is the
  number of training users). Each step includes every user independently with probability
  ``sample_rate``, and a sampled user is one item of the step: by default (``sessions="all"``)
  their gradient is the mean of their sessions' gradients (`user_loss`); with ``"one"``, the
  gradient of one of their sessions drawn at random. Either way one user's data moves exactly
  one per-sample gradient of a step in which they are sampled, and none of the others; it is
  clipped to L2 norm ``max_grad_norm`` before Gaussian noise of standard deviation
  ``noise_multiplier * max_grad_norm`` is added to the sum. This is the subsampled Gaussian
  mechanism on users, so the accountant's (ε, δ) is per user, whatever their session count.
  (On the valid window, ``all`` beat ``one`` clearly at every ε: averaging first keeps more
  of a user's signal inside the clipping norm.)
* The accountant is Rényi DP (``rdp``, Opacus' default); the noise multiplier is the smallest
  that `opacus.accountants.utils.get_noise_multiplier` finds for the target ε over the planned
  steps, and the spent ε is read back from the accountant after training.
* δ defaults to ``1 / users**1.1`` (`default_delta`): below ``1 / users``, as it must be for a
  guarantee that does not allow publishing one user's data outright.

Everything else the head holds is data-independent, so nothing learnt from users escapes ε:

* feature scaling: a fixed affine map of each feature's a-priori range (`FEATURE_RANGES`, from
  the features' definitions, not the data) onto [-1, 1] instead of the training mean and std;
* projection: a seeded random orthonormal projection of the embedding (scaled by
  ``sqrt(hidden / components)``, centre 0) instead of PCA;
* calibration: none (identity, no Platt scaling on the valid window); probabilities are
  uncalibrated, ROC-AUC is unaffected.

What ε does not cover: the served snapshot's item and category counts (aggregates over every
user's events, read as features and shipped with the model), the encoder (public, not trained
on user data: DP is refused for profiles with masked-LM pretraining), hyperparameters chosen on
the valid window, and the build's reports (baselines, ablation, segments are not private).
Opacus' noise comes from torch's generator, not a cryptographically secure one.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ubm_build.data.taobao import HISTORY_CAP
from ubm_build.inputs.behaviour_text import SESSION_GAP_S
from ubm_build.inputs.model_inputs import FEATURE_NAMES
from ubm_build.inputs.snapshot import UNSEEN_AGE_S
from ubm_build.model.network import Head

ACCOUNTANT = "rdp"
DELTA_EXPONENT = 1.1
"""δ = 1 / users ** DELTA_EXPONENT unless given."""
SESSION_MODES = {
    "all": "mean over all the user's sessions, clipped as one",
    "one": "one random session of the user",
}
_DAY_S = 86400

_UNIT = (0.0, 1.0)
_SESSION_COUNT = (0.0, math.log1p(100))
"""A session of up to 100 events."""
_HISTORY_COUNT = (0.0, math.log1p(HISTORY_CAP))
_SNAPSHOT_COUNT = (0.0, math.log1p(10_000))
_GROUPS: dict[tuple[float, float], tuple[str, ...]] = {
    _UNIT: (
        "last_is_cart",
        "last_is_fav",
        "last_category_session_share",
        "last_item_intent_before",
        "last_item_bought_in_history",
        "last_category_bought_in_history",
        "last_item_buy_rate",
        "last_item_unseen",
        "last_category_buy_rate",
        "last_category_unseen",
        "session_items_buy_rate_max",
        "session_items_unseen_share",
        "session_categories_buy_rate_max",
    ),
    (-1.0, 1.0): ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos"),
    _SESSION_COUNT: (
        "session_events",
        "session_view",
        "session_cart",
        "session_fav",
        "session_buy",
        "session_distinct_items",
        "session_distinct_categories",
        "last_item_session_events",
        "session_items_seen_in_history",
        "intent_items_revisited",
    ),
    _HISTORY_COUNT: (
        "history_events",
        "history_view",
        "history_cart",
        "history_fav",
        "history_buy",
    ),
    _SNAPSHOT_COUNT: (
        "last_item_events",
        "last_item_buys",
        "last_item_users",
        "last_category_events",
        "last_category_users",
        "session_items_events_mean",
        "session_items_buys_max",
    ),
    (0.0, math.log1p(SESSION_GAP_S)): ("session_mean_gap_s", "last_gap_s"),
    (0.0, math.log1p(_DAY_S)): ("session_duration_s",),
    (0.0, math.log1p(UNSEEN_AGE_S)): ("since_history_s", "last_item_age_s"),
}
FEATURE_RANGES: dict[str, tuple[float, float]] = {
    name: bounds for bounds, names in _GROUPS.items() for name in names
}
"""A-priori (low, high) of each feature (after its ``log1p``), from the features' definitions:
flags, rates and shares in [0, 1]; clock in [-1, 1]; session counts up to 100 events, history
counts up to `HISTORY_CAP`, snapshot counts up to 10,000, gaps up to `SESSION_GAP_S`, a session
up to a day, ages up to `UNSEEN_AGE_S`. Values outside stay linear (the served head is affine)."""
if set(FEATURE_RANGES) != set(FEATURE_NAMES):
    raise ImportError("privacy.FEATURE_RANGES does not match inputs.model_inputs.FEATURE_NAMES")


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings of the head's linear layer.

    The defaults were chosen on the valid window (never the test window) of the full profile:
    mean valid ROC-AUC over 3 seeds at ε = 1, 3, 8, over expected users per step 64-512,
    10-300 epochs, clip 0.1-3, Adam or SGD (momentum 0.9), learning rates 0.003-3, and a user's
    gradient from all or one of their sessions.
    """

    epsilon: float
    delta: float | None = None
    """None: `default_delta` of the number of training users."""
    max_grad_norm: float = 0.3
    """L2 clipping bound of each user's per-step gradient."""
    expected_batch_users: int = 256
    """Users per step in expectation: sample rate = 1 / ceil(users / this)."""
    epochs: int = 100
    """Passes over the users (steps = epochs / sample rate)."""
    learning_rate: float = 0.03
    optimizer: str = "adam"
    """``adam`` or ``sgd`` (momentum 0.9): either only post-processes the noisy gradients."""
    sessions: str = "all"
    """A sampled user's gradient: the mean over ``all`` their sessions, or ``one`` drawn at
    random (`SESSION_MODES`)."""
    seed: int = 0
    """Seeds the random projection, the session draws, Poisson sampling and the noise."""


def default_delta(users: int) -> float:
    """``1 / users ** DELTA_EXPONENT``: below 1 / users."""
    return 1.0 / users**DELTA_EXPONENT


@functools.lru_cache(maxsize=64)
def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (Opacus' search, `ACCOUNTANT`) that keeps `steps` steps of
    Poisson sampling at `sample_rate` within (epsilon, delta)."""
    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=ACCOUNTANT,
        )
    )


def check_profile(pretrain_epochs: int, epsilon: float | None, delta: float | None) -> None:
    """Refuse settings under which DP training would promise more than it gives.

    Raises:
        ValueError: DP with masked-LM pretraining (not private), ε <= 0, δ outside (0, 1), or
            δ without ε.
    """
    if epsilon is None:
        if delta is not None:
            raise ValueError("dp_delta needs dp_epsilon")
        return
    if pretrain_epochs > 0:
        raise ValueError(
            "differentially private training needs pretrain_epochs=0: masked-LM pretraining on"
            " the train window's texts is not private"
        )
    if not epsilon > 0:
        raise ValueError(f"dp_epsilon must be > 0, not {epsilon}")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"dp_delta must be in (0, 1), not {delta}")


def fixed_feature_scaling(names: Sequence[str] = FEATURE_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half-width) of each feature's `FEATURE_RANGES`: (x - centre) / half-width maps
    the a-priori range onto [-1, 1]."""
    bounds = np.array([FEATURE_RANGES[name] for name in names], dtype=np.float64).reshape(-1, 2)
    return (bounds.mean(1), (bounds[:, 1] - bounds[:, 0]) / 2)


def random_projection(hidden_size: int, components: int, seed: int) -> np.ndarray:
    """[hidden, components] orthonormal columns from a seeded Gaussian (QR), times
    ``sqrt(hidden / components)`` so an isotropic vector keeps its expected squared norm."""
    gaussian = np.random.default_rng(seed).standard_normal((hidden_size, components))
    q, r = np.linalg.qr(gaussian)
    q *= np.sign(np.diag(r))  # unique: the Haar-distributed orthonormal matrix
    return q * math.sqrt(hidden_size / max(components, 1))


def set_data_independent_transforms(
    head: Head, seed: int, names: Sequence[str] = FEATURE_NAMES
) -> None:
    """Fixed feature scaling, seeded random projection (centre 0) and identity calibration."""
    centre, half_width = fixed_feature_scaling(names)
    hidden, components = head.projection.shape
    head.feature_mean.copy_(torch.from_numpy(centre))
    head.feature_scale.copy_(torch.from_numpy(half_width))
    head.embedding_mean.zero_()
    head.projection.copy_(torch.from_numpy(random_projection(hidden, components, seed)))
    head.calibration_scale.fill_(1.0)
    head.calibration_bias.fill_(0.0)


class UserSessions(Dataset):
    """One item per user, so that Poisson sampling over this dataset samples users.

    Item ``u`` is user ``u``'s sessions as (inputs [S, d], labels [S], mask [S], ``u``): with
    ``sessions="all"`` every session of theirs (padded to the most any user has, mask 0 on the
    padding); with ``"one"`` one of them drawn at random on every access (S = 1). Either way,
    an item holds only that user's sessions, and a user is at most one item of a step.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        users: Sequence[str],
        *,
        sessions: str = "all",
        seed: int = 0,
    ) -> None:
        if sessions not in SESSION_MODES:
            raise ValueError(f"sessions must be one of {SESSION_MODES}, not {sessions!r}")
        self.inputs = torch.as_tensor(inputs, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.user_ids, user_of_row = np.unique(np.asarray(users, dtype=str), return_inverse=True)
        order = np.argsort(user_of_row, kind="stable")
        starts = np.searchsorted(user_of_row[order], np.arange(len(self.user_ids) + 1))
        self.rows = [order[starts[u] : starts[u + 1]] for u in range(len(self.user_ids))]
        """Session rows of each user."""
        self.sessions = sessions
        self.width = 1 if sessions == "one" else max(map(len, self.rows))
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, user: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        rows = self.rows[user]
        if self.sessions == "one":
            rows = rows[[self.rng.integers(len(rows))]]
        inputs = torch.zeros(self.width, self.inputs.shape[1])
        labels, mask = torch.zeros(self.width), torch.zeros(self.width)
        index = torch.from_numpy(rows)
        inputs[: len(rows)], labels[: len(rows)] = self.inputs[index], self.labels[index]
        mask[: len(rows)] = 1.0
        return inputs, labels, mask, user


def user_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over users of each user's mean log loss over their (unmasked) sessions: a sampled
    user's gradient is the mean of their sessions' gradients, clipped as one."""
    per_session = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return ((per_session * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def fit_private(
    head: Head,
    embeddings: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    users: Sequence[str],
    config: DPConfig,
) -> dict:
    """Set `head`'s data-independent transforms and fit its linear layer by DP-SGD, one
    clipped gradient per sampled user per step.

    Returns:
        The privacy record: ε (target and spent), δ, noise multiplier, clipping norm, sample
        rate, epochs, steps, accountant, users and sessions.
    """
    set_data_independent_transforms(head, config.seed)
    with torch.no_grad():
        x = head.inputs(torch.from_numpy(embeddings), torch.from_numpy(features)).numpy()
    dataset = UserSessions(x, labels, users, sessions=config.sessions, seed=config.seed)
    n_users = len(dataset)
    delta = config.delta if config.delta is not None else default_delta(n_users)
    batch = max(1, min(config.expected_batch_users, n_users))
    torch.manual_seed(config.seed)  # Poisson sampling and noise come from torch's generator
    linear = nn.Linear(x.shape[1], 1)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(linear.parameters(), lr=config.learning_rate)
    else:
        optimizer = torch.optim.SGD(linear.parameters(), lr=config.learning_rate, momentum=0.9)
    users_loader = DataLoader(dataset, batch_size=batch)
    # Opacus samples each user with probability 1 / len(users_loader) for int(len) steps an
    # epoch and accounts at 1 / steps per epoch (>= the sampling rate): plan with the same.
    steps_per_epoch = int(1 / (1 / len(users_loader)))
    sample_rate = 1 / steps_per_epoch
    sigma = noise_multiplier(config.epsilon, delta, sample_rate, config.epochs * steps_per_epoch)
    steps = 0
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off (stated in the docstring) and, on an empty
        # Poisson batch, of a NaN loss; that step still adds its noise (zero gradient sum).
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant=ACCOUNTANT)
        module, optimizer, loader = engine.make_private(
            module=linear,
            optimizer=optimizer,
            data_loader=users_loader,
            noise_multiplier=sigma,
            max_grad_norm=config.max_grad_norm,
        )
        module.train()
        for _ in range(config.epochs):
            for inputs, targets, mask, _users in loader:
                optimizer.zero_grad()
                user_loss(module(inputs).squeeze(-1), targets, mask).backward()
                optimizer.step()
                steps += 1
    head.linear.weight.data.copy_(linear.weight.data)
    head.linear.bias.data.copy_(linear.bias.data)
    return {
        "epsilon": config.epsilon,
        "epsilon_spent": float(engine.get_epsilon(delta)),
        "delta": delta,
        "noise_multiplier": sigma,
        "max_grad_norm": config.max_grad_norm,
        "sample_rate": sample_rate,
        "expected_batch_users": batch,
        "epochs": config.epochs,
        "steps": steps,
        "accountant": ACCOUNTANT,
        "users": n_users,
        "sessions": len(labels),
        "unit": "user",
        "user_gradient": SESSION_MODES[config.sessions],
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "feature_scaling": "fixed a-priori ranges -> [-1, 1] (privacy.FEATURE_RANGES)",
        "projection": "seeded random orthonormal (no PCA)",
        "calibration": "none: probabilities uncalibrated",
    }
