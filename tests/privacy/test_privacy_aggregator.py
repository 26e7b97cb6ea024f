"""secure+dp behind the seam: noised sums, clip counts, the round event, budget enforcement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codream.aggregation import VectorSpec, create_aggregator
from codream.exceptions import PrivacyBudgetExceeded
from codream.privacy import PrivacyEvent
from codream.privacy.aggregator import SecureDPAggregator

SPECS = [VectorSpec(f"dream/{j}", 2048, 1.0) for j in range(3)] + [VectorSpec("soft_labels", 80, 0.5)]
PARTICIPANTS = list(range(6))


def _vectors(rng: np.random.Generator, spec: VectorSpec, scale: float) -> dict[int, np.ndarray]:
    return {c: rng.normal(size=spec.length) * scale for c in PARTICIPANTS}


def test_secure_dp_is_registered_and_sums_with_the_calibrated_noise():
    agg = create_aggregator(
        "secure+dp", noise_multiplier=0.5, sample_rate=0.2, noise_seed=1, rounding_seed=1, min_survivors=4
    )
    assert isinstance(agg, SecureDPAggregator)
    rng = np.random.default_rng(0)
    rnd = agg.open_round(round_index=0, participants=PARTICIPANTS, specs=SPECS)
    for spec in SPECS:
        vectors = _vectors(rng, spec, 1e-3)  # far inside the clip norm: the error is the noise
        result = rnd.sum(spec, vectors)
        error = result.total - sum(vectors.values())
        # z_i = 0.5 * sqrt(4) = 1 per release, calibrated for n_min = 4; all 6 survive, so the noise
        # std is sqrt(6/4) times z_i * clip_norm.
        assert result.count == 6 and result.clipped == 0
        assert error.std() == pytest.approx(math.sqrt(6 / 4) * spec.clip_norm, rel=0.15)
        assert abs(error.mean()) < 5 * error.std() / math.sqrt(spec.length)
    report = rnd.close()
    assert report.extra["dp_noise_multiplier"] == 0.5
    assert report.extra["dp_release_noise_multiplier"] == pytest.approx(1.0)
    assert report.extra["dp_achieved_noise_multiplier"] >= 0.5 * (1 - 1e-9)
    assert report.extra["dp_n_min"] == 4
    assert report.extra["dp_noise_std/dream/0"] == pytest.approx(1.0, rel=1e-3)
    assert 0 < report.extra["dp_wraparound_bound"] < 1e-6
    assert agg.ledger.history == (PrivacyEvent(noise_multiplier=0.5, sample_rate=0.2, steps=1),)


def test_clipped_contributions_are_counted_per_release():
    agg = SecureDPAggregator(noise_multiplier=1.0, noise_seed=2, rounding_seed=2)
    rng = np.random.default_rng(1)
    rnd = agg.open_round(round_index=0, participants=PARTICIPANTS, specs=SPECS[:1])
    vectors = _vectors(rng, SPECS[0], 1e-3)
    vectors[0] = vectors[0] * 1e5  # norm about 4.5, clip norm 1
    vectors[3] = vectors[3] * 1e5
    assert rnd.sum(SPECS[0], vectors).clipped == 2
    report = rnd.close()
    assert report.extra["dp_clipped"] == 2 and report.extra["dp_clipped/dream/0"] == 2
    assert report.extra["dp_clipped_fraction"] == pytest.approx(2 / 6)


def test_each_round_is_one_event_in_the_ledger_whatever_its_number_of_releases(tmp_path):
    agg = SecureDPAggregator(
        noise_multiplier=2.0, sample_rate=0.5, noise_seed=3, rounding_seed=3, ledger_path=tmp_path / "l.json"
    )
    rng = np.random.default_rng(2)
    for r in range(2):
        rnd = agg.open_round(round_index=r, participants=PARTICIPANTS, specs=SPECS)
        for spec in SPECS:
            rnd.sum(spec, _vectors(rng, spec, 0.01))
        rnd.close()
    assert agg.ledger.history == (PrivacyEvent(noise_multiplier=2.0, sample_rate=0.5, steps=2),)
    assert [r.round_index for r in agg.ledger.rounds] == [0, 1]
    assert agg.ledger.rounds[1].details["dp_releases"] == len(SPECS)
    assert (tmp_path / "l.json").exists()


def test_a_round_that_would_exceed_the_budget_is_refused_before_anything_is_released():
    agg = SecureDPAggregator(
        noise_multiplier=1.0, sample_rate=1.0, target_epsilon=3.0, noise_seed=4, rounding_seed=4
    )
    rng = np.random.default_rng(3)
    opened = 0
    with pytest.raises(PrivacyBudgetExceeded, match="over the target 3"):
        for r in range(10):
            rnd = agg.open_round(round_index=r, participants=PARTICIPANTS, specs=SPECS[3:])
            opened += 1
            rnd.sum(SPECS[3], _vectors(rng, SPECS[3], 0.01))
            rnd.close()
    assert len(agg.ledger.rounds) == opened
    assert agg.ledger.spent <= 3.0


def test_the_discrete_gaussian_option_also_reaches_the_target_noise():
    agg = SecureDPAggregator(noise_multiplier=1.0, noise="discrete_gaussian", noise_seed=5, rounding_seed=5)
    rng = np.random.default_rng(4)
    rnd = agg.open_round(round_index=0, participants=PARTICIPANTS, specs=SPECS[:1])
    vectors = _vectors(rng, SPECS[0], 1e-3)
    error = rnd.sum(SPECS[0], vectors).total - sum(vectors.values())
    n_min = rnd.close().extra["dp_n_min"]
    assert error.std() == pytest.approx(math.sqrt(6 / n_min), rel=0.15)
