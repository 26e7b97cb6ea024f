"""The private baselines: DP-FedAvg through the same seam as CoDream, and local-only DP-SGD."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codream.aggregation import create_aggregator
from codream.baselines import BaselineConfig, run_fedavg
from codream.data import partition
from codream.dp_baselines import LocalDPSGDConfig, model_update_spec, run_dp_fedavg, run_local_dp_sgd
from codream.exceptions import ConfigError, PrivacyBudgetExceeded
from codream.federation.simulation import cohort_indices
from codream.privacy import create_accountant, plan_noise
from codream.privacy.calibration import ExampleLevelSchedule
from codream.privacy.client_ledger import client_round_event

CFG = BaselineConfig(rounds=3, local_steps=4, batch_size=16, lr=0.05, seed=0, norm="group")
DELTA = 1e-5


@pytest.fixture(scope="module")
def small(digits):
    """The digits set with a small test set, split over 4 clients of equal size."""
    data = dataclasses.replace(digits, x_test=digits.x_test[:200], y_test=digits.y_test[:200])
    return data, partition(digits.y_train, 4, alpha=None, samples_per_client=60, seed=0)


def test_without_noise_or_clipping_dp_fedavg_is_fedavg(small):
    # Through `plain` with a bound no update reaches, the mean of the released updates moves the global
    # model exactly as FedAvg's average of equally weighted client models does.
    data, parts = small
    run = run_dp_fedavg(data, parts, "mlp", CFG, create_aggregator("plain"), clip_norm=1e6, device="cpu")
    ref = run_fedavg(data, parts, "mlp", CFG, device="cpu")
    np.testing.assert_allclose(run.result.history, ref.history, atol=0.011)  # float64 vs float32 sums
    assert run.extra["clipped_fraction"] == 0.0 and run.epsilon == 0.0


def test_each_clients_epsilon_is_unamplified_composition_over_the_rounds_it_took_part_in(small):
    data, parts = small
    z = 2.0
    agg = create_aggregator("secure+dp", noise_multiplier=z, delta=DELTA, noise_seed=0, seed=0)
    run = run_dp_fedavg(data, parts, "mlp", CFG, agg, clip_norm=1.0, clients_per_round=2, device="cpu")
    taken = [0] * 4
    for r in range(CFG.rounds):
        for k in cohort_indices(4, 2, CFG.seed, r):  # the public draw CoDream's loop makes
            taken[k] += 1
    assert sorted(taken) != [taken[0]] * 4  # clients took part unequally: the test can tell them apart
    for k, n in enumerate(taken):
        acc = create_accountant("rdp")
        for _ in range(n):
            acc.add(client_round_event(z))
        expected = acc.get_epsilon(delta=DELTA) if n else 0.0
        assert run.client_epsilons.get(k, 0.0) == pytest.approx(expected)
    assert run.epsilon == pytest.approx(max(run.client_epsilons.values()))
    assert (
        run.noise_multiplier == z
        and run.extra["update_dimension"] == model_update_spec(int(run.extra["update_dimension"]), 1.0).length
    )


def test_a_client_refuses_a_round_past_its_own_target(small):
    data, parts = small
    acc = create_accountant("rdp")
    acc.add(client_round_event(2.0))
    one_round = acc.get_epsilon(delta=DELTA)
    target = 1.2 * one_round  # room for one round, not two
    agg = create_aggregator(
        "secure+dp", noise_multiplier=2.0, delta=DELTA, target_epsilon=target, noise_seed=0
    )
    with pytest.raises(PrivacyBudgetExceeded):
        run_dp_fedavg(data, parts, "mlp", CFG, agg, clip_norm=1.0, device="cpu")
    spent = agg.client_epsilons()
    assert spent and all(e == pytest.approx(one_round) for e in spent.values())  # round 1 charged, no more


def test_dp_fedavg_refuses_models_whose_running_statistics_would_leave_unnoised(small):
    data, parts = small
    with pytest.raises(ConfigError, match="norm='group'"):
        run_dp_fedavg(
            data,
            parts,
            "cnn",
            dataclasses.replace(CFG, norm="batch"),
            create_aggregator("plain"),
            clip_norm=1.0,
            device="cpu",
        )
    with pytest.raises(ConfigError, match="clip_norm"):
        run_dp_fedavg(data, parts, "mlp", CFG, create_aggregator("plain"), clip_norm=0.0, device="cpu")


def test_local_dp_sgd_spends_what_codreams_example_level_schedule_plans(small):
    data, parts = small
    schedule = ExampleLevelSchedule(local_steps=2 + CFG.rounds * 3, batch_size=16, data_size=60)
    plan = plan_noise(schedule, target_epsilon=4.0, delta=DELTA, accountant="rdp")
    dp = LocalDPSGDConfig(
        noise_multiplier=plan.noise_multiplier,
        batch_size=16,
        warmup_steps=2,
        steps_per_round=3,
        accountant="rdp",
        delta=DELTA,
    )
    run = run_local_dp_sgd(data, parts, "mlp", CFG, dp, device="cpu")
    assert len(run.result.history) == CFG.rounds and len(run.client_epsilons) == 4
    for eps in run.client_epsilons.values():
        assert eps == pytest.approx(plan.epsilon) and eps <= 4.0
    assert run.extra["dp_sgd_steps"] == 11 and run.extra["not_private"] == 0.0
    seeded = run_local_dp_sgd(
        data, parts, "mlp", CFG, dataclasses.replace(dp, noise_seed=0, sampling_seed=0), device="cpu"
    )
    assert seeded.extra["not_private"] == 1.0  # seeded coins: reproducible, and said not to be private


def test_a_client_whose_training_diverges_releases_a_zero_update_and_is_counted(small, monkeypatch):
    import codream.baselines as base  # DP-FedAvg's local SGD runs through the baselines' shared step

    real = base.train_supervised
    calls = []

    def train(model, x, *args, **kwargs):
        stats = real(model, x, *args, **kwargs)
        calls.append(1)
        if len(calls) % 4 == 2:  # the second client of every round diverges
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(base, "train_supervised", train)
    data, parts = small
    run = run_dp_fedavg(data, parts, "mlp", CFG, create_aggregator("plain"), clip_norm=1e6, device="cpu")
    assert run.extra["diverged_updates"] == CFG.rounds
    assert all(np.isfinite(a) for a in run.result.final_accuracy)
