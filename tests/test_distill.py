"""Soft labels, KD, the dream buffer and the plain SGD trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codream.distill import (
    DreamBuffer,
    LocalTrainer,
    SGDTrainer,
    frozen_batchnorm,
    kd_loss,
    predict_soft_labels,
    soft_labels_to_target_logits,
)
from codream.exceptions import ConfigError
from codream.federation.config import DistillConfig, SoftLabelKind


def bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def blobs(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    x = centres[y] + 0.3 * torch.randn(n, 4, generator=g)
    return x.reshape(n, 1, 2, 2), y


@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize("temperature", [1.0, 20.0])
def test_kd_loss_and_its_gradient_stay_finite_for_extreme_logits(scale, temperature):
    student = (torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]) * scale).requires_grad_(True)
    target = torch.tensor([[-1.0, 1.0, 0.0], [1.0, 0.0, -1.0]]) * scale
    loss = kd_loss(student, target, temperature)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert float(loss.detach()) > 0


def test_kd_loss_equals_the_hand_computed_scaled_kl_divergence():
    s = torch.tensor([[0.5, 1.5, -0.5], [2.0, 0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    temp = 2.0
    pt = torch.softmax(t / temp, dim=1)
    ps = torch.softmax(s / temp, dim=1)
    expected = temp**2 * (pt * (pt.log() - ps.log())).sum(dim=1).mean()
    assert float(kd_loss(s, t, temp)) == pytest.approx(float(expected), rel=1e-6)


def test_kd_loss_is_zero_when_student_matches_target_and_refuses_bad_input():
    z = torch.randn(4, 5)
    assert float(kd_loss(z, z.clone(), 3.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="shape"):
        kd_loss(z, torch.randn(4, 6), 1.0)
    with pytest.raises(ConfigError, match="temperature"):
        kd_loss(z, z, 0.0)


def test_probability_soft_labels_become_logits_whose_softmax_is_the_labels():
    p = torch.tensor([[0.7, 0.3, 0.0], [0.1, 0.1, 0.8]])
    logits = soft_labels_to_target_logits(p, SoftLabelKind.PROBABILITIES)
    assert torch.isfinite(logits).all()
    assert torch.allclose(torch.softmax(logits, dim=1), p, atol=1e-6)
    raw = torch.randn(2, 3)
    assert torch.equal(soft_labels_to_target_logits(raw, SoftLabelKind.LOGITS), raw)


def test_soft_labels_are_probabilities_or_logits_and_leave_the_model_mode_alone():
    model = bn_model().train()
    x, _ = blobs(6)
    probs = predict_soft_labels(model, x, SoftLabelKind.PROBABILITIES)
    logits = predict_soft_labels(model, x, SoftLabelKind.LOGITS)
    assert probs.shape == (6, 3) and torch.allclose(probs.sum(1), torch.ones(6))
    assert torch.allclose(F.softmax(logits, 1), probs, atol=1e-6)
    assert model.training


def test_the_dream_buffer_is_a_bounded_fifo_that_counts_evictions():
    buf = DreamBuffer(capacity=10)
    for i in range(3):
        buf.add(torch.full((4, 1, 2, 2), float(i)), torch.full((4, 3), float(i)))
    assert len(buf) == 10 and buf.dropped == 2
    assert buf.x[:, 0, 0, 0].tolist() == [0.0, 0.0] + [1.0] * 4 + [2.0] * 4
    with pytest.raises(ConfigError, match="labels"):
        buf.add(torch.zeros(2, 1, 2, 2), torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="shape"):
        buf.add(torch.zeros(2, 1, 3, 3), torch.zeros(2, 3))
    assert len(buf) == 10


def test_buffer_samples_distinct_dreams_reproducibly():
    buf = DreamBuffer(capacity=20)
    buf.add(torch.arange(20.0).reshape(20, 1, 1, 1), torch.zeros(20, 3))
    a, _ = buf.sample(8, torch.Generator().manual_seed(1))
    b, _ = buf.sample(8, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.flatten().unique().numel() == 8
    with pytest.raises(ConfigError, match="empty"):
        DreamBuffer(3).sample(2, torch.Generator())


def test_sgd_trainer_is_a_local_trainer_that_learns_from_its_data():
    x, y = blobs()
    trainer = SGDTrainer(bn_model(), x, y, torch.Generator().manual_seed(0), lr=0.1, batch_size=16)
    assert isinstance(trainer, LocalTrainer)
    first = trainer.ce_step()
    for _ in range(60):
        last = trainer.ce_step()
    assert last < first / 4


def test_kd_steps_follow_the_soft_labels_without_moving_batchnorm_running_statistics():
    x, y = blobs()
    trainer = SGDTrainer(bn_model(), x, y, torch.Generator().manual_seed(0), lr=0.1)
    bn = trainer.model[2]
    running = (bn.running_mean.clone(), bn.running_var.clone())
    dreams = torch.randn(32, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 3
    target = torch.zeros(32, 3)
    target[:, 2] = 10.0
    losses = [trainer.kd_step(dreams, target, 1.0) for _ in range(30)]
    assert losses[-1] < losses[0] / 4
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert bn.momentum == 0.1  # restored after each step


def test_frozen_batchnorm_restores_momentum_even_after_an_error():
    model = bn_model()
    with pytest.raises(RuntimeError), frozen_batchnorm(model):
        raise RuntimeError("boom")
    assert model[2].momentum == 0.1


def test_trainer_state_dict_gives_an_identical_continuation():
    x, y = blobs()
    a = SGDTrainer(bn_model(), x, y, torch.Generator().manual_seed(0), batch_size=20)
    for _ in range(7):
        a.ce_step()
    state = a.state_dict()
    cont_a = [a.ce_step() for _ in range(5)]
    b = SGDTrainer(bn_model(seed=9), x, y, torch.Generator().manual_seed(99), batch_size=20)
    b.load_state_dict(state)
    cont_b = [b.ce_step() for _ in range(5)]
    assert cont_a == cont_b
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_trainer_refuses_empty_or_mismatched_data():
    with pytest.raises(ConfigError, match="local data"):
        SGDTrainer(bn_model(), torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.Generator())


def test_distill_config_rejects_invalid_values():
    with pytest.raises(ConfigError, match="soft_labels"):
        DistillConfig(soft_labels="votes")
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="buffer_size"):
        DistillConfig(buffer_size=0)
