"""Segments (`ubm_build.model.segments`): k chosen by the stated criterion on data whose
segments are known, assignments equal to k-means', profiles computed from the examples."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.cluster import KMeans

from ubm.records import Event
from ubm_build import cli
from ubm_build.data import Example
from ubm_build.model import segments


def blobs(k: int = 3, per_blob: int = 120, dims: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, size=(k, dims))
    return np.concatenate([c + rng.normal(0, 1, size=(per_blob, dims)) for c in centers])


def test_k_is_the_most_separated_stable_one():
    points = blobs(k=4)
    k, candidates = segments.choose_k(points, k_range=range(3, 7))
    assert k == 4
    four = next(c for c in candidates if c.k == 4)
    assert four.stability == pytest.approx(1.0)
    assert four.silhouette == max(c.silhouette for c in candidates)


def test_of_nearly_as_good_ks_the_smallest_wins():
    # No structure: every k's silhouette is about the same, so the first stable one is chosen.
    points = np.random.default_rng(1).normal(size=(600, 2))
    k, candidates = segments.choose_k(points, k_range=range(3, 6))
    best = max(c.silhouette for c in candidates if c.stability >= segments.MIN_STABILITY)
    near = [c.k for c in candidates if c.silhouette >= best - segments.SILHOUETTE_TOLERANCE]
    assert k == min(near)


def test_too_few_points_for_the_largest_k_are_refused():
    with pytest.raises(ValueError, match="cannot make 8 segments"):
        segments.choose_k(np.zeros((5, 2)))  # k up to 8


def test_assignments_are_k_means_own_with_the_distance_to_the_centroid():
    components = blobs(k=4) * 3 + 5
    fitted = segments.fit(components, k=4)
    segment, distance = fitted.assign(components)
    reference = KMeans(n_clusters=4, n_init=10, random_state=segments.SEEDS[0]).fit(components)
    assert (segment == reference.labels_).all()
    assert segment.dtype == np.int32 and distance.dtype == np.float32
    expected = np.linalg.norm(components - fitted.centroids[segment], axis=1)
    np.testing.assert_allclose(distance, expected, rtol=1e-5)


def example(types: str, label: int, category: str, start: int = 1_512_000_000) -> Example:
    events = tuple(
        Event(ts=start + 60 * i, type=t, item=f"i{i}", category=category)
        for i, t in enumerate(types.split())
    )
    return Example("1", events, label, "train", start + 3600)


def test_profiles_describe_each_segment_from_its_examples():
    examples = [
        example("view view cart", 1, "c1"),
        example("view view", 0, "c1"),
        example("fav", 0, "c2"),
    ]
    profiles = segments.describe(examples, np.array([0, 0, 1]), k=3)
    first, second, empty = profiles
    assert (first.size, first.share, first.purchase_rate) == (2, pytest.approx(2 / 3), 0.5)
    assert first.event_mix["view"] == pytest.approx(0.8) and first.event_mix["cart"] == 0.2
    assert first.median_session_events == 2.5 and first.top_categories == ("c1",)
    assert second.event_mix["fav"] == 1.0 and second.top_categories == ("c2",)
    assert (empty.size, empty.purchase_rate, empty.top_categories) == (0, 0.0, ())


def test_the_picture_is_written(tmp_path):
    points = blobs(k=2, per_blob=30)
    path = segments.plot(points, np.repeat([0, 1], 30), tmp_path / "segments.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_says_when_there_is_no_trained_model(tmp_path):
    result = CliRunner().invoke(cli.main, ["segments", "--model-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no trained model" in result.output and "Traceback" not in result.output
