"""Integer noise: samplers against their laws, distributed shares against their target variance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from codream.aggregation import VectorSpec
from codream.exceptions import ConfigError
from codream.privacy import (
    DistributedNoise,
    NoiseKind,
    noise_generator,
    sample_discrete_gaussian,
    sample_skellam,
)
from codream.privacy.analysis import (
    ddg_concentrated_epsilon,
    rounded_l2_sensitivity,
    skellam_gaussian_equivalent,
    skellam_rdp,
    wraparound_probability,
)

N = 200_000


def _chi_square_p(samples: np.ndarray, pmf: dict[int, float]) -> float:
    """Goodness of fit over the integers in `pmf`, with everything else pooled into one tail bin."""
    support = np.array(sorted(pmf))
    probs = np.array([pmf[k] for k in support])
    observed = np.array([(samples == k).sum() for k in support] + [(~np.isin(samples, support)).sum()])
    expected = np.append(probs, max(0.0, 1.0 - probs.sum())) * samples.size
    keep = expected >= 5  # the usual validity condition of the chi-square approximation
    observed, expected = observed[keep], expected[keep]
    expected *= observed.sum() / expected.sum()
    return stats.chisquare(observed, expected).pvalue


def test_skellam_sampler_matches_the_skellam_law():
    variance = 6.0
    x = sample_skellam(noise_generator(7), variance=variance, size=N)
    assert x.dtype == np.int64
    assert abs(x.mean()) < 4 * math.sqrt(variance / N)
    assert x.var() == pytest.approx(variance, rel=0.02)
    law = stats.skellam(variance / 2, variance / 2)
    pmf = {k: float(law.pmf(k)) for k in range(-15, 16)}
    assert _chi_square_p(x, pmf) > 1e-3


def test_discrete_gaussian_sampler_matches_the_discrete_gaussian_law():
    variance = 4.0
    x = sample_discrete_gaussian(noise_generator(11), variance=variance, size=N)
    assert x.dtype == np.int64
    support = np.arange(-60, 61)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * variance))
    weights /= weights.sum()
    true_var = float((weights * support**2).sum())
    assert abs(x.mean()) < 4 * math.sqrt(true_var / N)
    assert x.var() == pytest.approx(true_var, rel=0.02)
    pmf = {int(k): float(w) for k, w in zip(support, weights, strict=True) if abs(k) <= 12}
    assert _chi_square_p(x, pmf) > 1e-3


@pytest.mark.parametrize("variance", [3e11, 5e12], ids=["one-poisson", "sum-of-poissons"])
@pytest.mark.parametrize("sampler", [sample_skellam, sample_discrete_gaussian])
def test_samplers_keep_their_variance_at_the_sizes_secure_aggregation_uses(sampler, variance):
    # Above a Poisson mean of 1e12 the Skellam is drawn as an exact sum of smaller Poissons.
    x = sampler(noise_generator(3), variance=variance, size=50_000)
    assert abs(x.mean()) < 4 * math.sqrt(variance / x.size)
    assert x.var() == pytest.approx(variance, rel=0.04)


def test_a_fixed_seed_reproduces_and_no_seed_draws_from_the_operating_system():
    a = sample_skellam(noise_generator(5), variance=100.0, size=64)
    b = sample_skellam(noise_generator(5), variance=100.0, size=64)
    c = sample_skellam(noise_generator(), variance=100.0, size=64)
    d = sample_skellam(noise_generator(), variance=100.0, size=64)
    assert np.array_equal(a, b)
    assert not np.array_equal(c, d)


@pytest.mark.parametrize("variance", [0.0, -1.0, float("inf"), 2.0**62])
def test_samplers_refuse_a_variance_they_cannot_honour(variance):
    with pytest.raises(ConfigError):
        sample_skellam(noise_generator(0), variance=variance, size=4)


@pytest.mark.parametrize("kind", list(NoiseKind))
def test_the_sum_of_n_min_clients_shares_has_the_target_variance(kind):
    spec = VectorSpec(name="dream/0", length=4096, clip_norm=2.0)
    z, n_min, scale = 1.5, 10, 3000.0
    noise = DistributedNoise(noise_multiplier=z, kind=kind, min_survivors=n_min, seed=21)
    noise.noise_bound(spec=spec, num_clients=16)
    total = sum(noise.sample(spec=spec, scale=scale, length=spec.length, n_min=n_min) for _ in range(n_min))
    sensitivity = rounded_l2_sensitivity(spec.clip_norm * scale, dimension=spec.length)
    target_std = z * sensitivity  # encoded units
    assert total.std() == pytest.approx(target_std, rel=0.04)
    cal = noise.calibrations[spec.name]
    assert cal.shares == n_min and cal.achieved_noise_multiplier >= z * (1 - 1e-9)
    # In float units the noise is z times the clip norm, inflated by sqrt(d) / scale for rounding.
    assert cal.min_total_std == pytest.approx(z * (spec.clip_norm + math.sqrt(spec.length) / scale), rel=1e-3)


def test_colluders_shares_are_not_counted_so_honest_clients_add_more():
    spec = VectorSpec(name="soft_labels", length=640, clip_norm=1.0)
    plain = DistributedNoise(noise_multiplier=2.0, min_survivors=8, seed=0)
    wary = DistributedNoise(noise_multiplier=2.0, min_survivors=8, colluders=3, seed=0)
    a = plain.calibrate(spec=spec, scale=1e4, n_min=8)
    b = wary.calibrate(spec=spec, scale=1e4, n_min=8)
    assert b.shares == 5
    assert b.share_variance == pytest.approx(a.share_variance * 8 / 5)
    with pytest.raises(ConfigError, match="colluders"):
        DistributedNoise(noise_multiplier=2.0, min_survivors=3, colluders=3)


def test_more_survivors_than_n_min_only_add_noise():
    spec = VectorSpec(name="dream/0", length=512, clip_norm=1.0)
    noise = DistributedNoise(noise_multiplier=1.0, min_survivors=4, seed=2)
    cal = noise.calibrate(spec=spec, scale=1e3, n_min=4)
    assert 4 * cal.share_variance >= (cal.l2 * 1.0) ** 2 * (1 - 1e-9)


def test_skellam_gaussian_equivalent_dominates_the_skellam_rdp_at_every_order():
    l2, d = 50.0, 1000
    l1 = min(math.sqrt(d) * l2, l2 * l2)
    for variance in (1e2, 1e4, 1e6):
        z = skellam_gaussian_equivalent(variance=variance, l2=l2, l1=l1)
        assert z < math.sqrt(variance) / l2
        for alpha in (1.0, 1.5, 2, 8, 64, 1024):
            assert alpha / (2 * z * z) >= skellam_rdp(alpha, variance=variance, l2=l2, l1=l1) * (1 - 1e-12)


def test_discrete_gaussian_calibration_meets_the_target_after_the_sum_correction():
    spec = VectorSpec(name="v", length=100, clip_norm=1.0)
    noise = DistributedNoise(noise_multiplier=1.0, kind="discrete_gaussian", min_survivors=100, seed=0)
    cal = noise.calibrate(spec=spec, scale=2.0, n_min=100)  # tiny scale: per-share s^2 near 1, tau matters
    eps = ddg_concentrated_epsilon(share_variance=cal.share_variance, shares=100, l2=cal.l2, dimension=100)
    assert 1 / eps >= 1.0 * (1 - 1e-9)
    assert cal.share_variance * 100 > 1.0001 * cal.l2**2  # more than the continuous Gaussian would need


def test_stochastic_rounding_never_exceeds_the_inflated_sensitivity():
    rng = np.random.default_rng(0)
    d, clip, scale = 300, 1.0, 20.0
    bound = rounded_l2_sensitivity(clip * scale, dimension=d)
    for _ in range(200):
        v = rng.normal(size=d)
        v *= clip / np.linalg.norm(v)
        scaled = v * scale
        floor = np.floor(scaled)
        rounded = floor + (rng.random(d) < scaled - floor)
        assert np.linalg.norm(rounded) <= bound


def test_noise_headroom_keeps_the_wraparound_probability_under_target_and_it_is_reported():
    spec = VectorSpec(name="dream/3", length=50_176, clip_norm=1.0)
    noise = DistributedNoise(noise_multiplier=4.0, min_survivors=15, seed=1, wrap_target=1e-9)
    bound = noise.noise_bound(spec=spec, num_clients=20)
    scale = (2**23 - 1) / (20 * spec.clip_norm + bound)
    noise.sample(spec=spec, scale=scale, length=spec.length, n_min=15)
    assert 0 < noise.wraparound[spec.name] <= 1e-9
    # Half the headroom is far from enough, and the bound says so.
    cal = noise.calibrations[spec.name]
    half = wraparound_probability(
        headroom=bound * scale / 2, variance=20 * cal.share_variance, dimension=spec.length, skellam=True
    )
    assert half > 1e-3


def test_sampling_needs_a_noise_multiplier_and_a_matching_length():
    spec = VectorSpec(name="v", length=10, clip_norm=1.0)
    noise = DistributedNoise(seed=0)
    with pytest.raises(ConfigError, match="noise multiplier"):
        noise.sample(spec=spec, scale=10.0, length=10, n_min=2)
    noise.set_noise_multiplier(1.0)
    with pytest.raises(ConfigError, match="noise coordinates"):
        noise.sample(spec=spec, scale=10.0, length=11, n_min=2)
    with pytest.raises(ConfigError, match="unknown noise kind"):
        DistributedNoise(kind="laplace")
