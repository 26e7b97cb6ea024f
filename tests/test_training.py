"""Supervised training helper, batched evaluation and device resolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from codream.devices import resolve_device
from codream.evaluation import accuracy, predict_proba
from codream.exceptions import ConfigError
from codream.models import build_model
from codream.training import BatchStream, train_supervised


def _blobs(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated classes of 1x4x4 images."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 4, 4, generator=g) * 0.5 + (y.float() * 2 - 1).view(-1, 1, 1, 1)
    return x, y


def test_batch_stream_visits_every_index_once_per_epoch_even_across_batch_boundaries():
    stream = BatchStream(10, 4, torch.Generator().manual_seed(0))
    drawn = torch.cat([stream.next() for _ in range(5)])  # 20 indices = exactly two epochs
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))


def test_batch_stream_caps_the_batch_at_the_data_size():
    assert len(BatchStream(3, 64, torch.Generator()).next()) == 3


def test_training_lowers_the_loss_and_reaches_high_accuracy():
    x, y = _blobs()
    model = build_model("mlp", (1, 4, 4), 2, seed=0)
    before = accuracy(model, x, y)
    stats = train_supervised(
        model, x, y, epochs=3, batch_size=20, lr=0.05, generator=torch.Generator().manual_seed(1)
    )
    assert stats.steps == 30 and stats.examples == 600
    assert stats.last_loss < 0.1 and accuracy(model, x, y) > max(before, 0.95)


def test_the_same_generator_seed_gives_identical_weights():
    x, y = _blobs()
    models = []
    for _ in range(2):
        m = build_model("cnn", (1, 4, 4), 2, seed=3)
        train_supervised(m, x, y, steps=7, batch_size=16, generator=torch.Generator().manual_seed(9))
        models.append(m)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_leaves_an_eval_mode_model_in_eval_mode():
    x, y = _blobs()
    model = build_model("cnn", (1, 4, 4), 2, seed=0).eval()
    train_supervised(model, x, y, steps=2, batch_size=16, generator=torch.Generator())
    assert not model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"steps": 3, "epochs": 1.0}, "exactly one"),
        ({"epochs": 0.0}, "epochs"),
        ({"steps": 3, "lr": 0.0}, "lr"),
    ],
)
def test_bad_training_arguments_are_rejected(kwargs, match):
    x, y = _blobs(20)
    with pytest.raises(ConfigError, match=match):
        train_supervised(nn.Linear(16, 2), x.flatten(1), y, generator=torch.Generator(), **kwargs)


def test_evaluation_restores_training_mode_and_builds_no_graph():
    x, y = _blobs(50)
    model = build_model("resnet8", (1, 4, 4), 2, seed=0)
    running = model.stem[1].running_mean.clone()
    assert model.training
    probs = predict_proba(model, x, batch_size=7)
    assert model.training  # restored
    assert torch.equal(model.stem[1].running_mean, running)  # evaluated with running stats, not updated
    assert not probs.requires_grad
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(50))
    model.eval()
    accuracy(model, x, y, batch_size=7)
    assert not model.training


def test_batched_accuracy_equals_a_single_pass():
    x, y = _blobs(101)
    model = build_model("cnn", (1, 4, 4), 2, seed=0)
    model.eval()
    with torch.no_grad():
        direct = float((model(x).argmax(1) == y).float().mean())
    assert accuracy(model, x, y, batch_size=10) == pytest.approx(direct)


def test_accuracy_rejects_mismatched_lengths_and_empty_input():
    model = build_model("mlp", (1, 4, 4), 2, seed=0)
    x, y = _blobs(10)
    with pytest.raises(ConfigError, match="10 examples but y has 9"):
        accuracy(model, x, y[:9])
    with pytest.raises(ConfigError, match="empty"):
        accuracy(model, x[:0], y[:0])


def test_auto_device_is_cuda_exactly_when_cuda_is_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_requesting_cuda_without_cuda_names_the_alternative():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_an_unparsable_device_is_rejected():
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu-please")
