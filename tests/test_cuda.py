"""The CUDA path: every learning component runs on a GPU and agrees with the CPU.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from codream.aggregation import create_aggregator
from codream.baselines import BaselineConfig, run_centralized, run_fedavg, run_local_only
from codream.data import DEFAULT_IDX_DIRS, partition
from codream.devices import resolve_device
from codream.dreams import client_dream_gradient
from codream.federation import DistillConfig, DreamConfig, Federation, FederationConfig
from codream.models import build_model
from codream.privacy.example_level import DPSGDTrainer, dp_trainer_factory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def _config(**overrides) -> FederationConfig:
    base = dict(
        dataset="digits",
        num_clients=4,
        models=("resnet8", "cnn", "vgg", "mlp"),
        alpha=1.0,
        samples_per_client=200,
        limit_test=300,
        rounds=2,
        seed=5,
        device="cuda",
        dream=DreamConfig(batch_size=16, global_steps=4),
        distill=DistillConfig(kd_steps=6, warmup_steps=30, buffer_size=64),
    )
    base.update(overrides)
    return FederationConfig(**base)


def test_auto_picks_the_gpu():
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("mode", ["plain", "secure", "secure+dp"])
def test_a_federation_of_every_architecture_learns_on_the_gpu(digits, mode):
    options = {}
    if mode == "secure+dp":
        options = dict(noise_multiplier=1.0, delta=1e-5, noise_seed=0, seed=0)
    elif mode == "secure":
        options = dict(seed=0)
    fed = Federation(_config(), create_aggregator(mode, **options), dataset=digits)
    history = fed.run()
    for client in fed.clients:
        assert all(p.device.type == "cuda" for p in client.model.parameters())
    accs = history[-1].accuracies
    assert all(math.isfinite(a) for a in accs)
    assert np.mean(accs) > 0.3  # ten classes: chance is 0.1


def test_cohort_sampling_runs_on_the_gpu(digits):
    fed = Federation(
        _config(num_clients=8, models=("cnn", "mlp") * 4, samples_per_client=100, clients_per_round=3),
        create_aggregator("secure", seed=0),
        dataset=digits,
    )
    history = fed.run()
    assert [len(m.participants) for m in history] == [3, 3]


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8", "vgg"])
def test_a_dream_gradient_on_the_gpu_matches_the_cpu(name):
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10, norm="batch")
    gpu_model = copy.deepcopy(model).to(CUDA)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(8) % 10
    weights = torch.linspace(0.5, 1.0, 8)
    config = DreamConfig(batch_size=8, global_steps=1)
    cpu_grad, cpu_terms = client_dream_gradient(model, x, config, targets=targets, weights=weights)
    gpu_grad, gpu_terms = client_dream_gradient(
        gpu_model, x.to(CUDA), config, targets=targets.to(CUDA), weights=weights.to(CUDA)
    )
    assert gpu_grad.device.type == "cuda"
    # cuDNN convolutions may use TF32 (10-bit mantissa), so compare the whole direction, not each entry.
    error = float((gpu_grad.cpu() - cpu_grad).norm() / cpu_grad.norm())
    assert error < 1e-2
    assert math.isclose(gpu_terms.total, cpu_terms.total, rel_tol=1e-2, abs_tol=1e-5)


def test_dp_sgd_draws_its_noise_on_the_gpu_and_accounts(digits):
    model = build_model("cnn", digits.input_shape, digits.num_classes, norm="group").to(CUDA)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = digits.x_train[:256].to(CUDA), digits.y_train[:256].to(CUDA)
    trainer = DPSGDTrainer(
        model, x, y, torch.Generator().manual_seed(0), noise_multiplier=1.0, batch_size=32, noise_seed=3
    )
    assert trainer.noise_generator.device.type == "cuda"
    losses = [trainer.ce_step() for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert trainer.epsilon() > 0
    state = trainer.state_dict()
    trainer.load_state_dict(state)


def test_an_example_level_dp_federation_runs_on_the_gpu(digits):
    config = _config(
        models=("cnn", "mlp", "cnn", "mlp"),
        norm="group",
        dream=DreamConfig(batch_size=16, global_steps=4, w_bn=0.0),
    )
    factory = dp_trainer_factory(noise_multiplier=1.0, batch_size=32, noise_seed=0)
    fed = Federation(config, create_aggregator("plain"), factory, dataset=digits)
    history = fed.run()
    assert all(math.isfinite(a) for a in history[-1].accuracies)
    assert all(c.trainer.epsilon() > 0 for c in fed.clients)


def test_the_baselines_train_on_the_gpu(digits):
    parts = partition(digits.y_train, 4, alpha=None, samples_per_client=200, seed=0)
    config = BaselineConfig(rounds=2, local_steps=30, batch_size=32, seed=0)
    models = ("cnn", "mlp", "resnet8", "vgg")
    for result in (
        run_local_only(digits, parts, models, config, device="cuda"),
        run_fedavg(digits, parts, "cnn", config, device="cuda"),
        run_centralized(digits, parts, models, config, device="cuda"),
    ):
        assert result.mean > 0.3


@pytest.mark.skipif(
    not Path(DEFAULT_IDX_DIRS["fashion-mnist"]).exists(), reason="Fashion-MNIST is not installed"
)
def test_the_quick_tradeoff_benchmark_runs_end_to_end_on_the_gpu():
    from codream.bench.tradeoff import run_tradeoff

    results = run_tradeoff("quick", device="auto", strict=True)
    assert results.device.startswith("cuda")
    assert results.runs and all(math.isfinite(r.mean_accuracy) for r in results.runs)
    assert {r.setting for r in results.runs} == {"cross-silo", "cross-device"}
