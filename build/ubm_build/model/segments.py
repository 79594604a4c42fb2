"""User segments: k-means on the head's view of the text embedding, described from data.

The points are the head's own principal components of the embedding (`Head.components`), as
the purchase model reads them: not whitened, so the strong directions lead (standardised, the
faint components' noise left no structure: mean silhouette 0.03 to 0.04 for every k on the
full model). k is chosen by a stated criterion (`choose_k`, `CRITERION`), and each segment is
described from its sessions (`describe`): size, purchase rate, event-type mix, session length,
top categories.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from ubm_build.data import Example
from ubm_build.inputs.behaviour_text import EVENT_TYPES, split_session
from ubm_build.model.network import nearest_centroid

K_RANGE = range(3, 9)
"""k = 2 is left out: a segment and the rest describe no one."""
SEEDS = (0, 1, 2)
MIN_STABILITY = 0.8
"""Smallest mean adjusted Rand index between the seeds' clusterings for a k to be chosen."""
SILHOUETTE_TOLERANCE = 0.01
"""A k whose mean silhouette is this close to the best is as good: the smallest such k wins."""
CRITERION = (
    f"smallest k in {K_RANGE.start}..{K_RANGE.stop - 1} whose mean silhouette (over seeds"
    f" {list(SEEDS)}) is within {SILHOUETTE_TOLERANCE} of the best, among the k whose"
    f" clusterings agree across those seeds (mean adjusted Rand index >= {MIN_STABILITY})"
)
SILHOUETTE_SAMPLE = 2000
TOP_CATEGORIES = 3


@dataclass(frozen=True)
class Candidate:
    """One k as `choose_k` scored it."""

    k: int
    silhouette: float
    """Mean over the seeds."""
    stability: float
    """Mean adjusted Rand index over the pairs of seeds."""


@dataclass(frozen=True)
class Segmentation:
    """The chosen k-means: its centroids in the head's component space."""

    centroids: np.ndarray
    """float32 [k, components]."""
    candidates: tuple[Candidate, ...]

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, components: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's segment (int32) and its Euclidean distance to that centroid (float32),
        computed as the served head computes them (`network.nearest_centroid`)."""
        segment, distance = nearest_centroid(
            torch.from_numpy(components.astype(np.float32)), torch.from_numpy(self.centroids)
        )
        return segment[:, 0].numpy(), distance[:, 0].numpy()


def _cluster(points: np.ndarray, k: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points)


def choose_k(
    points: np.ndarray, k_range: Sequence[int] = K_RANGE, seeds: Sequence[int] = SEEDS
) -> tuple[int, tuple[Candidate, ...]]:
    """The k `CRITERION` states (among all k if none is stable) and every k's scores.

    Raises:
        ValueError: fewer points than the largest k.
    """
    if len(points) <= max(k_range):
        raise ValueError(f"{len(points)} points cannot make {max(k_range)} segments")
    sample = np.random.default_rng(0).permutation(len(points))[:SILHOUETTE_SAMPLE]
    candidates = []
    for k in k_range:
        labels = [_cluster(points, k, seed).labels_ for seed in seeds]
        silhouette = np.mean([silhouette_score(points[sample], lab[sample]) for lab in labels])
        pairs = itertools.combinations(labels, 2)
        stability = np.mean([adjusted_rand_score(a, b) for a, b in pairs]) if len(seeds) > 1 else 1
        candidates.append(Candidate(k, float(silhouette), float(stability)))
    stable = [c for c in candidates if c.stability >= MIN_STABILITY] or candidates
    best = max(c.silhouette for c in stable)
    return min(c.k for c in stable if c.silhouette >= best - SILHOUETTE_TOLERANCE), tuple(
        candidates
    )


def fit(components: np.ndarray, k: int | None = None) -> Segmentation:
    """k-means on `components` with the first seed; k chosen by `choose_k` unless given."""
    points = components.astype(np.float32)
    candidates: tuple[Candidate, ...] = ()
    if k is None:
        k, candidates = choose_k(points)
    model = _cluster(points, k, SEEDS[0])
    return Segmentation(model.cluster_centers_.astype(np.float32), candidates)


@dataclass(frozen=True)
class Profile:
    """One segment, described from its examples."""

    segment: int
    size: int
    share: float
    purchase_rate: float
    event_mix: dict[str, float]
    """Share of each event type among the examples' events (history and session)."""
    median_session_events: float
    top_categories: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def describe(examples: Sequence[Example], segments: np.ndarray, k: int) -> list[Profile]:
    """Each segment's profile; a segment without examples is described as empty."""
    profiles = []
    for segment in range(k):
        members = [ex for ex, s in zip(examples, segments, strict=True) if s == segment]
        types = Counter(e.type for ex in members for e in ex.events)
        total = sum(types.values()) or 1
        sessions = [split_session(ex.events)[1] for ex in members]
        categories = Counter(e.category for session in sessions for e in session)
        profiles.append(
            Profile(
                segment=segment,
                size=len(members),
                share=len(members) / max(len(examples), 1),
                purchase_rate=float(np.mean([ex.label for ex in members])) if members else 0.0,
                event_mix={t: types[t] / total for t in EVENT_TYPES},
                median_session_events=float(np.median([len(s) for s in sessions]))
                if sessions
                else 0.0,
                top_categories=tuple(c for c, _ in categories.most_common(TOP_CATEGORIES)),
            )
        )
    return profiles


def plot(points: np.ndarray, segments: np.ndarray, path: Path) -> Path:
    """A 2-D picture of the segments (the points' first two principal components) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centered = points - points.mean(0)
    _, _, axes = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ axes[:2].T
    figure, ax = plt.subplots(figsize=(6, 5))
    for segment in np.unique(segments):
        rows = segments == segment
        ax.scatter(xy[rows, 0], xy[rows, 1], s=6, alpha=0.6, label=f"segment {segment}")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title("User segments (training window)")
    ax.legend(markerscale=3, fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
