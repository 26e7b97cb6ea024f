"""The charged DP label histogram: the only way label statistics leave an example-level client."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codream.exceptions import ConfigError, PrivacyBudgetExceeded
from codream.models import build_model
from codream.privacy import PrivacyEvent, create_accountant, epsilon_for, plan_noise
from codream.privacy.calibration import ExampleLevelSchedule
from codream.privacy.example_level import DPSGDTrainer
from codream.privacy.label_histogram import (
    NoisyLabelHistogram,
    label_histogram_event,
    release_label_histogram,
)
from codream.privacy.os_random import os_bernoulli, os_gaussian, os_uniform

DELTA = 1e-5
LABELS = np.array([0] * 50 + [1] * 30 + [2] * 20)


def _release(accountant, z: float = 4.0, labels=LABELS, **kwargs) -> NoisyLabelHistogram:
    return release_label_histogram(
        labels, num_classes=3, noise_multiplier=z, accountant=accountant, delta=DELTA, **kwargs
    )


def test_the_release_is_charged_as_one_unsampled_gaussian_event_before_anything_leaves():
    acc = create_accountant("rdp")  # PRV: the trainer's test below
    acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=10)  # the client's DP-SGD steps so far
    before = acc.get_epsilon(delta=DELTA)
    _release(acc)
    assert acc.history[-1] == label_histogram_event(4.0) == PrivacyEvent(4.0, 1.0, 1)
    assert acc.get_epsilon(delta=DELTA) > before
    alone = create_accountant("rdp")
    _release(alone)
    assert alone.get_epsilon(delta=DELTA) == pytest.approx(
        epsilon_for(noise_multiplier=4.0, sample_rate=1.0, steps=1, delta=DELTA)
    )


def test_a_release_over_the_target_is_refused_and_charges_nothing():
    acc = create_accountant("rdp")
    acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    history = acc.history
    with pytest.raises(PrivacyBudgetExceeded, match="label histogram.*over the target"):
        _release(acc, z=0.5, target_epsilon=acc.get_epsilon(delta=DELTA) + 0.1)
    assert acc.history == history


def test_changing_one_label_moves_the_release_only_through_gaussian_noise_of_the_planned_std():
    # The released counts are the true counts plus N(0, z^2) from the OS: over many releases their
    # mean is the true histogram and their spread z, whichever neighbour produced them.
    z, n = 4.0, 2000
    neighbour = LABELS.copy()
    neighbour[0] = 2  # one training label changed
    for labels, truth in ((LABELS, [50, 30, 20]), (neighbour, [49, 30, 21])):
        acc = create_accountant("rdp")
        draws = np.array([_release(acc, z=z, labels=labels).counts for _ in range(n)])
        assert np.abs(draws.mean(axis=0) - truth).max() < 5 * z / np.sqrt(n)
        assert draws.std(axis=0) == pytest.approx([z] * 3, rel=0.08)  # 5 sigma: 5 / sqrt(2 n)
    a, b = _release(create_accountant("rdp")), _release(create_accountant("rdp"))
    assert a.counts != b.counts  # fresh noise every release, from the OS


def test_class_weights_are_post_processing_of_the_noisy_counts():
    h = NoisyLabelHistogram(counts=(40.0, -3.0, 10.0, 2.0), noise_multiplier=4.0)
    np.testing.assert_allclose(h.class_weights(), [1.0, 0.0, 0.25, 0.05])
    np.testing.assert_allclose(h.class_weights(min_class_weight=0.1), [1.0, 0.0, 0.25, 0.0])
    assert not NoisyLabelHistogram(counts=(-1.0, -2.0), noise_multiplier=1.0).class_weights().any()
    assert NoisyLabelHistogram.from_dict(h.to_dict()) == h


def test_bad_labels_and_settings_are_refused_before_anything_is_charged():
    acc = create_accountant("rdp")
    with pytest.raises(ConfigError, match="labels must be integers in \\[0, 3\\)"):
        _release(acc, labels=np.array([0, 3]))
    with pytest.raises(ConfigError, match="noise_multiplier"):
        _release(acc, z=0.0)
    with pytest.raises(ConfigError, match="num_classes"):
        release_label_histogram(LABELS, num_classes=0, noise_multiplier=1.0, accountant=acc, delta=DELTA)
    assert acc.history == ()


def _trainer() -> DPSGDTrainer:
    x = torch.randn(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.as_tensor(LABELS)
    model = build_model("mlp", (1, 8, 8), 3, seed=0)
    return DPSGDTrainer(model, x, y, torch.Generator(), noise_multiplier=1.0, batch_size=10, accountant="prv")


def test_a_trainer_releases_its_histogram_once_per_run_and_keeps_it_across_a_resume():
    trainer = _trainer()
    first = trainer.release_label_histogram(3, noise_multiplier=4.0)
    spent = trainer.epsilon()
    assert spent > 0 and len(trainer.accountant) == 1
    assert trainer.release_label_histogram(3, noise_multiplier=4.0) is first  # no second release, no charge
    assert trainer.epsilon() == spent
    with pytest.raises(ConfigError, match="released once"):
        trainer.release_label_histogram(3, noise_multiplier=2.0)
    resumed = _trainer()
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.release_label_histogram(3, noise_multiplier=4.0) == first
    assert resumed.epsilon() == pytest.approx(spent)


def test_calibration_leaves_room_for_the_histogram_in_the_clients_budget():
    event = label_histogram_event(5.0)
    # Full batches (q = 1) keep the accounting fast; the room left is the same question at any rate.
    plain = ExampleLevelSchedule(local_steps=20, batch_size=100, data_size=100)
    with_histogram = ExampleLevelSchedule(
        local_steps=20, batch_size=100, data_size=100, extra_events=(event,)
    )
    a = plan_noise(plain, target_epsilon=4.0, delta=DELTA)
    b = plan_noise(with_histogram, target_epsilon=4.0, delta=DELTA)
    assert b.noise_multiplier > a.noise_multiplier
    total = epsilon_for(
        noise_multiplier=b.noise_multiplier, sample_rate=1.0, steps=20, delta=DELTA, extra_events=[event]
    )
    assert total == pytest.approx(b.epsilon) and b.epsilon <= 4.0


def test_os_randomness_has_the_right_shape_and_range():
    u = os_uniform(10_000)
    assert u.shape == (10_000,) and u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.02
    assert (
        os_bernoulli(0, 0.5).shape == (0,)
        and os_bernoulli(100, 1.0).all()
        and not os_bernoulli(100, 0.0).any()
    )
    g = os_gaussian(20_001, std=3.0)
    assert g.shape == (20_001,) and abs(g.std() - 3.0) < 0.1 and abs(g.mean()) < 0.1
    with pytest.raises(ConfigError):
        os_bernoulli(3, 1.5)
    with pytest.raises(ConfigError):
        os_uniform(-1)
