"""secure+dp behind the seam: noised sums, each client's own ledger, budget enforcement by clients."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codream.aggregation import VectorSpec, create_aggregator
from codream.exceptions import ConfigError, PrivacyBudgetExceeded
from codream.privacy.accountant import Mechanism
from codream.privacy.calibration import epsilon_for
from codream.privacy.client_ledger import client_round_event

SPECS = [VectorSpec.dream_gradient(j, 2048, 1.0) for j in range(3)] + [VectorSpec.soft_labels(80, 0.5)]
PARTICIPANTS = list(range(6))


def _vectors(rng: np.random.Generator, spec: VectorSpec, scale: float, ids=PARTICIPANTS) -> dict:
    return {c: rng.normal(size=spec.length) * scale for c in ids}


def test_secure_dp_sums_with_the_noise_each_client_calibrates_itself():
    agg = create_aggregator("secure+dp", noise_multiplier=0.5, noise_seed=1, rounding_seed=1, min_survivors=4)
    rng = np.random.default_rng(0)
    rnd = agg.open_round(round_index=0, participants=PARTICIPANTS, specs=SPECS)
    for spec in SPECS:
        vectors = _vectors(rng, spec, 1e-3)  # far inside the clip norm: the error is the noise
        result = rnd.sum(spec, vectors)
        error = result.total - sum(vectors.values())
        # z_i = 0.5 * sqrt(4) = 1 per release, calibrated for n_min = 4; all 6 survive, so the noise
        # std is sqrt(6/4) times z_i * clip_norm.
        assert result.count == 6
        assert result.clipped is None  # not released under DP
        assert error.std() == pytest.approx(math.sqrt(6 / 4) * spec.clip_norm, rel=0.15)
        assert abs(error.mean()) < 5 * error.std() / math.sqrt(spec.length)
    report = rnd.close()
    assert report.clipped is None and report.overflowed is None
    dp = report.dp
    assert dp is not None
    assert dp.noise_multiplier == 0.5 and dp.release_noise_multiplier == pytest.approx(1.0)
    assert dp.achieved_noise_multiplier >= 0.5 * (1 - 1e-9)
    assert dp.n_min == 4
    assert dp.noise_std["dream/0"] == pytest.approx(1.0, rel=1e-3)
    assert 0 < dp.wraparound_bound < 1e-6
    # Every client holds its own ledger with one unamplified event for the round.
    for cid in PARTICIPANTS:
        assert agg.clients[cid].ledger.history == (client_round_event(0.5),)
        assert client_round_event(0.5).mechanism is Mechanism.INTEGER


def test_clipped_contributions_stay_on_the_clients_under_dp():
    agg = create_aggregator("secure+dp", noise_multiplier=1.0, noise_seed=2, rounding_seed=2)
    rng = np.random.default_rng(1)
    rnd = agg.open_round(round_index=0, participants=PARTICIPANTS, specs=SPECS[:1])
    vectors = _vectors(rng, SPECS[0], 1e-3)
    vectors[0] = vectors[0] * 1e5  # norm about 4.5, clip norm 1
    vectors[3] = vectors[3] * 1e5
    assert rnd.sum(SPECS[0], vectors).clipped is None
    assert [agg.clients[c].local_stats.clipped for c in PARTICIPANTS] == [1, 0, 0, 1, 0, 0]


def test_with_cohorts_each_client_composes_only_its_own_rounds_unamplified(tmp_path):
    """The server knows every cohort, so a client's epsilon is the plain composition of its rounds."""
    agg = create_aggregator(
        "secure+dp", noise_multiplier=2.0, noise_seed=3, rounding_seed=3, ledger_path=tmp_path / "l.json"
    )
    rng = np.random.default_rng(2)
    cohorts = [[0, 1, 2], [0, 3, 4], [0, 1, 5], [2, 3, 4]]
    for r, cohort in enumerate(cohorts):
        rnd = agg.open_round(round_index=r, participants=cohort, specs=SPECS[3:])
        rnd.sum(SPECS[3], _vectors(rng, SPECS[3], 0.01, cohort))
        rnd.close()
    rounds_in = {c: sum(c in cohort for cohort in cohorts) for c in range(6)}
    for cid, k in rounds_in.items():
        expected = epsilon_for(noise_multiplier=2.0, sample_rate=1.0, steps=k, delta=1e-5)
        assert agg.clients[cid].epsilon == pytest.approx(expected, rel=1e-9)
    last = agg.ledger.rounds[-1].client_epsilons
    assert last[0] == max(last.values()) and agg.ledger.spent == pytest.approx(last[0])
    # Accounting at q = cohort / population would have claimed far less for client 0 (4 rounds of 4).
    amplified = epsilon_for(noise_multiplier=2.0, sample_rate=0.5, steps=4, delta=1e-5)
    assert agg.ledger.spent > 1.4 * amplified
    assert (tmp_path / "l.json").exists()


