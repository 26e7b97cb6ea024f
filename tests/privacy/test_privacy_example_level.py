"""Example-level DP: Opacus DP-SGD for cross-entropy, plain KD on dreams, per-client epsilon."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from codream.exceptions import ConfigError, PrivacyBudgetExceeded
from codream.models import build_model
from codream.privacy import PrivacyEvent, epsilon_for
from codream.privacy.example_level import (
    AdaptiveClipping,
    DPSGDTrainer,
    check_example_round,
    dp_trainer_factory,
    record_example_round,
)
from codream.privacy.ledger import PrivacyLedger

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _trainer(seed: int = 0, **kwargs) -> DPSGDTrainer:
    x, y = _data(seed=0)  # the same private data; model, sampling and noise seeds differ
    model = build_model("cnn", SHAPE, 10, norm="group", seed=seed)
    options = {"noise_multiplier": 1.1, "batch_size": 20, "accountant": "rdp", "noise_seed": seed, **kwargs}
    return DPSGDTrainer(model, x, y, torch.Generator().manual_seed(seed), **options)


def test_a_batchnorm_model_is_rejected_with_a_message_that_names_the_fix():
    x, y = _data()
    model = build_model("cnn", SHAPE, 10, norm="batch", seed=0)
    with pytest.raises(ConfigError, match='BatchNorm.*norm="group"'):
        DPSGDTrainer(model, x, y, torch.Generator(), noise_multiplier=1.0)


def test_other_modules_that_read_private_statistics_or_that_opacus_refuses_are_rejected_too():
    x, y = _data()
    tracking = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, track_running_stats=True), nn.Flatten(), nn.Linear(144, 10)
    )
    with pytest.raises(ConfigError, match="running statistics"):
        DPSGDTrainer(tracking, x, y, torch.Generator(), noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="example-level DP cannot train this model.*LSTM"):
        DPSGDTrainer(nn.LSTM(8, 10), x, y, torch.Generator(), noise_multiplier=1.0)


def test_each_cross_entropy_step_is_one_accounted_sampled_gaussian_event():
    trainer = _trainer()
    for _ in range(5):
        trainer.ce_step()
    assert trainer.accountant.history == (PrivacyEvent(noise_multiplier=1.1, sample_rate=0.1, steps=5),)
    expected = epsilon_for(noise_multiplier=1.1, sample_rate=0.1, steps=5, delta=1e-5, accountant="rdp")
    assert trainer.epsilon() == pytest.approx(expected)


def test_kd_steps_train_the_model_but_leave_the_accountant_and_the_dp_optimiser_untouched():
    trainer = _trainer()
    trainer.ce_step()
    history = trainer.accountant.history
    dp_state = (
        {k: v.clone() for k, v in trainer.dp_optimizer.original_optimizer.state_dict()["state"][0].items()}
        if trainer.dp_optimizer.original_optimizer.state_dict()["state"]
        else {}
    )
    noise_state = trainer.noise_generator.get_state().clone()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    g = torch.Generator().manual_seed(9)
    for _ in range(3):
        trainer.kd_step(torch.randn(16, *SHAPE, generator=g), torch.randn(16, 10, generator=g), 4.0)
    assert trainer.accountant.history == history
    assert torch.equal(trainer.noise_generator.get_state(), noise_state)  # no DP noise was drawn
    after_state = trainer.dp_optimizer.original_optimizer.state_dict()["state"]
    for k, v in dp_state.items():
        assert torch.equal(after_state[0][k], v)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert all(getattr(p, "grad_sample", None) is None and p.grad is None for p in trainer.model.parameters())
    trainer.ce_step()  # DP-SGD still works after KD (no stale per-example gradients)
    assert len(trainer.accountant) == 2


def test_an_empty_poisson_batch_is_still_a_noisy_accounted_step():
    x, y = _data(n=200)
    model = build_model("mlp", SHAPE, 10, seed=0)
    trainer = DPSGDTrainer(
        model,
        x,
        y,
        torch.Generator().manual_seed(1),
        noise_multiplier=1.0,
        batch_size=1,
        accountant="rdp",
        noise_seed=1,
        sampling_seed=1,  # a seeded sampler whose 10 steps include empty batches
    )
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(10):
        trainer.ce_step()
    assert trainer.empty_batches > 0
    assert len(trainer.accountant) == 10
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_state_round_trips_to_the_same_next_step():
    a = _trainer(seed=3, sampling_seed=3)  # the seeded sampler: a test option, so that steps can be compared
    a.ce_step()
    state = a.state_dict()
    b = _trainer(seed=4, sampling_seed=4)
    b.load_state_dict(state)
    assert a.ce_step() == pytest.approx(b.ce_step())
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q)
    assert a.accountant.history == b.accountant.history


def test_two_trainers_with_the_same_seeds_draw_different_dp_sgd_batches():
    # Same model, same data, same run seed, even the same (test-only) noise seed: only the Poisson coins
    # can tell the two apart, and they come from the OS.
    a, b = _trainer(seed=0), _trainer(seed=0)
    a.ce_step()
    b.ce_step()
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    batches = {tuple(_trainer(seed=0)._poisson_batch().tolist()) for _ in range(5)}
    assert len(batches) == 5


def test_the_coins_come_from_the_os_with_the_planned_rate(monkeypatch):
    import codream.privacy.os_random as os_random

    asked: list[int] = []
    real = os_random.os.urandom
    monkeypatch.setattr(os_random.os, "urandom", lambda k: asked.append(k) or real(k))
    trainer = _trainer(seed=0, noise_seed=None)
    asked.clear()  # the noise generator's key, drawn when the trainer was built
    sizes = [trainer._poisson_batch().numel() for _ in range(400)]
    assert asked == [8 * 200] * 400  # 64 OS bits per example per step
    # 200 examples at q = 0.1: mean batch 20, std of the mean sqrt(200 * 0.1 * 0.9 / 400) = 0.21.
    assert abs(sum(sizes) / len(sizes) - 20) < 5 * 0.22
    assert trainer.private and trainer.not_private == ()


def test_the_seeded_sampler_is_a_test_option_that_replays_batches_and_says_it_is_not_private(tmp_path):
    a, b = _trainer(seed=1, sampling_seed=7), _trainer(seed=2, sampling_seed=7)
    assert [a._poisson_batch().tolist() for _ in range(3)] == [b._poisson_batch().tolist() for _ in range(3)]
    assert not a.private and any("seeded generator (sampling_seed" in r for r in a.not_private)
    ledger = PrivacyLedger(
        delta=1e-5, granularity="example", accountant="rdp", path=tmp_path / "privacy_ledger.json"
    )
    record_example_round(ledger, {0: _trainer(seed=0, noise_seed=None), 1: a}, round_index=0)
    assert ledger.not_private == [f"client 1: {r}" for r in a.not_private]
    from codream.privacy.report import load_budget_report

    report = load_budget_report(tmp_path)
    assert report.to_text().startswith("NOT PRIVATE: client 1: DP-SGD batches drawn from a seeded generator")
    assert report.to_dict()["private"] is False


def test_each_clients_epsilon_and_the_maximum_are_recorded_and_enforced():
    trainers = {0: _trainer(seed=0), 1: _trainer(seed=1, batch_size=40)}
    for _ in range(3):
        trainers[0].ce_step()
        trainers[1].ce_step()
    ledger = PrivacyLedger(
        delta=1e-5, target_epsilon=trainers[1].epsilon_after(2), granularity="example", accountant="rdp"
    )
    entry = record_example_round(ledger, trainers, round_index=0)
    assert entry.client_epsilons == {0: trainers[0].epsilon(), 1: trainers[1].epsilon()}
    assert entry.epsilon == max(entry.client_epsilons.values()) == trainers[1].epsilon()
    check_example_round(ledger, trainers, steps=1, round_index=1)
    with pytest.raises(PrivacyBudgetExceeded):
        check_example_round(ledger, trainers, steps=3, round_index=1)


def test_the_trainer_factory_fits_the_learning_loop_and_demands_a_noise_multiplier():
    factory = dp_trainer_factory(noise_multiplier=0.8, batch_size=10, accountant="rdp", noise_seed=0)
    x, y = _data()
    trainer = factory(build_model("mlp", SHAPE, 10, seed=0), x, y, torch.Generator().manual_seed(0))
    trainer.ce_step()
    assert trainer.accountant.history == (PrivacyEvent(noise_multiplier=0.8, sample_rate=0.05, steps=1),)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        dp_trainer_factory(batch_size=10)


# -- adaptive clipping ---------------------------------------------------------------------------------


def _z_grad(z: float, sigma_b: float) -> float:
    return (z**-2 - (2 * sigma_b) ** -2) ** -0.5


def test_without_adaptive_clipping_the_optimiser_is_opacus_own_and_the_bound_stays_put():
    trainer = _trainer()
    assert type(trainer.dp_optimizer) is DPOptimizer
    assert trainer.dp_optimizer.noise_multiplier == trainer.noise_multiplier == 1.1
    for _ in range(3):
        trainer.ce_step()
    assert trainer.clip_bound == 1.0


def test_adaptive_clipping_accounts_the_combined_z_while_the_gradient_carries_the_larger_z_grad():
    adaptive = AdaptiveClipping(count_noise_std=0.8)
    trainer = _trainer(noise_multiplier=1.1, adaptive_clipping=adaptive)
    z_grad = trainer.dp_optimizer.noise_multiplier
    assert z_grad == pytest.approx(_z_grad(1.1, 0.8)) and z_grad > 1.1
    for _ in range(4):
        trainer.ce_step()
    assert trainer.accountant.history == (PrivacyEvent(noise_multiplier=1.1, sample_rate=0.1, steps=4),)
    expected = epsilon_for(noise_multiplier=1.1, sample_rate=0.1, steps=4, delta=1e-5, accountant="rdp")
    assert trainer.epsilon() == pytest.approx(expected)
    after = epsilon_for(noise_multiplier=1.1, sample_rate=0.1, steps=6, delta=1e-5, accountant="rdp")
    assert trainer.epsilon_after(2) == pytest.approx(after)
    # The paper's default count noise: expected batch / 20.
    assert _trainer(adaptive_clipping=AdaptiveClipping()).dp_optimizer.count_noise_std == 1.0


def test_the_gradient_noise_has_std_z_grad_times_the_bound():
    # An empty batch's update is noise only: std z_grad C / B per coordinate, over 65k coordinates.
    x, y = torch.randn(100, 64), torch.randint(0, 10, (100,))
    results = {}
    for adaptive in (None, AdaptiveClipping(count_noise_std=1 / math.sqrt(3))):  # z_grad = 2 z
        model = nn.Linear(64, 1024)
        trainer = DPSGDTrainer(
            model,
            x,
            y,
            torch.Generator().manual_seed(0),
            noise_multiplier=1.0,
            max_grad_norm=0.5,
            batch_size=10,
            lr=1.0,
            noise_seed=0,
            accountant="rdp",
            adaptive_clipping=adaptive,
        )
        before = model.weight.detach().clone()
        for p in model.parameters():
            p.grad_sample = torch.zeros((0, *p.shape))
        trainer.dp_optimizer.step()
        results[adaptive is not None] = float((before - model.weight.detach()).std())
    assert results[False] == pytest.approx(1.0 * 0.5 / 10, rel=0.03)
    assert results[True] == pytest.approx(2.0 * 0.5 / 10, rel=0.03)


def _fixed_norm_trainer(norm: float, bound: float, **adaptive: float) -> DPSGDTrainer:
    """A trainer whose every per-example gradient norm is `norm` at every step (zero weights, lr 0)."""
    k, d = 10, 16
    x = torch.randn(200, d, generator=torch.Generator().manual_seed(0))
    # With zero weights the softmax is uniform, so each gradient is (1/k - e_y) x^T, of norm
    # sqrt((k - 1) / k) |x|.
    x = x / x.norm(dim=1, keepdim=True) * norm / math.sqrt((k - 1) / k)
    model = nn.Linear(d, k, bias=False)
    nn.init.zeros_(model.weight)
    return DPSGDTrainer(
        model,
        x,
        torch.randint(0, k, (200,), generator=torch.Generator().manual_seed(1)),
        torch.Generator().manual_seed(2),
        noise_multiplier=0.5,
        max_grad_norm=bound,
        batch_size=40,
        lr=0.0,
        noise_seed=3,
        sampling_seed=4,  # seeded coins (tests only): the batch, and so the released fraction, is fixed
        accountant="rdp",
        adaptive_clipping=AdaptiveClipping(**adaptive),
    )


@pytest.mark.parametrize("start", [1.0, 100.0])
def test_the_bound_moves_geometrically_to_the_norm_it_should_leave_unclipped(start):
    trainer = _fixed_norm_trainer(10.0, start, target_quantile=0.5, learning_rate=0.2)
    bounds = [trainer.clip_bound]
    fractions = []
    for _ in range(40):
        trainer.ce_step()
        bounds.append(trainer.clip_bound)
        fractions.append(trainer.dp_optimizer.unclipped_fraction)
    # Every example clipped: the released fraction is about 0 and the bound rises by about e^0.1 per step;
    # none clipped: about 1, and it falls as fast.
    first = 0.0 if start < 10 else 1.0
    assert fractions[0] == pytest.approx(first, abs=0.15)
    ratio = bounds[1] / bounds[0]
    assert ratio == pytest.approx(math.exp(-0.2 * (fractions[0] - 0.5)))
    assert (ratio > 1.05) if start < 10 else (ratio < 0.95)
    # It crosses the common norm within ~ln(10) / 0.1 = 23 steps and then stays close to it.
    assert all(10.0 / 1.3 < b < 10.0 * 1.3 for b in bounds[30:])


def test_invalid_adaptive_clipping_settings_are_refused():
    for bad in (
        dict(target_quantile=0.0),
        dict(target_quantile=1.0),
        dict(learning_rate=0.0),
        dict(learning_rate=math.inf),
        dict(count_noise_std=0.0),
        dict(count_noise_std=math.nan),
    ):
        with pytest.raises(ConfigError):
            AdaptiveClipping(**bad)
    # The count's noise alone must not exceed what z allows: std > z / 2.
    with pytest.raises(ConfigError, match="count_noise_std > noise_multiplier / 2"):
        _trainer(noise_multiplier=2.0, adaptive_clipping=AdaptiveClipping(count_noise_std=1.0))
    with pytest.raises(ConfigError, match="count_noise_std > noise_multiplier / 2"):
        _trainer(noise_multiplier=2.5, adaptive_clipping=AdaptiveClipping())  # batch 20: std 1
    with pytest.raises(ConfigError, match="AdaptiveClipping"):
        _trainer(adaptive_clipping="median")


def test_adaptive_state_round_trips_with_its_clip_bound():
    adaptive = AdaptiveClipping(learning_rate=0.5)
    a = _trainer(seed=3, adaptive_clipping=adaptive, sampling_seed=3)
    for _ in range(3):
        a.ce_step()
    assert a.clip_bound != 1.0
    state = a.state_dict()
    b = _trainer(seed=4, adaptive_clipping=adaptive, sampling_seed=4)
    b.load_state_dict(state)
    assert b.clip_bound == a.clip_bound
    for _ in range(2):
        assert a.ce_step() == pytest.approx(b.ce_step())
    assert b.clip_bound == pytest.approx(a.clip_bound)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q)
    assert a.accountant.history == b.accountant.history


def test_the_factory_passes_adaptive_clipping_through():
    adaptive = AdaptiveClipping(target_quantile=0.7)
    factory = dp_trainer_factory(
        noise_multiplier=0.8, batch_size=10, adaptive_clipping=adaptive, noise_seed=0
    )
    x, y = _data()
    trainer = factory(build_model("mlp", SHAPE, 10, seed=0), x, y, torch.Generator().manual_seed(0))
    assert trainer.adaptive_clipping is adaptive
    assert trainer.dp_optimizer.noise_multiplier == pytest.approx(_z_grad(0.8, 10 / 20))
