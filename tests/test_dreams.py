"""Dream loss terms, client gradients and the server's data-space step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from codream.dreams import (
    BatchNormStatistics,
    DataSpaceOptimizer,
    adversarial_loss,
    client_dream_gradient,
    client_dream_loss,
    entropy_loss,
    init_dreams,
    l2_prior,
    prior_gradient,
    target_loss,
    total_variation,
)
from codream.exceptions import ConfigError
from codream.federation.config import DreamConfig


def tiny_bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


def tiny_mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 5))


def trained_running_stats(model: nn.Module) -> nn.Module:
    """Give BN layers non-trivial running statistics from a few batches of shifted data."""
    g = torch.Generator().manual_seed(5)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 1, 6, 6, generator=g) * 0.5 + 0.3)
    model.eval()
    return model


def test_dreams_start_as_seeded_standard_normal_noise_of_the_batch_shape():
    a = init_dreams(512, (1, 6, 6), generator=torch.Generator().manual_seed(3))
    b = init_dreams(512, (1, 6, 6), generator=torch.Generator().manual_seed(3))
    assert a.shape == (512, 1, 6, 6)
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1) < 0.05


def test_entropy_is_zero_for_confident_predictions_and_log_k_for_uniform_ones():
    confident = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
    assert float(entropy_loss(confident)) == pytest.approx(0.0, abs=1e-6)
    assert float(entropy_loss(torch.zeros(4, 3))) == pytest.approx(math.log(3), rel=1e-6)


def test_entropy_weights_select_which_dreams_count():
    logits = torch.stack([torch.zeros(3), torch.tensor([50.0, 0.0, 0.0])])
    assert float(entropy_loss(logits, torch.tensor([0.0, 1.0]))) == pytest.approx(0.0, abs=1e-6)
    assert float(entropy_loss(logits, torch.tensor([1.0, 0.0]))) == pytest.approx(math.log(3), rel=1e-6)
    assert float(entropy_loss(logits, torch.zeros(2))) == 0.0


def test_target_loss_is_minimal_when_the_model_predicts_the_target_class():
    targets = torch.tensor([2, 0])
    right = torch.tensor([[0.0, 0.0, 30.0], [30.0, 0.0, 0.0]])
    wrong = torch.tensor([[30.0, 0.0, 0.0], [0.0, 30.0, 0.0]])
    assert float(target_loss(right, targets)) == pytest.approx(0.0, abs=1e-6)
    assert float(target_loss(wrong, targets)) > 29


def test_batchnorm_term_is_zero_when_batch_statistics_equal_the_running_ones():
    model = nn.Sequential(nn.BatchNorm2d(3)).eval()
    x = torch.randn(16, 3, 5, 5) * 2 + 1
    model[0].running_mean.copy_(x.mean(dim=(0, 2, 3)))
    model[0].running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    with BatchNormStatistics(model) as bn:
        model(x)
    assert bn.num_layers == 1
    assert float(bn.loss()) == pytest.approx(0.0, abs=1e-5)
    with BatchNormStatistics(model) as bn:
        model(x + 1.0)
    assert float(bn.loss()) == pytest.approx(math.sqrt(3), rel=1e-4)  # mean off by 1 in each of 3 channels


def test_batchnorm_term_with_weights_reads_only_the_weighted_dreams():
    model = nn.Sequential(nn.BatchNorm2d(2)).eval()
    x_known = torch.randn(8, 2, 4, 4)
    model[0].running_mean.copy_(x_known.mean(dim=(0, 2, 3)))
    model[0].running_var.copy_(x_known.var(dim=(0, 2, 3), unbiased=False))
    x = torch.cat([x_known, torch.randn(8, 2, 4, 4) * 5 + 3])
    weights = torch.cat([torch.ones(8), torch.zeros(8)])
    with BatchNormStatistics(model, weights) as bn:
        model(x)
    assert float(bn.loss()) == pytest.approx(0.0, abs=1e-5)
    with BatchNormStatistics(model) as bn:
        model(x)
    assert float(bn.loss()) > 1.0


def test_batchnorm_hooks_are_removed_after_use():
    model = tiny_bn_model()
    with BatchNormStatistics(model):
        pass
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_gradient_steps_lower_each_client_loss_term():
    model = trained_running_stats(tiny_bn_model())
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    for cfg in (
        DreamConfig(w_ent=1.0, w_bn=0.0, w_tv=0, w_l2=0),
        DreamConfig(w_ent=0.0, w_bn=1.0, w_tv=0, w_l2=0),
    ):
        before, _ = client_dream_loss(model, x, cfg)
        grad, _ = client_dream_gradient(model, x, cfg)
        after, _ = client_dream_loss(model, x - 1e-3 * grad / grad.norm(), cfg)
        assert float(after.detach()) < float(before.detach())


def test_the_target_term_pulls_dreams_toward_their_class():
    model = tiny_mlp().eval()
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    targets = torch.arange(8) % 5
    cfg = DreamConfig(w_ent=0.0, w_bn=0.0, w_ce=1.0)
    grad, _ = client_dream_gradient(model, x, cfg, targets=targets)
    with torch.no_grad():
        p_before = model(x).softmax(1)[torch.arange(8), targets]
        p_after = model(x - 0.05 * grad / grad.norm()).softmax(1)[torch.arange(8), targets]
    assert bool((p_after > p_before).all())


def test_adversarial_term_is_zero_when_student_equals_teacher_and_negative_when_they_differ():
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert float(adversarial_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    same_argmax = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.9]])
    assert float(adversarial_loss(teacher, same_argmax)) < 0
    other_argmax = torch.tensor([[0.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
    assert float(adversarial_loss(teacher, other_argmax)) == 0.0  # disagreement is left alone


def test_adversarial_term_without_a_student_is_refused():
    model = tiny_mlp().eval()
    with pytest.raises(ConfigError, match="student"):
        client_dream_loss(model, torch.randn(2, 1, 6, 6), DreamConfig(w_adv=1.0), use_adversarial=True)


def test_server_priors_are_zero_for_a_flat_zero_image_and_their_gradient_smooths():
    assert float(total_variation(torch.ones(2, 1, 4, 4))) == 0.0
    assert float(l2_prior(torch.zeros(2, 1, 4, 4))) == 0.0
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    g = prior_gradient(x, w_tv=1.0, w_l2=0.0)
    assert float(total_variation(x - 0.01 * g / g.norm())) < float(total_variation(x))
    assert torch.equal(prior_gradient(x, w_tv=0.0, w_l2=0.0), torch.zeros_like(x))


def test_one_local_step_returns_the_exact_gradient():
    model = trained_running_stats(tiny_bn_model())
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    cfg = DreamConfig(local_steps=1)
    grad, _ = client_dream_gradient(model, x, cfg)
    xg = x.clone().requires_grad_(True)
    loss, _ = client_dream_loss(model, xg, cfg)
    (expected,) = torch.autograd.grad(loss, xg)
    assert torch.allclose(grad, expected)


def test_several_local_steps_really_take_several_steps_on_a_local_copy():
    model = trained_running_stats(tiny_bn_model())
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    x_copy = x.clone()
    cfg = DreamConfig(local_steps=3, local_lr=0.1)
    update, _ = client_dream_gradient(model, x, cfg)
    assert torch.equal(x, x_copy)  # the shared dreams are untouched
    xk = x.clone()
    for _ in range(3):
        g, _ = client_dream_gradient(model, xk, DreamConfig(local_steps=1))
        xk = xk - 0.1 * g
    assert torch.allclose(update, x - xk, atol=1e-6)
    one_step, _ = client_dream_gradient(model, x, DreamConfig(local_steps=1))
    assert not torch.allclose(update, 0.1 * one_step, atol=1e-4)  # the later steps counted


def test_a_server_step_on_the_normalised_sum_lowers_the_summed_client_loss():
    models = [
        trained_running_stats(tiny_bn_model(0)),
        tiny_mlp(1).eval(),
        trained_running_stats(tiny_bn_model(2)),
    ]
    cfg = DreamConfig(optimizer="sgd", lr=0.05, betas=(0.0, 0.999), w_tv=0.0, w_l2=0.0)
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(6))

    def summed_loss(xx: torch.Tensor) -> float:
        return sum(float(client_dream_loss(m, xx, cfg)[0].detach()) for m in models)

    grads = [client_dream_gradient(m, x, cfg)[0] for m in models]
    direction = sum(g / g.norm() for g in grads) / len(grads)
    opt = DataSpaceOptimizer(x, cfg)
    x_new = opt.step(direction)
    assert summed_loss(x_new) < summed_loss(x)
    assert opt.steps == 1


def test_the_data_space_optimiser_refuses_nan_directions_and_wrong_shapes():
    x = torch.zeros(2, 1, 3, 3)
    opt = DataSpaceOptimizer(x, DreamConfig())
    with pytest.raises(ConfigError, match="NaN"):
        opt.step(torch.full_like(x, float("nan")))
    with pytest.raises(ConfigError, match="shape"):
        opt.step(torch.zeros(3, 1, 3, 3))
    assert torch.equal(opt.x.detach(), x) and opt.steps == 0


def test_adam_in_data_space_moves_every_dream_against_the_direction():
    x = torch.zeros(2, 1, 2, 2)
    opt = DataSpaceOptimizer(x, DreamConfig(lr=0.1))
    x_new = opt.step(torch.ones_like(x))
    assert torch.allclose(x_new, torch.full_like(x, -0.1), atol=1e-6)


def test_dream_config_rejects_invalid_values():
    with pytest.raises(ConfigError, match="optimizer"):
        DreamConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="global_steps"):
        DreamConfig(global_steps=0)
    with pytest.raises(ConfigError, match="w_bn"):
        DreamConfig(w_bn=-1.0)
    with pytest.raises(ConfigError, match="betas"):
        DreamConfig(betas=(0.9, 1.0))