def test_a_client_refuses_the_round_that_would_exceed_its_own_budget_before_releasing():
    agg = create_aggregator(
        "secure+dp", noise_multiplier=1.0, target_epsilon=6.0, noise_seed=4, rounding_seed=4
    )
    rng = np.random.default_rng(3)
    opened = 0
    with pytest.raises(PrivacyBudgetExceeded, match="over its target 6"):
        for r in range(10):
            rnd = agg.open_round(round_index=r, participants=PARTICIPANTS, specs=SPECS[3:])
            opened += 1
            rnd.sum(SPECS[3], _vectors(rng, SPECS[3], 0.01))
            rnd.close()
    for cid in PARTICIPANTS:
        ledger = agg.clients[cid].ledger
        assert ledger.participations == opened == 1 and ledger.spent <= 6.0


def test_the_discrete_gaussian_option_also_reaches_the_target_noise():
    agg = create_aggregator(
        "secure+dp", noise_multiplier=1.0, noise="discrete_gaussian", noise_seed=5, rounding_seed=5
    )
    rng = np.random.default_rng(4)
    rnd = agg.open_round(round_index=0, participants=PARTICIPANTS, specs=SPECS[:1])
    vectors = _vectors(rng, SPECS[0], 1e-3)
    error = rnd.sum(SPECS[0], vectors).total - sum(vectors.values())
    n_min = rnd.close().dp.n_min
    assert error.std() == pytest.approx(math.sqrt(6 / n_min), rel=0.15)


def test_prv_is_refused_for_integer_noise():
    with pytest.raises(ConfigError, match="integer"):
        create_aggregator("secure+dp", noise_multiplier=1.0, accountant="prv")


def test_a_client_ledger_never_shrinks_when_a_run_resumes_from_an_older_checkpoint(tmp_path):
    """A round released after the last checkpoint stays on each client's file-backed ledger."""
    options = dict(noise_multiplier=2.0, noise_seed=6, rounding_seed=6)
    agg = create_aggregator("secure+dp", **options)
    agg.attach(tmp_path)
    rng = np.random.default_rng(5)
    checkpoint = None
    for r in range(2):
        if r == 1:
            checkpoint = agg.state_dict()  # the checkpoint is written before round 1 ...
        rnd = agg.open_round(round_index=r, participants=PARTICIPANTS, specs=SPECS[3:])
        rnd.sum(SPECS[3], _vectors(rng, SPECS[3], 0.01))  # ... and round 1 is released after it
        rnd.close()
    resumed = create_aggregator("secure+dp", **options)
    resumed.load_state_dict(checkpoint)
    resumed.attach(tmp_path)
    for cid in PARTICIPANTS:
        assert resumed.clients[cid].ledger.participations == 2
        assert resumed.clients[cid].epsilon == pytest.approx(agg.clients[cid].epsilon)
