"""Under example-level DP nothing derived from labels leaves a client except through the charged histogram.

The conditional method's class weights, and every dream gradient and soft label they scale, are read
from the client's DP label histogram (released once per run, charged to its own accountant). Two
clients that differ in one training label, with the same model and the same histogram release,
release exactly the same vectors: the label reaches the server only through the charged mechanism.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codream.exceptions import ConfigError, PrivacyBudgetExceeded
from codream.federation.client import ClientRole
from codream.federation.config import DistillConfig, DreamConfig, FederationConfig
from codream.models import build_model
from codream.privacy.example_level import DPSGDTrainer
from codream.privacy.label_histogram import label_histogram_event

K = 3
LABELS = torch.as_tensor([0] * 40 + [1] * 25 + [2] * 15)


def _config(label_weighting: str = "target") -> FederationConfig:
    return FederationConfig(
        num_clients=1,
        models=("mlp",),
        norm="group",
        dream=DreamConfig(batch_size=4, global_steps=1, w_bn=0.0),
        distill=DistillConfig(label_weighting=label_weighting),
    )


def _role(labels: torch.Tensor, config: FederationConfig, **options) -> ClientRole:
    x = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = build_model("mlp", (1, 8, 8), K, seed=0)
    trainer = DPSGDTrainer(
        model, x, labels, torch.Generator().manual_seed(1), noise_multiplier=1.0, batch_size=8, **options
    )
    return ClientRole(0, trainer, labels, K, config, torch.Generator().manual_seed(2))


def _releases(role: ClientRole, targets: torch.Tensor, x: torch.Tensor) -> list[np.ndarray]:
    """Everything the client releases in a round of the conditional method, in order."""
    weights = role.class_weights()
    role.begin_round(0, targets=targets)
    return [weights, role.dream_gradient(x, 0), role.soft_labels(x)]


@pytest.mark.parametrize("label_weighting", ["target", "class"])
def test_one_changed_label_changes_no_release_except_through_the_charged_histogram(label_weighting):
    config = _config(label_weighting)
    neighbour = LABELS.clone()
    neighbour[0] = 2  # one training example relabelled
    a = _role(LABELS, config, label_noise_multiplier=5.0)
    b = _role(neighbour, config, label_noise_multiplier=5.0)
    targets = torch.as_tensor([0, 1, 2, 0])
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    released_a = _releases(a, targets, x)
    # Condition on the mechanism's output: the neighbour's histogram came out the same.
    b.trainer.label_histogram = a.trainer.label_histogram
    released_b = _releases(b, targets, x)
    for va, vb in zip(released_a, released_b, strict=True):
        np.testing.assert_array_equal(va, vb)
    # The raw counts, which the old code released, do tell the neighbours apart.
    assert not np.array_equal(a.class_counts, b.class_counts)


def test_the_histogram_is_charged_once_per_run_however_often_the_weights_are_used():
    role = _role(LABELS, _config(), label_noise_multiplier=5.0)
    assert len(role.trainer.accountant) == 0
    planned = role.trainer.epsilon_after(0)  # counts the histogram still to come
    assert planned > 0
    first = role.class_weights()
    for r in range(3):
        role.begin_round(r, targets=torch.as_tensor([0, 1, 2, 0]))
        np.testing.assert_array_equal(role.class_weights(), first)
    assert role.trainer.accountant.history == (label_histogram_event(5.0),)
    assert role.trainer.epsilon() == pytest.approx(planned)
    assert role.trainer.epsilon_after(0) == pytest.approx(planned)  # no second release pending


def test_the_weights_are_post_processing_of_the_noisy_counts_not_of_the_labels():
    role = _role(LABELS, _config(), label_noise_multiplier=5.0)
    w = role.class_weights()
    counts = np.clip(np.asarray(role.trainer.label_histogram.counts), 0, None)
    expected = counts / counts.max()
    expected[expected < DreamConfig().min_class_weight] = 0.0
    np.testing.assert_allclose(w, expected * (1 - 1e-6))
    np.testing.assert_array_equal(role.label_counts(), counts)


def test_without_a_label_noise_multiplier_no_label_statistic_is_released():
    role = _role(LABELS, _config())
    with pytest.raises(ConfigError, match="label histogram"):
        role.class_weights()
    with pytest.raises(ConfigError, match="label histogram"):
        role.begin_round(0, targets=torch.as_tensor([0, 1, 2, 0]))
    assert len(role.trainer.accountant) == 0


def test_a_histogram_past_the_clients_target_is_refused_before_any_weight_is_released():
    role = _role(LABELS, _config(), label_noise_multiplier=0.05, target_epsilon=1.0)
    with pytest.raises(PrivacyBudgetExceeded, match="label histogram"):
        role.class_weights()
    assert len(role.trainer.accountant) == 0 and role.trainer.label_histogram is None
