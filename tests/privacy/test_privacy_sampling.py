"""The one-step Skellam sampler against the Skellam law, and the noise's randomness against the OS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import ive

from codream.aggregation import VectorSpec
from codream.exceptions import ConfigError
from codream.privacy import DistributedNoise, sampling
from codream.privacy.sampling import MAX_TABLE_VARIANCE, NoiseStream, sample_skellam_table

N = 100_000


def _binned_chi_square_p(samples: np.ndarray, variance: float, bins: int = 40) -> float:
    """Goodness of fit to Sk(v/2, v/2) over `bins` integer ranges across +-6 sd, tails pooled."""
    mu, sd = variance / 2, math.sqrt(variance)
    lo, hi = math.floor(-6 * sd) - 1, math.ceil(6 * sd) + 1
    edges = np.unique(np.linspace(lo, hi, bins + 1).round())
    ks = np.arange(lo, hi + 1)
    pmf = stats.skellam.pmf(ks, mu, mu)
    inside = np.array([pmf[(ks >= a) & (ks < b)].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    probs = np.concatenate([[pmf[ks < edges[0]].sum() + stats.skellam.cdf(lo - 1, mu, mu)], inside])
    probs = np.append(probs, max(0.0, 1.0 - probs.sum()))
    observed = np.histogram(samples, bins=np.concatenate([[-np.inf], edges - 0.5, [np.inf]]))[0]
    keep = probs * samples.size >= 5
    expected = probs[keep] / probs[keep].sum() * observed[keep].sum()
    return float(stats.chisquare(observed[keep], expected).pvalue)


@pytest.mark.parametrize(
    ("variance", "span"),
    [(0.5, 7.0), (6.0, 7.0), (6.0, 0.8), (60.0, 7.0), (60.0, 0.6), (3e4, 7.0), (3e4, 0.8), (2e6, 7.0)],
    ids=["tiny", "small", "small-tail", "moderate", "moderate-tail", "debye", "debye-tail", "wide-buckets"],
)
def test_the_table_sampler_draws_the_skellam_law(variance, span):
    # A small span moves most of the mass into the geometric tail, so the tail's exact test is exercised
    # too; 3e4 and up take log p from the Debye expansion, 2e6 also has buckets 4 integers wide.
    x = sample_skellam_table(NoiseStream(11), variance=variance, size=N, span=span)
    assert x.dtype == np.int64
    assert abs(x.mean()) < 4 * math.sqrt(variance / N)
    assert x.var() == pytest.approx(variance, rel=0.03)
    assert _binned_chi_square_p(x, variance) > 1e-3
    if variance < 100:  # every integer its own cell
        mu = variance / 2
        support = np.arange(-25, 26)
        pmf = stats.skellam.pmf(support, mu, mu)
        observed = np.array([(x == k).sum() for k in support])
        keep = pmf * N >= 5
        assert (
            stats.chisquare(observed[keep], pmf[keep] / pmf[keep].sum() * observed[keep].sum()).pvalue > 1e-3
        )


@pytest.mark.parametrize("a", [2e4, 2e5, 2e6])
def test_the_debye_log_pmf_agrees_with_the_bessel_function(a):
    sd = math.sqrt(a)
    m = np.unique(np.concatenate([np.arange(30), np.linspace(0, 8 * sd, 300).round()]))
    np.testing.assert_allclose(sampling._log_pmf(m, a / 2), np.log(ive(m, a)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("variance", [2e10, 2.5e11])
def test_at_the_sizes_secure_aggregation_uses_it_matches_the_difference_of_two_poissons(variance):
    x = sample_skellam_table(NoiseStream(5), variance=variance, size=N)
    reference = np.random.default_rng(5)
    y = reference.poisson(variance / 2, N) - reference.poisson(variance / 2, N)
    assert stats.ks_2samp(x, y).pvalue > 1e-3
    assert x.var() == pytest.approx(variance, rel=0.03)
    assert np.mean((x / math.sqrt(variance)) ** 4) == pytest.approx(3.0, abs=0.1)


def test_a_variance_above_one_table_is_drawn_as_an_exact_sum():
    variance = 3 * MAX_TABLE_VARIANCE
    x = sample_skellam_table(NoiseStream(2), variance=variance, size=20_000)
    assert x.var() == pytest.approx(variance, rel=0.05)


def test_production_noise_is_keyed_from_the_os_and_a_seed_only_in_tests(monkeypatch):
    calls = []
    real = sampling.os.urandom

    def recording(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(sampling.os, "urandom", recording)
    a, b = NoiseStream().words(8), NoiseStream().words(8)
    assert calls == [32, 32] and not np.array_equal(a, b)
    np.testing.assert_array_equal(NoiseStream(3).words(8), NoiseStream(3).words(8))
    assert not np.array_equal(NoiseStream(3).words(8), NoiseStream(4).words(8))
    spec = VectorSpec(name="v", length=256, clip_norm=1.0)
    shares = [
        DistributedNoise(noise_multiplier=1.0, min_survivors=4).sample(
            spec=spec, scale=1e4, length=256, n_min=4
        )
        for _ in range(2)
    ]
    assert not np.array_equal(shares[0], shares[1]) and len(calls) == 4
    for seed in (-1, 1.5, True):
        with pytest.raises(ConfigError):
            NoiseStream(seed)  # type: ignore[arg-type]


def test_the_uniforms_lie_where_they_say():
    stream = NoiseStream(0)
    u, v = stream.uniforms(50_000), stream.open_uniforms(50_000)
    assert u.min() >= 0.0 and u.max() < 1.0 and v.min() > 0.0 and v.max() <= 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(v.mean() - 0.5) < 0.01


def test_the_sampler_refuses_a_variance_or_size_it_cannot_honour():
    for variance in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            sample_skellam_table(NoiseStream(0), variance=variance, size=3)
    with pytest.raises(ConfigError):
        sample_skellam_table(NoiseStream(0), variance=1.0, size=-1)
