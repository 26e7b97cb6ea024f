"""Calibration: target (epsilon, delta) and schedule -> noise multiplier, and back."""

from __future__ import annotations

import pytest

from codream.exceptions import ConfigError
from codream.privacy import (
    ClientLevelSchedule,
    ExampleLevelSchedule,
    calibrate_noise_multiplier,
    effective_noise_multiplier,
    epsilon_for,
    plan_noise,
)

DELTA = 1e-5


@pytest.mark.parametrize("target", [1.0, 4.0, 16.0])
def test_rdp_calibration_round_trips_to_just_under_the_target(target):
    z = calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=0.02, steps=500)
    spent = epsilon_for(noise_multiplier=z, sample_rate=0.02, steps=500, delta=DELTA)
    assert spent <= target
    assert spent > 0.99 * target
    # 0.1% less noise would overspend: the answer is the smallest multiplier, not merely a safe one.
    assert epsilon_for(noise_multiplier=0.995 * z, sample_rate=0.02, steps=500, delta=DELTA) > target


def test_prv_calibration_round_trips():
    z = calibrate_noise_multiplier(
        target_epsilon=2.0, delta=DELTA, sample_rate=0.05, steps=100, accountant="prv", tolerance=1e-2
    )
    spent = epsilon_for(noise_multiplier=z, sample_rate=0.05, steps=100, delta=DELTA, accountant="prv")
    assert 0.95 * 2.0 < spent <= 2.0


def test_calibration_recovers_the_reference_noise_multiplier():
    z = calibrate_noise_multiplier(target_epsilon=8.1553, delta=DELTA, sample_rate=100 / 3400, steps=1500)
    assert z == pytest.approx(1.0, rel=2e-3)


def test_client_level_plan_splits_the_round_noise_over_its_releases():
    plan = plan_noise(
        ClientLevelSchedule(rounds=50, sample_rate=0.1, releases_per_round=9), target_epsilon=4.0, delta=DELTA
    )
    assert plan.per_release_noise_multiplier == pytest.approx(3 * plan.noise_multiplier)
    assert effective_noise_multiplier([plan.per_release_noise_multiplier] * 9) == pytest.approx(
        plan.noise_multiplier
    )
    assert plan.epsilon <= 4.0 and plan.steps == 50


def test_example_level_schedule_from_epochs_counts_steps_and_rate():
    sched = ExampleLevelSchedule.from_epochs(epochs=3, batch_size=64, data_size=1000)
    assert sched.sample_rate == pytest.approx(0.064)
    assert sched.steps == 47
    plan = plan_noise(sched, target_epsilon=8.0, delta=DELTA)
    assert plan.per_release_noise_multiplier == plan.noise_multiplier


@pytest.mark.parametrize(
    "make",
    [
        lambda: ClientLevelSchedule(rounds=0, sample_rate=0.1),
        lambda: ClientLevelSchedule(rounds=10, sample_rate=1.5),
        lambda: ClientLevelSchedule(rounds=10, sample_rate=0.1, releases_per_round=0),
        lambda: ExampleLevelSchedule(local_steps=10, batch_size=100, data_size=50),
        lambda: calibrate_noise_multiplier(target_epsilon=0.0, delta=DELTA, sample_rate=0.1, steps=10),
        lambda: calibrate_noise_multiplier(target_epsilon=1.0, delta=1.0, sample_rate=0.1, steps=10),
    ],
    ids=["no-rounds", "rate-above-one", "no-releases", "batch-above-data", "zero-target", "delta-one"],
)
def test_invalid_schedules_and_targets_are_refused_with_a_config_error(make):
    with pytest.raises(ConfigError):
        make()
