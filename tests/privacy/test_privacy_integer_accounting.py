"""Integer noise (Skellam, distributed discrete Gaussian): the general subsampling bound, and no PRV.

The independent computation below evaluates Zhu & Wang 2019, Theorem 5 with mpmath at 60 digits, sums
the terms directly (no log-sum-exp) and converts with Balle et al. 2020, Theorem 21 written out here.
"""

from __future__ import annotations

import math

import mpmath
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from codream.exceptions import ConfigError
from codream.privacy import PrivacyEvent, RDPAccountant, create_accountant, epsilon_for, plan_noise
from codream.privacy.accountant import Mechanism
from codream.privacy.analysis.subsampling import poisson_subsampled_rdp
from codream.privacy.calibration import ClientLevelSchedule

DELTA = 1e-5
ORDERS = list(range(2, 65))


def _zhu_wang(a: int, q: float, z: float) -> mpmath.mpf:
    """Theorem 5 for a mechanism with RDP l / (2 z^2), in 60-digit arithmetic."""
    with mpmath.workdps(60):
        q, z = mpmath.mpf(q), mpmath.mpf(z)

        def eps(order: int) -> mpmath.mpf:
            return mpmath.mpf(order) / (2 * z * z)

        total = (1 - q) ** (a - 1) * (a * q - q + 1)
        total += mpmath.binomial(a, 2) * q**2 * (1 - q) ** (a - 2) * mpmath.exp(eps(2))
        for k in range(3, a + 1):
            total += 3 * mpmath.binomial(a, k) * (1 - q) ** (a - k) * q**k * mpmath.exp((k - 1) * eps(k))
        return min(mpmath.log(total) / (a - 1), eps(a))


def _independent_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    best = mpmath.inf
    with mpmath.workdps(60):
        for a in ORDERS:
            rdp = steps * _zhu_wang(a, q, z)
            eps = rdp + mpmath.log((a - 1) / mpmath.mpf(a)) - (mpmath.log(delta) + mpmath.log(a)) / (a - 1)
            best = min(best, eps)
    return float(best)


@pytest.mark.parametrize("order", [2, 3, 7, 32, 64])
@pytest.mark.parametrize("q,z", [(0.01, 1.0), (0.1, 0.8), (0.3, 2.5)])
def test_the_general_bound_matches_an_independent_high_precision_evaluation(order, q, z):
    ours = poisson_subsampled_rdp(order, sample_rate=q, rdp=lambda a: a / (2 * z * z))
    assert ours == pytest.approx(float(_zhu_wang(order, q, z)), rel=1e-10)


@pytest.mark.parametrize("q,z", [(0.01, 1.0), (0.1, 0.8), (0.05, 3.0)])
def test_the_general_bound_is_never_below_the_tight_subsampled_gaussian(q, z):
    tight = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=ORDERS)
    general = [poisson_subsampled_rdp(a, sample_rate=q, rdp=lambda a: a / (2 * z * z)) for a in ORDERS]
    assert all(g >= t * (1 - 1e-12) for g, t in zip(general, tight, strict=True))
    assert any(g > 1.05 * t for g, t in zip(general, tight, strict=True))  # and strictly looser somewhere


@pytest.mark.parametrize("z,q,steps", [(1.0, 0.1, 100), (0.7, 0.02, 500), (2.0, 0.3, 40)])
def test_sampled_integer_noise_is_accounted_with_the_general_bound(z, q, steps):
    acc = RDPAccountant(orders=ORDERS)
    acc.add(PrivacyEvent(noise_multiplier=z, sample_rate=q, steps=steps, mechanism=Mechanism.INTEGER))
    assert acc.get_epsilon(delta=DELTA) == pytest.approx(_independent_epsilon(z, q, steps, DELTA), rel=1e-9)


def test_sampled_integer_noise_costs_more_than_the_gaussian_analysis_claims():
    # Population 1000, cohort 100, 100 rounds: z = 0.9941 meets 7.99 by the Gaussian analysis.
    z = 0.9941
    gaussian = epsilon_for(noise_multiplier=z, sample_rate=0.1, steps=100, delta=DELTA)
    integer = epsilon_for(noise_multiplier=z, sample_rate=0.1, steps=100, delta=DELTA, mechanism="integer")
    assert gaussian <= 7.99 < 1.2 * gaussian < integer
    assert gaussian == pytest.approx(7.99, abs=0.005) and integer == pytest.approx(9.96, abs=0.005)


