"""Clipping helpers: every vector bounded, every clip counted, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from codream.exceptions import ConfigError
from codream.privacy import ClipCounter, ClipStats, clip_contributions


def test_long_vectors_are_scaled_to_the_bound_short_ones_untouched_and_the_clips_counted():
    vectors = {0: np.array([3.0, 4.0]), 1: np.array([0.3, 0.4]), 2: np.array([0.0, -10.0])}
    clipped, stats, norms = clip_contributions(vectors, 1.0)
    assert stats == ClipStats(clipped=2, total=3) and stats.fraction == pytest.approx(2 / 3)
    assert norms == {0: 5.0, 1: 0.5, 2: 10.0}
    np.testing.assert_allclose(clipped[0], [0.6, 0.8])
    np.testing.assert_array_equal(clipped[1], vectors[1])
    assert all(np.linalg.norm(v) <= 1.0 + 1e-12 for v in clipped.values())


def test_clip_counter_sums_counts_per_release_and_overall():
    counter = ClipCounter()
    counter.add("dream/0", ClipStats(1, 4))
    counter.add("dream/0", ClipStats(2, 4))
    counter.add("soft_labels", ClipStats(0, 4))
    assert counter.counts["dream/0"] == ClipStats(3, 8)
    assert counter.total == ClipStats(3, 12)
    assert ClipStats(0, 0).fraction == 0.0


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bound_that_is_not_finite_and_positive_is_refused(bound):
    with pytest.raises(ConfigError, match="clip bound"):
        clip_contributions({0: np.ones(3)}, bound)


def test_a_vector_holding_nan_is_refused_naming_the_client():
    with pytest.raises(ConfigError, match="client 7"):
        clip_contributions({7: np.array([1.0, np.nan])}, 1.0)
