"""What makes students absorb the teachers: restricted local CE, joint KD + CE, BatchNorm on mixed
batches, tempered and class-weighted soft labels, and the server student."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codream.distill import (
    SGDTrainer,
    class_weighted_ensemble,
    kd_loss,
    local_cross_entropy,
    real_half_batchnorm,
    soft_labels_to_target_logits,
)
from codream.exceptions import ConfigError
from codream.federation import DistillConfig, DreamConfig, Federation, FederationConfig
from codream.federation.client import ClientRole
from codream.federation.config import KDBatchNorm, LocalLoss, SoftLabelKind


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def two_class_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, 1, 2, 2) with labels of classes 0 and 1 only: class 2 is absent."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) + 2.0 * F.one_hot(y, 4).float()
    return x.reshape(n, 1, 2, 2), y


@pytest.mark.parametrize("mode", [LocalLoss.RESTRICTED, LocalLoss.ADJUSTED])
def test_restricted_local_ce_gives_absent_classes_logits_no_gradient(mode):
    logits = torch.randn(8, 4, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    counts = torch.tensor([5, 3, 0, 0])
    local_cross_entropy(logits, y, counts, mode).backward()
    assert torch.all(logits.grad[:, 2:] == 0)
    assert torch.all(logits.grad[:, :2].abs().sum(0) > 0)
    plain = logits.detach().clone().requires_grad_(True)
    local_cross_entropy(plain, y, counts, LocalLoss.PLAIN).backward()
    assert torch.all(plain.grad[:, 2:] > 0)  # the plain softmax pushes every absent class down


@pytest.mark.parametrize("mode", ["restricted", "adjusted"])
def test_restricted_ce_steps_leave_the_absent_class_output_untouched(mode):
    x, y = two_class_data()
    trainer = SGDTrainer(
        linear_model(), x, y, torch.Generator().manual_seed(0), lr=0.5, momentum=0.0, weight_decay=0.0,
        local_loss=mode, batch_size=8,
    )  # fmt: skip
    head = trainer.model[1]
    w2, b2 = head.weight[2].detach().clone(), head.bias[2].detach().clone()
    w0 = head.weight[0].detach().clone()
    for _ in range(10):
        trainer.ce_step()
    assert torch.equal(head.weight[2], w2) and torch.equal(head.bias[2], b2)
    assert not torch.equal(head.weight[0], w0)
    plain = SGDTrainer(
        linear_model(), x, y, torch.Generator().manual_seed(0), lr=0.5, momentum=0.0, weight_decay=0.0,
        batch_size=8,
    )  # fmt: skip
    plain.ce_step()
    assert not torch.equal(plain.model[1].weight[2], w2)


def test_fedrs_alpha_scales_the_absent_logits_inside_the_softmax():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    counts = torch.tensor([2, 2, 0])
    got = local_cross_entropy(logits, y, counts, LocalLoss.RESTRICTED, restrict_alpha=0.5)
    scaled = logits * torch.tensor([1.0, 1.0, 0.5])
    assert float(got) == pytest.approx(float(F.cross_entropy(scaled, y)), rel=1e-6)


def test_a_joint_step_is_one_sgd_step_on_kd_plus_weighted_ce():
    x, y = two_class_data()
    make = lambda: SGDTrainer(  # noqa: E731
        linear_model(), x, y, torch.Generator().manual_seed(4), lr=0.1, momentum=0.0, weight_decay=0.0,
        max_grad_norm=None, batch_size=8, ce_weight=0.5,
    )  # fmt: skip
    trainer, twin = make(), make()
    xr, yr = twin._next_batch()  # the local minibatch the joint step will draw
    dreams = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    target = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    ref = copy.deepcopy(trainer.model)
    loss = kd_loss(ref(dreams), target, 2.0) + 0.5 * F.cross_entropy(ref(xr), yr)
    loss.backward()
    expected = [p.detach() - 0.1 * p.grad for p in ref.parameters()]
    kd, ce = trainer.joint_step(dreams, target, 2.0)
    assert kd > 0 and ce > 0
    for got, want in zip(trainer.model.parameters(), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def test_real_half_batchnorm_normalises_jointly_but_tracks_only_the_real_rows():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3).train()
    real, dreams = torch.randn(5, 3) + 4.0, torch.randn(7, 3) * 10
    with real_half_batchnorm(bn, 5):
        out = bn(torch.cat([real, dreams]))
    joint = torch.cat([real, dreams])
    expected = (joint - joint.mean(0)) / torch.sqrt(joint.var(0, unbiased=False) + bn.eps)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(bn.running_mean, 0.1 * real.mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * real.var(0), atol=1e-6)
    assert bn.momentum == 0.1 and not hasattr(bn, "_codream_momentum")


def test_tempered_probability_labels_are_matched_exactly_at_their_temperature():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    target = soft_labels_to_target_logits(p, SoftLabelKind.PROBABILITIES, label_temperature=4.0)
    assert torch.allclose(torch.softmax(target / 4.0, dim=1), p, atol=1e-6)


def test_the_class_weighted_ensemble_ignores_a_teacher_on_classes_it_does_not_hold():
    a, b = linear_model(0), linear_model(1)
    x = torch.randn(5, 1, 2, 2)
    w = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.5, 1.0]])
    p = class_weighted_ensemble([a, b], w, x)
    pa, pb = torch.softmax(a(x), 1).detach(), torch.softmax(b(x), 1).detach()
    raw = torch.stack([pa[:, 0], (pa[:, 1] + 0.5 * pb[:, 1]) / 1.5, pb[:, 2]], dim=1)
    assert torch.allclose(p, raw / raw.sum(1, keepdim=True), atol=1e-6)


def config(**distill) -> FederationConfig:
    return FederationConfig(
        dataset="digits",
        num_clients=3,
        models=("cnn", "mlp", "resnet8"),
        alpha=0.3,
        samples_per_client=150,
        limit_test=200,
        rounds=1,
        seed=5,
        dream=DreamConfig(batch_size=16, global_steps=3),
        distill=DistillConfig(kd_steps=6, warmup_steps=20, buffer_size=64, **distill),
    )


def test_class_weighted_soft_labels_from_the_sums_are_the_ensemble_of_the_clients(digits):
    fed = Federation(config(label_weighting="class"), dataset=digits)
    fed.run_round()
    # Label the round's final dreams again through the sums (the clients have distilled since) and
    # compare with the ensemble computed directly from the models.
    x = fed.server.x
    from codream.aggregation import AggregateResult

    vectors = [c.soft_labels(x) for c in fed.clients]
    got, _ = fed.server.receive_soft_labels(
        AggregateResult(total=np.sum(vectors, axis=0), contributors=(0, 1, 2))
    )
    w = torch.as_tensor(np.stack([c.class_weights() for c in fed.clients]), dtype=torch.float32)
    want = class_weighted_ensemble([c.model for c in fed.clients], w, x)
    assert torch.allclose(got, want, atol=1e-4)


JOINT = dict(
    label_weighting="class",
    joint=True,
    ce_ratio=0.5,
    local_loss="restricted",
    kd_batchnorm="mixed",
    label_temperature=2.0,
    temperature=2.0,
    student="cnn",
    student_kd_steps=4,
    augment="shift",
)


def test_the_new_learning_options_give_the_same_numbers_for_the_same_seed(digits):
    runs = []
    for _ in range(2):
        fed = Federation(config(**JOINT), dataset=digits)
        m = fed.run_round()
        stats = fed.clients[0].last_distill
        assert stats.kd_steps == 6 and stats.ce_steps == 3  # 6 x 0.5 CE minibatches, each in a joint step
        state = [t.clone() for c in fed.clients for t in c.model.state_dict().values()]
        runs.append(((m.accuracies, m.student_accuracy, m.kd_loss, m.ce_loss), state))
    (numbers_a, state_a), (numbers_b, state_b) = runs
    assert numbers_a == numbers_b
    assert all(torch.equal(x, y) for x, y in zip(state_a, state_b, strict=True))


def test_the_server_student_tracks_dream_statistics_in_its_batchnorm(digits):
    fed = Federation(config(student="cnn"), dataset=digits)
    bn = next(m for m in fed.server.student.model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    fed.run_round()
    assert not torch.equal(bn.running_mean, before)


class _NoJoint:
    def __init__(self, model):
        self.model = model

    def ce_step(self) -> float:
        return 0.0

    def kd_step(self, x, y_soft, temperature) -> float:
        return 0.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


def test_a_trainer_that_cannot_apply_the_configured_learning_options_is_refused():
    y = torch.tensor([0, 1, 1])
    with pytest.raises(ConfigError, match="joint_step"):
        ClientRole(0, _NoJoint(linear_model()), y, 3, config(joint=True), torch.Generator())
    with pytest.raises(ConfigError, match="local_loss"):
        ClientRole(0, _NoJoint(linear_model()), y, 3, config(local_loss="adjusted"), torch.Generator())
    with pytest.raises(ConfigError, match="kd_batchnorm"):
        ClientRole(0, _NoJoint(linear_model()), y, 3, config(kd_batchnorm="mixed"), torch.Generator())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(restrict_alpha=1.5), "restrict_alpha"),
        (dict(local_loss="fedprox"), "local_loss"),
        (dict(kd_batchnorm="running"), "kd_batchnorm"),
        (dict(label_temperature=0.0), "label_temperature"),
        (dict(label_temperature=2.0, soft_labels="logits"), "label_temperature"),
        (dict(student_kd_steps=-1), "student_kd_steps"),
        (dict(student_temperature=0.0), "student_temperature"),
        (dict(joint="yes"), "joint"),
    ],
)
def test_distill_config_rejects_invalid_learning_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**kwargs)


def test_class_weighted_labels_need_the_conditional_method_and_probabilities():
    with pytest.raises(ConfigError, match="label_weighting"):
        FederationConfig(method="paper", distill=DistillConfig(label_weighting="class"))
    assert KDBatchNorm("mixed") is KDBatchNorm.MIXED


def test_dream_augmentation_translates_each_dream_reproducibly_and_none_leaves_them_alone():
    from codream.distill import augment_dreams
    from codream.federation.config import DreamAugment

    x = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    assert augment_dreams(x, DreamAugment.NONE, 2, torch.Generator()) is x
    a = augment_dreams(x, DreamAugment.SHIFT, 1, torch.Generator().manual_seed(3))
    b = augment_dreams(x, DreamAugment.SHIFT, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(6):  # every output is its own dream, shifted by at most one pixel
        crops = [padded[i, :, dy : dy + 5, dx : dx + 5] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(a[i], c) for c in crops)
    flipped = augment_dreams(x, DreamAugment.SHIFT_FLIP, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(f, d) or torch.equal(f, d.flip(2)) for f, d in zip(flipped, x, strict=True))
    assert not torch.equal(flipped, x)