def test_unsampled_integer_noise_is_accounted_exactly_as_its_dominating_gaussian():
    a, b = create_accountant("rdp"), create_accountant("rdp")
    a.step(noise_multiplier=1.3, sample_rate=1.0, steps=12)
    b.add(PrivacyEvent(noise_multiplier=1.3, sample_rate=1.0, steps=12, mechanism=Mechanism.INTEGER))
    assert b.get_epsilon(delta=DELTA) == pytest.approx(a.get_epsilon(delta=DELTA), rel=1e-12)


def test_a_history_of_gaussian_and_integer_events_adds_their_renyi_curves():
    acc = RDPAccountant(orders=ORDERS)
    acc.step(noise_multiplier=1.1, sample_rate=0.05, steps=30)
    acc.add(PrivacyEvent(noise_multiplier=0.9, sample_rate=0.2, steps=10, mechanism="integer"))
    gaussian = opacus_rdp.compute_rdp(q=0.05, noise_multiplier=1.1, steps=30, orders=ORDERS)
    integer = [10 * float(_zhu_wang(a, 0.2, 0.9)) for a in ORDERS]
    expected, _ = opacus_rdp.get_privacy_spent(
        orders=ORDERS, rdp=[g + i for g, i in zip(gaussian, integer, strict=True)], delta=DELTA
    )
    assert acc.get_epsilon(delta=DELTA) == pytest.approx(float(expected), rel=1e-9)
    assert len(acc.history) == 2  # a Gaussian and an integer event never merge


def test_prv_refuses_integer_noise_with_a_clear_error_and_keeps_its_history():
    acc = create_accountant("prv")
    acc.step(noise_multiplier=1.0, sample_rate=0.1)
    event = PrivacyEvent(noise_multiplier=1.0, sample_rate=1.0, mechanism=Mechanism.INTEGER)
    with pytest.raises(ConfigError, match="PRV accountant cannot account integer noise.*'rdp'"):
        acc.add(event)
    with pytest.raises(ConfigError, match="PRV"):
        acc.epsilon_with([event], delta=DELTA)
    assert acc.history == (PrivacyEvent(1.0, 0.1, 1),)
    with pytest.raises(ConfigError, match="PRV"):
        epsilon_for(
            noise_multiplier=1.0, sample_rate=0.1, steps=5, delta=DELTA, accountant="prv", mechanism="integer"
        )
    with pytest.raises(ConfigError, match="PRV"):
        plan_noise(ClientLevelSchedule(rounds=10), target_epsilon=4.0, delta=DELTA, accountant="prv")


def test_client_level_schedules_default_to_integer_noise_without_amplification():
    schedule = ClientLevelSchedule(rounds=20, releases_per_round=5)
    assert schedule.sample_rate == 1.0 and schedule.mechanism is Mechanism.INTEGER
    plan = plan_noise(schedule, target_epsilon=4.0, delta=DELTA)
    assert plan.mechanism is Mechanism.INTEGER and plan.to_dict()["mechanism"] == "integer"
    assert plan.epsilon <= 4.0
    assert plan.epsilon == pytest.approx(
        epsilon_for(noise_multiplier=plan.noise_multiplier, sample_rate=1.0, steps=20, delta=DELTA)
    )


def test_events_round_trip_with_their_mechanism_and_old_files_read_as_gaussian():
    event = PrivacyEvent(noise_multiplier=2.0, sample_rate=0.5, steps=3, mechanism=Mechanism.INTEGER)
    assert PrivacyEvent.from_dict(event.to_dict()) == event
    old = {"noise_multiplier": 2.0, "sample_rate": 0.5, "steps": 3}
    assert PrivacyEvent.from_dict(old).mechanism is Mechanism.GAUSSIAN
    with pytest.raises(ConfigError, match="unknown mechanism"):
        PrivacyEvent(noise_multiplier=1.0, sample_rate=1.0, mechanism="laplace")
    with pytest.raises(ConfigError, match="integer order"):
        poisson_subsampled_rdp(2.5, sample_rate=0.1, rdp=lambda a: a)  # type: ignore[arg-type]
    # Sampled integer noise is bounded at integer orders only: one suffices, none is refused.
    assert math.isfinite(RDPAccountant(orders=[1.5, 2.0]).epsilon_with([event], delta=DELTA))
    with pytest.raises(ConfigError, match="integer Renyi orders only"):
        RDPAccountant(orders=[1.5, 2.5]).epsilon_with([event], delta=DELTA)
